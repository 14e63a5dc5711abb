"""MGRIT propagators (mrc/techniques/mgrit/propagate.py) and kernels (kernels/mgrit.py).

The propagators are checked in float64 against the model itself: `step` against
`ResidualStack.step` (span 1 is the layer, span s one step of size s·h), `vjp` and `param_grads`
against torch.autograd through `stack.step`, batching against one-interval calls, and the
batched `StackPropagator` against the looping `GenericPropagator`. The Triton kernels are checked
in float32 against their torch references computed in float64, under TRITON_INTERPRET=1 on the
CPU (tests/conftest.py sets it) at small irregular sizes, or compiled on a CUDA device.
"""

from __future__ import annotations

import pytest
import torch
from mgrit_stacks import CASES, DEPTH, IDS
from mgrit_stacks import randn as _randn
from mgrit_stacks import stack as _stack
from mgrit_stacks import state as _state
from mrc.kernels import configs
from mrc.kernels import mgrit as K
from torch import nn

from mrc.techniques.mgrit.propagate import (
    GenericPropagator,
    Propagator,
    StackPropagator,
    propagator_for,
)

TOL64 = {"rtol": 0.0, "atol": 1e-12}
GRAD_TOL = {"rtol": 0.0, "atol": 1e-10}








def _close(a: torch.Tensor, e: torch.Tensor, tol: dict[str, float], what: str) -> None:
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    torch.testing.assert_close(a, e, **tol, msg=lambda m: f"{what}: {m}")


# ============================================================================ step


@pytest.mark.parametrize(("variant", "activation"), CASES, ids=IDS)
def test_step_span_one_is_the_layer(variant: str, activation: str) -> None:
    """All N layers in one call, span 1: exactly the network's own Euler step Φ_n."""
    stack = _stack(variant, activation)
    prop = StackPropagator(stack)
    u = _randn(DEPTH, *_state(variant), seed=1)
    out = prop.step(torch.arange(DEPTH), 1, u)
    with torch.no_grad():
        ref = torch.stack([stack.step(n, u[n]) for n in range(DEPTH)])
    _close(out, ref, TOL64, "step(span=1)")


@pytest.mark.parametrize(("variant", "activation"), CASES, ids=IDS)
@pytest.mark.parametrize("span", [2, 5])
def test_step_span_s_is_one_coarse_step(variant: str, activation: str, span: int) -> None:
    """span s: y + s·h·F_start(y), the weights of the interval's first fine layer."""
    stack = _stack(variant, activation)
    prop = StackPropagator(stack)
    start = torch.tensor([0, 7, 3, 11, 7])
    u = _randn(len(start), *_state(variant), seed=2)
    out = prop.step(start, span, u)
    with torch.no_grad():
        ref = torch.stack([u[i] + span * stack.h * stack.layers[n](u[i])
                           for i, n in enumerate(start.tolist())])
        via_step = torch.stack([stack.step(n, u[i], h=span * stack.h)
                                for i, n in enumerate(start.tolist())])
    _close(out, ref, TOL64, f"step(span={span})")
    _close(out, via_step, TOL64, f"step(span={span}) vs stack.step(h=s·h)")


# ============================================================================ vjp


@pytest.mark.parametrize(("variant", "activation"), CASES, ids=IDS)
@pytest.mark.parametrize("span", [1, 3])
def test_vjp_is_autograd_through_stack_step(variant: str, activation: str, span: int) -> None:
    stack = _stack(variant, activation)
    prop = StackPropagator(stack)
    start = torch.tensor([4, 0, 11, 4])
    y = _randn(len(start), *_state(variant), seed=3)
    lam = _randn(len(start), *_state(variant), seed=4)
    out = prop.vjp(start, span, y, lam)
    ref = []
    for i, n in enumerate(start.tolist()):
        yi = y[i].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(stack.step(n, yi, h=span * stack.h), yi, lam[i])
        ref.append(g)
    _close(out, torch.stack(ref), TOL64, f"vjp(span={span})")


# ============================================================================ param_grads


def _serial_states(stack: nn.Module, y0: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        ys = [y0]
        for n in range(len(stack)):
            ys.append(stack.step(n, ys[-1]))
    return torch.stack(ys)


def _autograd_param_grads(stack: nn.Module, states: torch.Tensor,
                          lambdas: torch.Tensor) -> list[torch.Tensor]:
    """∂/∂θ of Σ_n ⟨λ_{n+1}, Φ_n(y_n)⟩ with the y_n held fixed, per parameter."""
    params = [p for layer in stack.layers for p in (layer.weight, layer.bias)]
    objective = sum((lambdas[n + 1] * stack.step(n, states[n])).sum() for n in range(len(stack)))
    return list(torch.autograd.grad(objective, params))


@pytest.mark.parametrize(("variant", "activation"), CASES, ids=IDS)
@pytest.mark.parametrize("propagator", ["stack", "generic"])
def test_param_grads_match_autograd_and_accumulate(variant: str, activation: str,
                                                   propagator: str) -> None:
    stack = _stack(variant, activation)
    prop = (StackPropagator(stack) if propagator == "stack"
            else GenericPropagator(stack.layers, stack.h))
    states = _serial_states(stack, _randn(*_state(variant), seed=5))
    lambdas = _randn(DEPTH + 1, *_state(variant), seed=6)
    ref = _autograd_param_grads(stack, states, lambdas)
    params = [p for layer in stack.layers for p in (layer.weight, layer.bias)]
    # Some gradients already exist (they are added to), the others are None (created).
    before = {}
    for k, p in enumerate(params):
        p.grad = None if k % 3 == 0 else _randn(*p.shape, seed=100 + k)
        before[k] = None if p.grad is None else p.grad.clone()
    prop.param_grads(states, lambdas)
    for k, (p, g) in enumerate(zip(params, ref, strict=True)):
        expected = g if before[k] is None else before[k] + g
        assert p.grad is not None, f"param {k}: no gradient"
        _close(p.grad, expected, GRAD_TOL, f"param {k} ({tuple(p.shape)}) gradient")


# ============================================================================ batching


@pytest.mark.parametrize(("variant", "activation"), [CASES[0], CASES[2]], ids=[IDS[0], IDS[2]])
@pytest.mark.parametrize("m", [1, 3, 10])
def test_one_call_handles_m_intervals(variant: str, activation: str, m: int) -> None:
    """A batched call equals m one-interval calls, and never calls the layer modules (the
    weights come from the stacks, so it is one batched op, not a loop over intervals)."""
    stack = _stack(variant, activation)
    prop = StackPropagator(stack)
    calls = []
    hooks = [layer.register_forward_hook(lambda *_: calls.append(1)) for layer in stack.layers]
    start = torch.randint(0, DEPTH, (m,), generator=torch.Generator().manual_seed(m))
    u = _randn(m, *_state(variant), seed=7)
    lam = _randn(m, *_state(variant), seed=8)
    out, back = prop.step(start, 2, u), prop.vjp(start, 2, u, lam)
    for hook in hooks:
        hook.remove()
    assert not calls, "the batched propagator called the layer modules"
    for i in range(m):
        one = start[i:i + 1]
        _close(out[i:i + 1], prop.step(one, 2, u[i:i + 1]), TOL64, f"step interval {i}")
        _close(back[i:i + 1], prop.vjp(one, 2, u[i:i + 1], lam[i:i + 1]), TOL64,
               f"vjp interval {i}")


@pytest.mark.parametrize(("variant", "activation"), CASES, ids=IDS)
def test_generic_agrees_with_stack(variant: str, activation: str) -> None:
    stack = _stack(variant, activation)
    fast, slow = StackPropagator(stack), GenericPropagator(stack.layers, stack.h)
    assert isinstance(fast, Propagator) and isinstance(slow, Propagator)
    start = torch.tensor([2, 9, 2, 0, 11, 5])
    u = _randn(len(start), *_state(variant), seed=9)
    lam = _randn(len(start), *_state(variant), seed=10)
    for span in (1, 4):
        _close(slow.step(start, span, u), fast.step(start, span, u), TOL64, f"step {span}")
        _close(slow.vjp(start, span, u, lam), fast.vjp(start, span, u, lam), TOL64,
               f"vjp {span}")


# ============================================================================ weights, autograd, detection


def test_refresh_reads_the_current_weights() -> None:
    """step uses the stacks of the last refresh(); after an in-place update (an optimizer step)
    the propagator is stale until refresh() re-stacks."""
    stack = _stack("dense", "tanh")
    prop = StackPropagator(stack)
    start, u = torch.arange(DEPTH), _randn(DEPTH, 5, 8, seed=11)
    old = prop.step(start, 1, u)
    assert not prop.is_stale()
    with torch.no_grad():
        for layer in stack.layers:
            layer.weight.mul_(-0.5)
    assert prop.is_stale()
    _close(prop.step(start, 1, u), old, TOL64, "before refresh (old weights)")
    prop.refresh()
    assert not prop.is_stale()
    with torch.no_grad():
        new = torch.stack([stack.step(n, u[n]) for n in range(DEPTH)])
    _close(prop.step(start, 1, u), new, TOL64, "after refresh (new weights)")
    assert (new - old).abs().max() > 1e-3


def test_outputs_are_detached() -> None:
    """The solver runs outside autograd: no graph hangs off the results, whatever the inputs."""
    stack = _stack("conv", "tanh")
    prop = StackPropagator(stack)
    u = _randn(2, *_state("conv"), seed=12).requires_grad_(True)
    start = torch.tensor([1, 2])
    assert prop.step(start, 1, u).grad_fn is None
    assert prop.vjp(start, 1, u, u).grad_fn is None


def test_detection_and_fallback() -> None:
    """Only all-DenseStep or all-ConvStep stacks with one activation take the batched path;
    propagator_for falls back to the generic propagator otherwise."""
    stack = _stack("dense", "tanh")
    assert isinstance(propagator_for(stack), StackPropagator)
    stack.layers[3].activation = "relu"
    with pytest.raises(TypeError, match="one activation"):
        StackPropagator(stack)
    assert isinstance(propagator_for(stack), GenericPropagator)
    stack.layers[3] = nn.Sequential(nn.Linear(8, 8), nn.Tanh()).double()
    with pytest.raises(TypeError, match="DenseStep or all"):
        StackPropagator(stack)
    generic = propagator_for(stack)
    assert isinstance(generic, GenericPropagator)
    u = _randn(1, 5, 8, seed=13)
    with torch.no_grad():
        ref = stack.step(3, u[0], h=2 * stack.h)
    _close(generic.step(torch.tensor([3]), 2, u)[0], ref, TOL64, "generic step of a Sequential")
    with pytest.raises(ValueError, match="kernel"):
        StackPropagator(_stack("dense", "tanh"), kernel="cuda")  # type: ignore[arg-type]


def test_bad_arguments_are_reported() -> None:
    prop = StackPropagator(_stack("dense", "relu"))
    u = _randn(2, 5, 8, seed=14)
    with pytest.raises(ValueError, match="span"):
        prop.step(torch.tensor([0, 1]), 0, u)
    with pytest.raises(ValueError, match="start"):
        prop.step(torch.tensor([0, 1, 2]), 1, u)
    with pytest.raises(IndexError, match="start indices"):
        prop.step(torch.tensor([0, DEPTH]), 1, u)
    with pytest.raises(ValueError, match="state"):
        prop.step(torch.tensor([0, 1]), 1, u[0])


def test_triton_kernel_choice_on_cpu_is_the_torch_path() -> None:
    """kernel="triton" on CPU tensors runs the torch path (the interpreter is for tests only):
    bit-identical to kernel="torch"."""
    stack = _stack("dense", "tanh").float()
    a, b = StackPropagator(stack, kernel="triton"), StackPropagator(stack, kernel="torch")
    start, u = torch.tensor([0, 5, 5]), torch.randn(3, 5, 8)
    assert torch.equal(a.step(start, 2, u), b.step(start, 2, u))


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and configs.HAS_TRITON), reason="needs CUDA")
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_triton_kernel_choice_on_cuda(activation: str) -> None:
    """On CUDA, kernel="triton" runs the fused kernel and agrees with the float64 propagator."""
    stack = _stack("dense", activation)
    ref = StackPropagator(stack)
    start, u = torch.tensor([0, 5, 5, 11]), _randn(4, 5, 8, seed=15)
    expected = ref.step(start, 3, u)
    fast = StackPropagator(stack.float().cuda(), kernel="triton")
    out = fast.step(start.cuda(), 3, u.float().cuda())
    _close(out.double().cpu(), expected, {"rtol": 1e-5, "atol": 1e-5}, "triton step on CUDA")


# ============================================================================ kernels


def _kernels_runnable() -> bool:
    """Triton kernels run here: compiled on CUDA, or interpreted on the CPU."""
    if not configs.HAS_TRITON:
        return False
    if torch.cuda.is_available():
        return True
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(K._dense_step_kernel, InterpretedFunction)


KDEV = "cuda" if torch.cuda.is_available() else "cpu"
_SKIP_KERNELS = pytest.mark.skipif(not _kernels_runnable(),
                                   reason="Triton kernels neither compiled for CUDA nor interpreted")
KERNEL_TOL = {"rtol": 2e-6, "atol": 2e-6}
# (width, batch, m): every irregular size of each axis at least once, kept few (interpreter)
# (65, 65, 2): more than one program per batch and per width tile (blocks are at most 64).
DENSE_SIZES = [(1, 1, 1), (7, 5, 3), (33, 17, 10), (1, 17, 3), (33, 1, 1), (7, 5, 10),
               (65, 65, 2)]


def _dense_inputs(width: int, batch: int, m: int, seed: int) -> tuple[torch.Tensor, ...]:
    u = _randn(m, batch, width, seed=seed)
    W = _randn(DEPTH, width, width, seed=seed + 1) / width ** 0.5
    b = _randn(DEPTH, width, seed=seed + 2)
    idx = torch.randint(0, DEPTH, (m,), generator=torch.Generator().manual_seed(seed))
    return u, W, b, idx


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_dense_step_torch_is_the_formula(activation: str) -> None:
    u, W, b, idx = _dense_inputs(7, 5, 4, seed=20)
    out = K.dense_step_torch(u, W, b, idx, 0.3, activation)
    act = torch.tanh if activation == "tanh" else torch.relu
    ref = torch.stack([u[i] + 0.3 * act(u[i] @ W[n].T + b[n]) for i, n in enumerate(idx.tolist())])
    _close(out, ref, TOL64, "dense_step_torch")


@_SKIP_KERNELS
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize(("width", "batch", "m"), DENSE_SIZES,
                         ids=[f"w{w}-b{b}-m{m}" for w, b, m in DENSE_SIZES])
def test_dense_step_triton_matches_reference(activation: str, width: int, batch: int,
                                             m: int) -> None:
    u, W, b, idx = _dense_inputs(width, batch, m, seed=30 + width + batch + m)
    ref = K.dense_step_torch(u, W, b, idx, 0.37, activation)  # float64 reference
    out = K.dense_step_triton(u.float().to(KDEV), W.float().to(KDEV), b.float().to(KDEV),
                              idx.to(KDEV), 0.37, activation)
    _close(out.double().cpu(), ref, KERNEL_TOL, f"dense_step_triton {activation}")


def test_fas_correct_torch_is_the_formula() -> None:
    u, v, u_c = _randn(9, 5, 7, seed=40), _randn(4, 5, 7, seed=41), _randn(4, 5, 7, seed=42)
    c_index = torch.tensor([0, 3, 6, 8])
    out = u.clone()
    K.fas_correct_torch(out, v, u_c, c_index)
    ref = u.clone()
    for j, c in enumerate(c_index.tolist()):
        ref[c] = u[c] + (v[j] - u_c[j])
    _close(out, ref, TOL64, "fas_correct_torch")


# (3, 700): a state of more than one block (1024 elements) per program row.
FAS_SIZES = [((1,), 1), ((5, 7), 3), ((17, 33), 10), ((2, 3, 5, 4), 3), ((3, 700), 2)]


@_SKIP_KERNELS
@pytest.mark.parametrize(("state", "count"), FAS_SIZES,
                         ids=[f"{'x'.join(map(str, s))}-M{c}" for s, c in FAS_SIZES])
def test_fas_correct_triton_matches_reference(state: tuple[int, ...], count: int) -> None:
    points = 3 * count + 1  # C-points every third fine point, the rest untouched
    u = _randn(points, *state, seed=50)
    v, u_c = _randn(count, *state, seed=51), _randn(count, *state, seed=52)
    c_index = torch.arange(count) * 3
    ref = u.clone()
    K.fas_correct_torch(ref, v, u_c, c_index)
    out = u.float().to(KDEV)
    K.fas_correct_triton(out, v.float().to(KDEV), u_c.float().to(KDEV), c_index.to(KDEV))
    _close(out.double().cpu(), ref, KERNEL_TOL, "fas_correct_triton")
    untouched = torch.ones(points, dtype=torch.bool)
    untouched[c_index] = False
    assert torch.equal(out.cpu()[untouched], u.float()[untouched]), "F-points changed"


def test_kernel_argument_checks() -> None:
    u, W, b, idx = _dense_inputs(7, 5, 3, seed=60)
    with pytest.raises(ValueError, match="activation"):
        K.dense_step_torch(u, W, b, idx, 0.1, "gelu")
    with pytest.raises(ValueError, match="idx"):
        K.dense_step_torch(u, W, b, idx[:2], 0.1, "tanh")
    with pytest.raises(ValueError, match="c_index"):
        K.fas_correct_torch(u, u[:2], u[:2], torch.tensor([0]))
    if configs.HAS_TRITON:
        with pytest.raises(TypeError, match="float32"):
            K.dense_step_triton(u, W, b, idx, 0.1, "tanh")


def test_importing_the_propagator_does_not_import_triton() -> None:
    """Triton is imported only when a Triton kernel runs (house style: kernels/__init__.py)."""
    import subprocess
    import sys

    code = ("import sys, mrc.techniques.mgrit.propagate as p; "
            "p.StackPropagator; print('triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@_SKIP_KERNELS
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize(("width", "batch", "first", "stride", "m"), [(7, 5, 1, 4, 3), (33, 17, 0, 1, 12),
                                                                       (1, 1, 11, 1, 1)])
def test_dense_step_triton_on_a_progression_into_strided_views(activation: str, width: int, batch: int, first: int,
                                                                stride: int, m: int) -> None:
    """The solver's form of the kernel: layers first, first + stride, … (no index tensor), u read from and the
    result written into strided views along the intervals (the point sets of a level), other rows untouched."""
    u, W, b, _ = _dense_inputs(width, batch, m, seed=70 + width)
    idx = torch.arange(m) * stride + first
    ref = K.dense_step_torch(u, W, b, idx, 0.37, activation)
    states = _randn(2 * m + 1, batch, width, seed=71).float().to(KDEV)
    states[0:2 * m:2] = u.float().to(KDEV)
    before = states.clone()
    got = K.dense_step_triton(states[0:2 * m:2], W.float().to(KDEV), b.float().to(KDEV), None, 0.37,
                              activation, first=first, stride=stride, out=states[1::2])
    assert got.data_ptr() == states[1::2].data_ptr()
    _close(states[1::2].double().cpu(), ref, KERNEL_TOL, f"dense_step_triton progression {activation}")
    assert torch.equal(states[0::2], before[0::2]), "rows outside out changed"
    with pytest.raises(ValueError, match="layers"):
        K.dense_step_triton(states[0:2 * m:2], W.float().to(KDEV), b.float().to(KDEV), None, 0.37,
                            activation, first=DEPTH, stride=stride)
