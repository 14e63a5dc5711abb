"""The MGRIT solver's internal calls (issue 24, item 2): strided `step_at`/`sweep_at`, the
linearised adjoint, the torch.func path of user blocks, and a solve without host syncs.

Everything in float64 against references outside the code under test: `ResidualStack.step` for
the forward steps, torch.autograd through `ResidualStack.step` for the adjoint steps (relu at
z = 0 exactly included: autograd's σ'(0) is 0), and a dispatch counter for the host syncs.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
import torch
from mgrit_stacks import CASES, DEPTH, IDS
from mgrit_stacks import randn as _randn
from mgrit_stacks import stack as _stack
from mgrit_stacks import state as _state
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mrc.techniques.mgrit.grid import Settings
from mrc.techniques.mgrit.propagate import GenericPropagator, StackPropagator
from mrc.techniques.mgrit.solver import MGRIT, Adjoint, adjoint_solve, lambdas

TOL = {"rtol": 0.0, "atol": 1e-12}
# (first, stride, count, span): progressions the solver makes (F-, C-points, coarse levels)
RUNS = [(0, 1, DEPTH, 1), (1, 4, 3, 1), (3, 4, 3, 1), (0, 4, 3, 4), (2, 8, 1, 2), (5, 3, 2, 3)]








@pytest.mark.parametrize(("variant", "activation"), CASES, ids=IDS)
@pytest.mark.parametrize(("first", "stride", "count", "span"), RUNS)
def test_step_at_is_the_layers_step_on_a_progression(variant: str, activation: str, first: int, stride: int,
                                                     count: int, span: int) -> None:
    """out[i] = stack.step(first + i·stride, u[i], h = span·h) + add[i], written into a strided view of a
    larger tensor whose other rows stay as they were."""
    stack = _stack(variant, activation)
    prop = StackPropagator(stack)
    u = _randn(count, *_state(variant), seed=1)
    add = _randn(count, *_state(variant), seed=2)
    big = _randn(2 * count + 1, *_state(variant), seed=3)
    before = big.clone()
    got = prop.step_at(first, stride, span, u, big[1::2], add)
    with torch.no_grad():
        want = torch.stack([stack.step(first + i * stride, u[i], h=span * stack.h) + add[i] for i in range(count)])
    torch.testing.assert_close(big[1::2], want, **TOL)
    assert got.data_ptr() == big[1::2].data_ptr()
    assert torch.equal(big[0::2], before[0::2]), "rows outside the view changed"
    torch.testing.assert_close(prop.step_at(first, stride, span, u), want - add, **TOL)


def _forward_states(variant: str, seed: int, zero: tuple[int, ...] = ()) -> torch.Tensor:
    """N + 1 states, zero at the indices `zero` (with a zero bias there, z is 0 exactly)."""
    states = _randn(DEPTH + 1, *_state(variant), seed=seed)
    states[list(zero)] = 0.0
    return states


@pytest.mark.parametrize(("variant", "activation"), CASES, ids=IDS)
@pytest.mark.parametrize(("first", "stride", "count", "span"), RUNS)
def test_the_adjoint_steps_are_autograds_vjps(variant: str, activation: str, first: int, stride: int, count: int,
                                              span: int) -> None:
    """The linearised adjoint's step over reversed [first + i·stride, … + span) is autograd's vjp of the coarse
    forward step Φ(N − first − i·stride − span, span) at that layer's forward state; relu layers whose
    pre-activation is exactly 0 get σ'(0) = 0, as autograd."""
    stack = _stack(variant, activation)
    zero = (DEPTH - first - span, 4, 7)  # the first interval's layer among them
    with torch.no_grad():
        for k in zero:
            stack.layers[k].bias.zero_()
    states = _forward_states(variant, seed=4, zero=zero)
    lam = _randn(count, *_state(variant), seed=5)
    add = _randn(count, *_state(variant), seed=6)
    got = StackPropagator(stack).linearized(states).step_at(first, stride, span, lam, None, add)
    want = []
    for i in range(count):
        f = DEPTH - first - i * stride - span
        y = states[f].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(stack.step(f, y, h=span * stack.h), y, lam[i])
        want.append(g + add[i])
    torch.testing.assert_close(got, torch.stack(want), **TOL)


@pytest.mark.parametrize(("variant", "activation"), CASES, ids=IDS)
@pytest.mark.parametrize("with_g", [False, True])
def test_sweeps_are_steps_one_after_the_other(variant: str, activation: str, with_g: bool) -> None:
    """The coarsest level's serial sweep (forward and adjoint) is one step per point, in order."""
    stack = _stack(variant, activation)
    prop = StackPropagator(stack)
    first, stride, span, n = 1, 2, 2, 5
    u = _randn(n + 1, *_state(variant), seed=7)
    g = _randn(n + 1, *_state(variant), seed=8) if with_g else None
    adjoint = prop.linearized(_forward_states(variant, seed=9))
    for which in (prop, adjoint):
        want = u.clone()
        for k in range(1, n + 1):
            want[k] = which.step_at(first + (k - 1) * stride, 1, span, want[k - 1:k],
                                    None, None if g is None else g[k:k + 1])[0]
        got = u.clone()
        which.sweep_at(first, stride, span, got, g)
        torch.testing.assert_close(got, want, **TOL)


# ---------------------------------------------------------------- user blocks: torch.func


class Block(nn.Module):
    """A user's step function F(y) = tanh(W y + b) · scale (a plain attribute, equal in every layer)."""

    def __init__(self, width: int, scale: float = 0.5) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.scale = scale

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(y)) * self.scale


class Peeking(Block):
    """A block whose code reads a value on the host: torch.func.vmap cannot run it."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return super().forward(y) * (1.0 if float(y.detach().sum()) > -1e9 else 0.0)


def _user_layers(cls: type[Block], scales: list[float] | None = None) -> list[nn.Module]:
    torch.manual_seed(1)
    scales = scales or [0.5] * DEPTH
    return [cls(6, s).double() for s in scales]


def _autograd_reference(layers: list[nn.Module], h: float, first: int, stride: int, span: int, u: torch.Tensor,
                        lam: torch.Tensor | None, states: torch.Tensor | None) -> torch.Tensor:
    out = []
    n = len(layers)
    for i in range(u.shape[0]):
        if lam is None:
            with torch.no_grad():
                layer = layers[first + i * stride]
                out.append(u[i] + span * h * layer(u[i]))
        else:
            assert states is not None
            f = n - first - i * stride - span
            y = states[f].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(y + span * h * layers[f](y), y, lam[i])
            out.append(g)
    return torch.stack(out)


@pytest.mark.parametrize(("cls", "scales", "problem"), [
    (Block, None, None),
    (Peeking, None, "vmap failed"),
    (Block, [0.5] * (DEPTH - 1) + [0.25], "attributes"),
])
def test_user_blocks_by_torch_func_match_autograd(cls: type[Block], scales: list[float] | None,
                                                  problem: str | None) -> None:
    """A stack of user blocks: the solver's calls and the parameter gradients are one vmapped functional call
    (and its torch.func.vjp) where the layers share class, shapes and attributes, else a loop that says why; both
    equal autograd."""
    layers = _user_layers(cls, scales)
    prop = GenericPropagator(layers, 0.1)
    states = _randn(DEPTH + 1, 4, 6, seed=10)
    for first, stride, count, span in RUNS:
        u = _randn(count, 4, 6, seed=11)
        lam = _randn(count, 4, 6, seed=12)
        torch.testing.assert_close(prop.step_at(first, stride, span, u),
                                   _autograd_reference(layers, 0.1, first, stride, span, u, None, None), **TOL)
        torch.testing.assert_close(prop.linearized(states).step_at(first, stride, span, lam),
                                   _autograd_reference(layers, 0.1, first, stride, span, lam, lam, states), **TOL)
    # the fine-level parameter gradients Σ_n ⟨λ_{n+1}, Φ_n(y_n)⟩ by θ, added to existing ones
    lambdas = _randn(DEPTH + 1, 4, 6, seed=18)
    params = [p for layer in layers for p in layer.parameters()]
    objective = sum((lambdas[n + 1] * (states[n] + 0.1 * layer(states[n]))).sum() for n, layer in enumerate(layers))
    want = torch.autograd.grad(objective, params)
    for p in params:
        p.grad = torch.ones_like(p)
    prop.param_grads(states, lambdas)
    for p, g in zip(params, want, strict=True):
        torch.testing.assert_close(p.grad, g + 1, rtol=0, atol=1e-10)
    if problem is None:
        assert prop.vmap_problem is None
    else:
        assert prop.vmap_problem is not None and problem in prop.vmap_problem, prop.vmap_problem


def test_generic_solves_read_the_stacked_parameters_of_the_last_refresh() -> None:
    """The vmapped calls read the parameters stacked by `refresh()` (once per solve), not the modules."""
    layers = _user_layers(Block)
    prop = GenericPropagator(layers, 0.1)
    u = _randn(DEPTH, 4, 6, seed=13)
    old = prop.step_at(0, 1, 1, u)
    with torch.no_grad():
        for layer in layers:
            layer.lin.weight.mul_(-1.0)
    torch.testing.assert_close(prop.step_at(0, 1, 1, u), old, **TOL)
    prop.refresh()
    torch.testing.assert_close(prop.step_at(0, 1, 1, u),
                               _autograd_reference(layers, 0.1, 0, 1, 1, u, None, None), **TOL)


# ---------------------------------------------------------------- no host syncs


class Syncs(TorchDispatchMode):
    """Counts the aten calls that copy a value to the host (`.item()`, `float()`, `bool()` of a tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name in ("_local_scalar_dense", "item", "is_nonzero", "equal"):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("variant", ["dense", "conv"])
def test_a_solve_without_tolerance_never_syncs(variant: str) -> None:
    """Forward and adjoint solves with tol = 0 make no host sync (the residual norms stay tensors); reading
    `residuals` gives the floats; with tol > 0 the solve reads the last norm before each further iteration."""
    stack = _stack(variant, "tanh")
    prop = StackPropagator(stack)
    y0 = _randn(*_state(variant), seed=14)
    settings = Settings(levels=3, coarsening=(2,), relax=("FCF",), iters=3)
    with Syncs() as syncs:
        fwd = MGRIT(prop, DEPTH, settings)
        fwd.start(y0)
        states = fwd.solve()
        adj = adjoint_solve(prop, states, y0, settings)
        lambdas(adj)
    assert not syncs.counts, syncs.counts
    for solver in (fwd, adj):
        assert len(solver.residuals) == 3 and all(type(r) is float and r > 0 for r in solver.residuals)
        assert solver.residuals[-1] < solver.residuals[0]
    with Syncs() as syncs:
        fwd = MGRIT(prop, DEPTH, Settings(levels=3, coarsening=(2,), relax=("FCF",), iters=3, tol=1e-300))
        fwd.start(y0)
        fwd.solve()
    assert sum(syncs.counts.values()) == 2, syncs.counts


def test_the_adjoint_of_a_plain_propagator_goes_through_its_vjp() -> None:
    """A propagator without `linearized` (the protocol's step and vjp only): the adjoint gathers the states per
    call, and gives the same λ as the linearised built-in one."""
    stack = _stack("dense", "relu")
    prop = StackPropagator(stack)

    class Plain:
        def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
            return prop.step(start, span, u)

        def vjp(self, start: torch.Tensor, span: int, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
            return prop.vjp(start, span, y, lam)

    states = _forward_states("dense", seed=15)
    g = _randn(*_state("dense"), seed=16)
    settings = Settings(levels=3, coarsening=(2,), relax=("F",), iters=2)
    assert not hasattr(Adjoint(Plain(), states), "sweep_at")
    plain = lambdas(adjoint_solve(Plain(), states, g, settings))
    fast = lambdas(adjoint_solve(prop, states, g, settings))
    torch.testing.assert_close(fast, plain, **TOL)


@pytest.mark.parametrize("kind", ["stack", "generic"])
def test_a_rank_solve_makes_no_sync_per_iteration(kind: str) -> None:
    """Across ranks (here a world of one) the forward solve makes no host sync. A stack's adjoint linearises the
    block once (`linearized_part`) and makes none either; a generic propagator's (`RankAdjoint`, from the table)
    checks the table rows of each of its progressions once per solve (on the CPU), so a second iteration adds
    no sync."""
    from mrc.runtime.world import SOLO
    from mrc.techniques.mgrit import ranks as R
    from mrc.techniques.mgrit.grid import adjoint_blocks

    stack = _stack("dense", "tanh")
    prop: Any = StackPropagator(stack) if kind == "stack" else GenericPropagator(list(stack.layers), stack.h)
    y0 = _randn(*_state("dense"), seed=17)
    blocks = ((0, DEPTH),)
    counts = []
    for iters in (1, 2):
        s = Settings(levels=3, coarsening=(2,), relax=("FCF",), iters=iters)
        with Syncs() as forward:
            fwd = R.rank_forward_solve(prop, DEPTH, s, blocks, SOLO, y0)
            fwd.solve()
        assert not forward.counts, forward.counts
        adj = adjoint_blocks(DEPTH, s, blocks)
        rows, table = R.adjoint_table(DEPTH, s, blocks, adj, SOLO, fwd.states)
        with Syncs() as adjoint:
            R.rank_adjoint_solve(prop, DEPTH, s, adj, SOLO, rows, table, y0).solve()
        counts.append(sum(adjoint.counts.values()))
    if kind == "stack":
        assert counts == [0, 0], counts
    else:
        assert 0 < counts[0] == counts[1] <= 12, counts


# ---------------------------------------------------------------- float32 dense: the fused tanh, features first


def test_float32_dense_steps_and_sweeps_match_the_layers_steps() -> None:
    """In float32 a dense tanh step is u + 2s·σ(2z) − s with 2z made by the batched product: it equals the layers'
    own Euler step (torch's tanh) to float32 rounding, on a progression written into strided views and in a sweep
    (whose points are exactly its steps); a wrong fold (say s·σ, or z instead of 2z) is off by ≈ s."""
    stack = _stack("dense", "tanh").float()
    prop = StackPropagator(stack)
    u = _randn(3, 5, 8, seed=11).float()
    big = prop.new_states((7, 5, 8), u)  # the solver's layout: features first
    assert big.stride() == (40, 1, 5)
    big.zero_()
    prop.step_at(1, 4, 2, u, big[1::2])
    want = torch.stack([stack.step(1 + 4 * i, u[i], h=2 * stack.h) for i in range(3)])
    torch.testing.assert_close(big[1::2], want, rtol=0, atol=2e-6)
    assert torch.equal(big[0::2], torch.zeros(4, 5, 8))
    states = prop.new_states((5, 5, 8), u)
    states.copy_(_randn(5, 5, 8, seed=12).float())
    g = _randn(5, 5, 8, seed=13).float()
    got = states.clone()
    prop.sweep_at(2, 1, 3, got, g)
    want = states.clone()
    for k in range(1, 5):
        want[k] = stack.step(2 + (k - 1), want[k - 1], h=3 * stack.h) + g[k]
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    steps = states.clone()
    for k in range(1, 5):
        prop.step_at(2 + (k - 1), 1, 3, steps[k - 1:k], steps[k:k + 1], g[k:k + 1])
    assert torch.equal(got, steps)
