"""Serial buffer layers, initial guesses and frozen dropout masks of MGRIT solves (issue 24, items 3 and 5).

* `buffer = B`: converged, training equals serial training (loss to 1e-12, gradients to 1e-10); after
  one iteration per solve, the first and last B states are serial propagation of their inputs and the
  first and last B adjoint states the serial adjoint of theirs (against tests/numerics/mgrit_reference.py
  to 1e-14), and the middle is the reference's V-cycle on the middle layers (iterate to 1e-12), warm
  started from the previous step's middle; a buffer that leaves no middle is a diagnostic.
* `warm_start`: each guess is what guess.py says, built from the reference's coarse steps.
* dropout in user blocks (GenericPropagator): one mask per layer and step, shared by every call, so a
  converged solve equals serial propagation with those masks and its gradients autograd's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mgrit_reference import Hierarchy, Layer, adjoint_step, euler, forward_step, solve
from torch import nn

from mrc.api import SpecText, compile_spec, lower
from mrc.diagnostics import CompileError
from mrc.techniques.mgrit.guess import coarse_sweep, shifted
from mrc.techniques.mgrit.ops import SolvePhase
from mrc.techniques.mgrit.propagate import GenericPropagator, StackPropagator
from mrc.techniques.mgrit.solver import MGRIT, Settings, adjoint_solve, lambdas
from mrc.techniques.mgrit.tables import STACKS

DT = torch.float64
SPEC = """model ode_resnet(width=3, depth={depth}, h=0.1, activation=tanh)
data levelsets(batch=8)
optimizer sgd(lr=0.5)
train(steps={steps}, seed=0, dtype=float64, kernels="torch.optim")
"""


def _block(settings: str) -> str:
    return f'mgrit "stack" {{ {settings} }}\n'


def _run(extra: str, depth: int, steps: int) -> tuple[list[float], dict[str, torch.Tensor], list, object]:
    """`steps` steps of mrc's Plan: the losses, the gradients of the last step, the states the
    lowering kept after each step ((forward, adjoint) when warm-started), and the compiled spec."""
    c = compile_spec(SpecText(SPEC.format(depth=depth, steps=steps) + extra))
    plan = lower(c, steps)
    d = c.bound.data
    losses, kept = [], []
    for t in range(steps):
        idx = d.batch_indices(0)[t]
        losses.append(float(plan.step(t, d.train_x[idx].double(), d.train_y[idx])))
        kept.append((plan.ctx.state.get("mgrit/stack/forward"), plan.ctx.state.get("mgrit/stack/adjoint")))
    grads = {n: g.clone() for n, g in plan.ctx.replicas.gradients().items()}  # stacked layers' too
    return losses, grads, kept, c


@pytest.mark.parametrize(("depth", "settings"), [
    (32, "buffer = 3; levels = 3; coarsening = 2; relax = FCF"),
    (23, "buffer = 1; levels = 2; coarsening = 4; relax = F"),    # a middle of 21: uneven
])
def test_converged_training_with_buffers_equals_serial(depth: int, settings: str) -> None:
    ref_losses, ref, _, _ = _run("", depth, 2)
    iters = "forward_iters = 40; backward_iters = 40; warm_start = off"
    losses, got, _, _ = _run(_block(f"{settings}; {iters}"), depth, 2)
    assert losses == pytest.approx(ref_losses, rel=0, abs=1e-12)
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, rtol=0, atol=1e-10, msg=name)


def _layers(c: object) -> tuple[list[Layer], float]:
    stack = c.bound.model.stack  # type: ignore[attr-defined]
    return [Layer(m.weight.detach(), m.bias.detach()) for m in stack.layers], float(stack.h)


def test_few_iterations_keep_the_buffer_layers_serial() -> None:
    """One iteration per solve, two steps (the second warm-started from the first's middle): the
    buffers are serial propagation (forward and adjoint) of what enters them, the middle is the
    reference V-cycle over layers B … N−B−1 only (each step with the weights it ran with)."""
    depth, b = 24, 4
    hier = Hierarchy.of(3, 2, "F")
    block = _block(f"buffer = {b}; levels = 3; coarsening = 2; relax = F; forward_iters = 1; backward_iters = 1; "
                   "warm_start = previous")
    c = compile_spec(SpecText(SPEC.format(depth=depth, steps=2) + block))
    plan = lower(c, 2)
    d = c.bound.data
    kept = []
    for t in range(2):
        layers, h = _layers(c)
        layers = [Layer(x.weight.clone(), x.bias.clone()) for x in layers]  # the weights this step runs with
        idx = d.batch_indices(0)[t]
        plan.step(t, d.train_x[idx].double(), d.train_y[idx])
        states, lam = (plan.ctx.state[f"mgrit/stack/{w}"].clone() for w in ("forward", "adjoint"))
        kept.append((layers, states, lam))
    n, mid = depth, depth - 2 * b
    serial = Hierarchy((), ())
    for t, (layers, states, lam) in enumerate(kept):
        for i in [*range(b), *range(n - b, n)]:  # forward buffers: y_{i+1} = Φ_i(y_i)
            want = euler(layers[i], h, "tanh", states[i])
            torch.testing.assert_close(states[i + 1], want, rtol=0, atol=1e-14, msg=f"step {t} state {i + 1}")
            back = adjoint_step(layers, h, "tanh", serial, list(states))(0, n - 1 - i, lam[i + 1])
            torch.testing.assert_close(lam[i], back, rtol=0, atol=1e-14, msg=f"step {t} adjoint {i}")
        warm = kept[t - 1] if t else None
        fwd, _ = solve(forward_step(layers[b:n - b], h, "tanh", hier), states[b], mid, hier, 1,
                       None if warm is None else list(warm[1][b:n - b + 1]))
        torch.testing.assert_close(states[b:n - b + 1], torch.stack(fwd[-1]), rtol=0, atol=1e-12,
                                   msg=f"step {t}: the middle's forward iterate")
        middle = list(states[b:n - b + 1])
        adj, _ = solve(adjoint_step(layers[b:n - b], h, "tanh", hier, middle), lam[n - b], mid, hier, 1,
                       None if warm is None else list(warm[2][b:n - b + 1].flip(0)))
        torch.testing.assert_close(lam[b:n - b + 1], torch.stack(adj[-1][::-1]), rtol=0, atol=1e-12,
                                   msg=f"step {t}: the middle's adjoint iterate")


def test_a_buffer_that_leaves_no_middle_or_an_unknown_guess_is_reported_at_its_value(tmp_path: Path) -> None:
    path = tmp_path / "s.mrs"
    path.write_text(SPEC.format(depth=16, steps=1) + _block("levels = 2; coarsening = 4; buffer = 7"))
    with pytest.raises(CompileError) as err:
        compile_spec(path)
    d = err.value.diagnostics[0]
    assert "2 between the buffers" in d.message and "level 0 has 2 steps" in d.message
    assert path.read_text().splitlines()[d.span.line - 1][d.span.col - 1:d.span.end_col - 1] == "7"
    path.write_text(SPEC.format(depth=16, steps=1) + _block("buffer = 8"))
    with pytest.raises(CompileError, match="leaves 0 for the MGRIT solve"):
        compile_spec(path)
    path.write_text(SPEC.format(depth=16, steps=1) + _block("warm_start = later"))
    with pytest.raises(CompileError) as err:
        compile_spec(path)
    d = err.value.diagnostics[0]
    assert "`warm_start` must be previous, shifted, coarse, cache or off" in d.message
    assert path.read_text().splitlines()[d.span.line - 1][d.span.col - 1:d.span.end_col - 1] == "later"


def test_the_graph_shows_the_buffer_and_the_guess() -> None:
    c = compile_spec(SpecText(SPEC.format(depth=16, steps=1) + _block("levels = 2; buffer = 2; warm_start = coarse")))
    lines = c.graph.to_text().splitlines()
    assert any(line.startswith("  mgrit stack: N=16") and line.endswith(" warm_start=coarse buffer=2")
               for line in lines)
    assert any("mgrit_relax FCF stack (adjoint) layers [2:14] buffer=2 @[level=0 iteration=0]" in line
               for line in lines)
    assert all(op.settings.buffer == 2 and op.settings.warm_start == "coarse"
               for p in c.graph.patterns() for op in p.of_kind(SolvePhase))


@pytest.mark.parametrize(("given", "guess"), [("true", "previous"), ("false", "off"), ("shifted", "shifted")])
def test_warm_start_takes_the_old_booleans_and_the_guesses(given: str, guess: str) -> None:
    c = compile_spec(SpecText(SPEC.format(depth=16, steps=1) + _block(f"levels = 2; warm_start = {given}")))
    (info,) = c.graph.table(STACKS).values()
    assert info.warm_start == guess
    default = compile_spec(SpecText(SPEC.format(depth=16, steps=1) + _block("levels = 2")))
    assert next(iter(default.graph.table(STACKS).values())).warm_start == "shifted"


# ---------------------------------------------------------------- initial guesses


def _stack(depth: int, width: int = 3, seed: int = 0) -> nn.Module:
    from mrc.models.ode_resnet import build_ode_resnet

    torch.manual_seed(seed)
    return build_ode_resnet((width,), 2, width=width, depth=depth, h=0.1, activation="tanh").double().stack


def test_the_coarse_guess_sweeps_the_coarsest_level_and_interpolates() -> None:
    depth, span = 37, 8  # 4 coarsest intervals of 8 fine steps and a tail of 5
    stack = _stack(depth)
    layers = [Layer(m.weight.detach(), m.bias.detach()) for m in stack.layers]
    u0 = torch.randn(5, 3, dtype=DT)
    got = coarse_sweep(StackPropagator(stack), depth, span, u0)
    coarse = [u0]
    for k in range(depth // span):
        coarse.append(euler(layers[k * span], span * 0.1, "tanh", coarse[-1]))
    for n in range(depth + 1):
        k, j = divmod(n, span)
        want = coarse[-1] if k >= len(coarse) - 1 else coarse[k] + j / span * (coarse[k + 1] - coarse[k])
        torch.testing.assert_close(got[n], want, rtol=0, atol=1e-14, msg=f"point {n}")
    serial = coarse_sweep(StackPropagator(stack), depth, 1, u0)  # span 1: serial propagation itself
    y = u0
    for n in range(depth):
        y = euler(layers[n], 0.1, "tanh", y)
        torch.testing.assert_close(serial[n + 1], y, rtol=0, atol=1e-14)


def test_the_shifted_guess_moves_the_previous_states_by_the_change_of_the_first() -> None:
    prev, u0 = torch.randn(6, 4, 3, dtype=DT), torch.randn(4, 3, dtype=DT)
    got = shifted(prev, u0)
    torch.testing.assert_close(got[0], u0, rtol=0, atol=1e-15)
    torch.testing.assert_close(got - prev, (u0 - prev[0]).expand_as(prev), rtol=0, atol=1e-15)


@pytest.mark.parametrize("guess", ["previous", "shifted", "coarse", "off"])
def test_each_solve_starts_from_its_guess(guess: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guess every solve of two training steps starts from, against one built from the
    reference's steps and the previous step's kept states."""
    starts: list[tuple[torch.Tensor, torch.Tensor | None, object]] = []
    start = MGRIT.start

    def recording(self: MGRIT, u0: torch.Tensor, warm: torch.Tensor | None = None, every: int = 1) -> None:
        if warm is not None and every > 1:  # the fine C-points alone (`MGRIT.start`): compared there
            assert guess in ("previous", "shifted") and every == 4
            whole = torch.full((depth + 1, *u0.shape), float("nan"), dtype=u0.dtype)
            whole[::every] = warm
            warm = whole
        starts.append((u0.clone(), None if warm is None else warm.clone(), self.prop))
        start(self, u0, warm if every == 1 or warm is None else warm[::every], every)
    monkeypatch.setattr(MGRIT, "start", recording)
    depth, span = 16, 4  # levels 2, cf 4: the coarsest steps span 4 fine ones
    block = _block(f"levels = 2; coarsening = 4; forward_iters = 1; backward_iters = 1; warm_start = {guess}")
    c = compile_spec(SpecText(SPEC.format(depth=depth, steps=2) + block))
    plan = lower(c, 2)
    d = c.bound.data
    kept: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
    for t in range(2):
        layers, h = _layers(c)
        layers = [Layer(x.weight.clone(), x.bias.clone()) for x in layers]  # the weights this step runs with
        idx = d.batch_indices(0)[t]
        plan.step(t, d.train_x[idx].double(), d.train_y[idx])
        (y0, fwd_warm, _), (g, adj_warm, adjoint) = starts[2 * t:2 * t + 2]
        if guess == "coarse":
            hier, states = Hierarchy.of(2, span, "F"), list(adjoint.states)  # type: ignore[attr-defined]
            fwd_want, adj_want = [y0], [g]
            for k in range(depth // span):
                fwd_want.append(forward_step(layers, h, "tanh", hier)(1, k, fwd_want[-1]))
                adj_want.append(adjoint_step(layers, h, "tanh", hier, states)(1, k, adj_want[-1]))
            for name, warm, want in (("forward", fwd_warm, fwd_want), ("adjoint", adj_warm, adj_want)):
                assert warm is not None
                torch.testing.assert_close(warm[::span], torch.stack(want), rtol=0, atol=1e-14, msg=name)
        elif guess == "off" or t == 0:
            assert fwd_warm is None and adj_warm is None
        else:
            assert kept[0] is not None and kept[1] is not None
            want_f, want_a = kept[0], kept[1].flip(0)
            if guess == "shifted":
                want_f, want_a = want_f + (y0 - want_f[0]), want_a + (g - want_a[0])
            torch.testing.assert_close(fwd_warm[::span], want_f[::span], rtol=0, atol=1e-14)
            torch.testing.assert_close(adj_warm[::span], want_a[::span], rtol=0, atol=1e-14)
        kept = tuple(plan.ctx.state.get(f"mgrit/stack/{w}") for w in ("forward", "adjoint"))  # type: ignore[assignment]
        kept = tuple(None if x is None else x.clone() for x in kept)  # type: ignore[assignment]


# ---------------------------------------------------------------- frozen dropout masks


class DropBlock(nn.Module):
    """A user block with dropout: F(y) = tanh(W · dropout(y) + b)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.drop = nn.Dropout(0.3)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(self.drop(y)))


def test_dropout_masks_are_frozen_through_a_solve() -> None:
    """A stack of user blocks with dropout (the GenericPropagator): after `refresh()` (once per
    step) every call of a layer drops the same units, so a converged forward solve equals serial
    propagation with those masks, and the converged adjoint's gradients (λ_0 and the parameters')
    equal autograd's through that serial network; the next step draws new masks."""
    torch.manual_seed(0)
    depth, width, h = 16, 5, 0.2
    layers = [DropBlock(width).double() for _ in range(depth)]
    prop = GenericPropagator(layers, h)
    prop.refresh()
    y0 = torch.randn(6, width, dtype=DT)
    settings = Settings(3, (2,), ("FCF",), 30)
    solver = MGRIT(prop, depth, settings)
    solver.start(y0)
    states = solver.solve().clone()
    y, serial = y0.clone().requires_grad_(True), []
    x = y
    for n in range(depth):  # autograd through the layers, each call with its frozen mask
        x = x + h * prop._layer(n, x)
        serial.append(x)
    torch.testing.assert_close(states[1:], torch.stack(serial).detach(), rtol=0, atol=1e-12)
    eval_y = y0.clone()
    with torch.no_grad():
        for layer in layers:
            eval_y = eval_y + h * layer.eval()(eval_y)
            layer.train()
    assert (eval_y - states[-1]).abs().max() > 1e-3  # the masks drop units
    g = torch.randn_like(y0)
    params = [p for layer in layers for p in layer.parameters()]
    want = torch.autograd.grad(serial[-1], [y, *params], g)
    lam = lambdas(adjoint_solve(prop, states, g, settings))
    prop.param_grads(states, lam)
    torch.testing.assert_close(lam[0], want[0], rtol=0, atol=1e-10)
    for p, w in zip(params, want[1:], strict=True):
        torch.testing.assert_close(p.grad, w, rtol=0, atol=1e-10)
    again = prop.step(torch.tensor([3]), 1, states[3:4])
    prop.refresh()  # the next step: new masks
    assert not torch.equal(prop.step(torch.tensor([3]), 1, states[3:4]), again)
