"""MGRIT's hierarchy, iteration by iteration, against an unbatched reference written from the algorithm.

A converged solve equals serial propagation whatever its coarse propagators are (the FAS fixed point
is the fine solution), so the converged tests of test_mgrit.py cannot see a wrong coarse step. After
1–3 iterations the iterates depend on every level: the coarse step size s_l·h (s_l = cf_0·…·cf_{l−1}),
the layer whose weights it uses, the relaxation, the FAS right-hand side and the correction. Here
every iterate of mrc's solves — the solver on an ode_resnet stack's batched propagator, and the
solves inside few-iteration training runs (`mrc.api.lower(...).step`) — is compared with
tests/numerics/mgrit_reference.py (point by point, the steps written from the weights, vjps by
autograd), in float64, to 1e-12: the fine states after each forward iteration, the adjoint states
after each backward iteration, the residual norms, the losses and the weights after each step of a
hand training loop that uses the reference as its forward and backward.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from mgrit_reference import Hierarchy, Layer, adjoint_step, forward_step, param_grads, solve
from torch import nn
from torch.nn import functional as F

from mrc.api import compile_spec, lower
from mrc.models.ode_resnet import build_ode_resnet
from mrc.techniques.mgrit.propagate import propagator_for
from mrc.techniques.mgrit.solver import MGRIT, Adjoint, Settings, lambdas

DT = torch.float64
TOL = 1e-12


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(got, want, rtol=0, atol=TOL, msg=lambda m: f"{what}: {m}")


def _layers(stack: nn.Module) -> list[Layer]:
    """The reference's view of a stack: its layers' parameters (the tensors themselves)."""
    return [Layer(layer.weight, layer.bias) for layer in stack.layers]


def _settings(hier: Hierarchy, iters: int) -> Settings:
    return Settings(levels=len(hier.cfs) + 1, coarsening=hier.cfs, relax=hier.relax, iters=iters)


# ---------------------------------------------------------------- the solver on a stack's propagator


def _stack(variant: str, depth: int, activation: str, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """An ode_resnet stack in float64 (weights scaled up so the steps are far from the identity) and a y_0."""
    torch.manual_seed(seed)
    in_shape = (2, 5, 5) if variant == "conv" else (2,)
    model = build_ode_resnet(in_shape, 3, width=3, depth=depth, h=0.1, activation=activation,
                             variant=variant).double()
    with torch.no_grad():
        for p in model.stack.parameters():
            p.mul_(2.0)
    y0 = torch.randn((4, 3, 5, 5) if variant == "conv" else (5, 3), dtype=DT)
    return model.stack, y0


SOLVER_CASES = [  # variant, depth, activation, levels, cf, relax
    ("dense", 64, "tanh", 3, 4, "FCF"),
    ("dense", 64, "tanh", 3, 4, "F"),
    ("dense", 32, "tanh", 4, 2, "F"),
    ("dense", 48, "relu", 4, 2, "FCF"),
    ("dense", 50, "tanh", 3, 2, "F"),               # uneven: 50 → 25 → 12 (an incomplete last interval)
    ("dense", 64, "tanh", 4, (4, 2, 2), ("FCF", "F", "FCF")),
    ("conv", 16, "tanh", 3, 2, "FCF"),
    ("conv", 24, "relu", 4, 2, "F"),
]


@pytest.mark.parametrize(("variant", "depth", "activation", "levels", "cf", "relax"), SOLVER_CASES)
@pytest.mark.parametrize("warm", [False, True])
def test_forward_iterates_match_the_reference(variant: str, depth: int, activation: str, levels: int,
                                              cf: int | tuple, relax: str | tuple, warm: bool) -> None:
    """Three forward V-cycles of mrc's solver on the stack's batched propagator: the fine states and
    the residual norm after each equal the reference's."""
    stack, y0 = _stack(variant, depth, activation, seed=depth + levels)
    hier = Hierarchy.of(levels, cf, relax)
    guess = None
    if warm:  # a previous solve's states, perturbed: the warm start of one-shot training
        gen = torch.Generator().manual_seed(1)
        guess = torch.stack([y0 + 0.3 * k / depth * torch.randn(y0.shape, generator=gen, dtype=DT)
                             for k in range(depth + 1)])
    solver = MGRIT(propagator_for(stack), depth, _settings(hier, 3))
    solver.start(y0, guess)
    with torch.no_grad():
        step = forward_step(_layers(stack), stack.h, activation, hier)
        iterates, residuals = solve(step, y0, depth, hier, 3, None if guess is None else list(guess))
    for k, (want, res) in enumerate(zip(iterates, residuals, strict=True)):
        got_res = solver.iterate()
        _close(solver.states, torch.stack(want), f"forward iterate {k + 1}")
        assert got_res == pytest.approx(res, rel=1e-10, abs=1e-14), k
    # not yet serial propagation: the iterates still depend on the coarse levels
    with torch.no_grad():
        (exact,), _ = solve(step, y0, depth, Hierarchy((), ()), 1)
    assert float((solver.states - torch.stack(exact)).abs().max()) > 1e-6


@pytest.mark.parametrize(("variant", "depth", "activation", "levels", "cf", "relax"), SOLVER_CASES)
def test_adjoint_iterates_match_the_reference(variant: str, depth: int, activation: str, levels: int,
                                              cf: int | tuple, relax: str | tuple) -> None:
    """Three adjoint V-cycles (reversed time, linearised about inexact forward states) of mrc's
    solver: λ after each equals the reference's, and so do the fine-level parameter gradients."""
    stack, y0 = _stack(variant, depth, activation, seed=depth + levels)
    hier = Hierarchy.of(levels, cf, relax)
    layers = _layers(stack)
    with torch.no_grad():  # the states of a one-iteration forward solve: not the serial ones
        (states,), _ = solve(forward_step(layers, stack.h, activation, hier), y0, depth, hier, 1)
    g = torch.randn(y0.shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    prop = propagator_for(stack)
    solver = MGRIT(Adjoint(prop, torch.stack(states)), depth, _settings(hier, 3))
    solver.start(g)
    iterates, residuals = solve(adjoint_step(layers, stack.h, activation, hier, states), g, depth, hier, 3)
    for k, (want, res) in enumerate(zip(iterates, residuals, strict=True)):
        got_res = solver.iterate()
        _close(lambdas(solver), torch.stack(want[::-1]), f"adjoint iterate {k + 1}")
        assert got_res == pytest.approx(res, rel=1e-10, abs=1e-14), k
    lam = lambdas(solver)
    for p in stack.parameters():
        p.grad = None
    prop.param_grads(torch.stack(states), lam)
    for n, (dw, db) in enumerate(param_grads(layers, stack.h, activation, states, list(lam))):
        _close(stack.layers[n].weight.grad, dw, f"weight gradient of layer {n}")
        _close(stack.layers[n].bias.grad, db, f"bias gradient of layer {n}")


# ---------------------------------------------------------------- few-iteration training runs

DATA = {"dense": "levelsets(batch=8)", "conv": "synthetic(shape=[2,5,5], classes=3, samples=64, batch=6)"}
SPEC = """model ode_resnet(width={width}, depth={depth}, h=0.1, activation={act}, variant={variant})
data {data}
optimizer sgd(lr={lr})
train(steps={steps}, seed=0, dtype=float64, kernels="torch.optim")
"""
LR, STEPS = 0.5, 3


def _block(hier: Hierarchy, fwd: int, bwd: int, warm: bool) -> str:
    cfs = f"[{', '.join(map(str, hier.cfs))}]"
    relax = f"[{', '.join(hier.relax)}]"
    return (f'mgrit "stack" {{ levels = {len(hier.cfs) + 1}; coarsening = {cfs}; relax = {relax}; '
            f'forward_iters = {fwd}; backward_iters = {bwd}; warm_start = {"true" if warm else "false"} }}\n')


@pytest.fixture
def solves(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, torch.Tensor, float]]:
    """Every iteration mrc's MGRIT solves end during the test, in order: (forward | adjoint, the
    fine-level states in the solver's own order, the residual norm)."""
    log: list[tuple[str, torch.Tensor, float]] = []
    end_iteration = MGRIT.end_iteration

    def recording(self: MGRIT) -> float:
        res = end_iteration(self)
        log.append(("adjoint" if isinstance(self.prop, Adjoint) else "forward", self.states.detach().clone(), res))
        return res
    monkeypatch.setattr(MGRIT, "end_iteration", recording)
    return log


class HandLoop:
    """A hand training loop over a copy of the model: stem, head and loss by autograd; the stack's
    forward and backward by `fwd` and `bwd` reference V-cycles on `hier` (None: one serial sweep
    each), warm-started from the previous step's when `warm`; the fine-level parameter gradients
    and λ_0 into the stem; plain SGD."""

    def __init__(self, model: nn.Module, activation: str, hier: Hierarchy | None, fwd: int, bwd: int,
                 warm: bool) -> None:
        self.model = copy.deepcopy(model)
        self.activation, self.fwd, self.bwd, self.warm = activation, fwd, bwd, warm
        self.hier = hier or Hierarchy((), ())
        self.last: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self.iterations: list[tuple[str, torch.Tensor, float]] = []

    def step(self, x: torch.Tensor, target: torch.Tensor) -> float:
        m, hier = self.model, self.hier
        stack, n = m.stack, len(m.stack.layers)
        layers = _layers(stack)
        m.zero_grad(set_to_none=True)
        y0 = m.stem(torch.flatten(x, 1) if m.variant == "dense" else x)
        with torch.no_grad():
            fwd, res = solve(forward_step(layers, stack.h, self.activation, hier), y0.detach(), n, hier, self.fwd,
                             self.last[0] if self.warm and self.last else None)
        self.iterations += [("forward", torch.stack(u), r) for u, r in zip(fwd, res, strict=True)]
        states = fwd[-1]
        y_n = states[-1].clone().requires_grad_(True)
        loss = F.cross_entropy(m.head(m.drop(torch.flatten(m.pool(y_n), 1))), target)
        loss.backward()
        warm = self.last[1][::-1] if self.warm and self.last else None
        adj, res = solve(adjoint_step(layers, stack.h, self.activation, hier, states), y_n.grad, n, hier, self.bwd,
                         warm)
        self.iterations += [("adjoint", torch.stack(u), r) for u, r in zip(adj, res, strict=True)]
        lam = adj[-1][::-1]
        y0.backward(lam[0])
        for layer, (dw, db) in zip(stack.layers, param_grads(layers, stack.h, self.activation, states, lam),
                                   strict=True):
            layer.weight.grad, layer.bias.grad = dw, db
        with torch.no_grad():
            for p in m.parameters():
                p -= LR * p.grad
        self.last = (states, lam)
        return float(loss.detach())


def _train_both(tmp_path: Path, variant: str, depth: int, act: str, block: str, hier: Hierarchy | None,
                fwd: int, bwd: int, warm: bool) -> tuple[list[float], list[float], HandLoop, dict[str, torch.Tensor]]:
    """`STEPS` steps of mrc's Plan for the spec with `block`, and of the hand loop from the same initial
    weights on the same batches: both losses per step, the hand loop, and mrc's weights after."""
    path = tmp_path / "s.mrs"
    path.write_text(SPEC.format(width=3, depth=depth, act=act, variant=variant, data=DATA[variant], lr=LR,
                                steps=STEPS) + block)
    c = compile_spec(path)
    hand = HandLoop(c.bound.model, act, hier, fwd, bwd, warm)
    plan = lower(c, STEPS)
    d = c.bound.data
    got, want = [], []
    for t in range(STEPS):
        idx = d.batch_indices(0)[t]
        x, target = d.train_x[idx].double(), d.train_y[idx]
        got.append(float(plan.step(t, x, target)))
        want.append(hand.step(x, target))
    return got, want, hand, dict(c.bound.model.named_parameters())


def _compare_weights(got: dict[str, torch.Tensor], hand: HandLoop) -> None:
    want = dict(hand.model.named_parameters())
    assert set(got) == set(want)
    for name, p in want.items():
        _close(got[name].detach(), p.detach(), f"{name} after {STEPS} steps")


def test_the_hand_loop_is_mrcs_serial_training(tmp_path: Path, solves: list) -> None:
    """The hand loop with serial sweeps for forward and backward is mrc's serial training: the
    plumbing around the reference solves (stem, loss, head, λ_0, SGD) is right."""
    got, want, hand, weights = _train_both(tmp_path, "dense", 16, "tanh", "", None, 1, 1, False)
    assert got == pytest.approx(want, rel=0, abs=TOL)
    _compare_weights(weights, hand)
    assert not solves


TRAIN_CASES = [  # variant, depth, activation, levels, cf, relax, forward / backward iterations, warm start
    ("dense", 64, "tanh", 3, 4, "FCF", 2, 1, True),     # the seed's one-shot setting
    ("dense", 64, "tanh", 3, 4, "F", 1, 1, False),
    ("dense", 32, "tanh", 4, 2, "F", 3, 2, True),
    ("dense", 32, "relu", 4, 2, "FCF", 1, 3, False),
    ("dense", 37, "tanh", 3, 2, "FCF", 2, 2, True),     # uneven: 37 → 18 → 9
    ("dense", 64, "tanh", 4, (4, 2, 2), ("F", "FCF", "F"), 3, 1, True),
    ("conv", 16, "tanh", 3, 2, "FCF", 2, 1, True),
]


@pytest.mark.parametrize(("variant", "depth", "act", "levels", "cf", "relax", "fwd", "bwd", "warm"), TRAIN_CASES)
def test_few_iteration_training_matches_the_reference_loop(tmp_path: Path, solves: list, variant: str, depth: int,
                                                           act: str, levels: int, cf: int | tuple,
                                                           relax: str | tuple, fwd: int, bwd: int,
                                                           warm: bool) -> None:
    """Three steps of one-shot training through mrc's Plan against the hand loop with the reference
    solves: every forward and adjoint iterate of every step, its residual, each step's loss and the
    weights after the last step agree to 1e-12."""
    hier = Hierarchy.of(levels, cf, relax)
    got, want, hand, weights = _train_both(tmp_path, variant, depth, act, _block(hier, fwd, bwd, warm), hier, fwd,
                                           bwd, warm)
    assert [w for w, _, _ in solves] == [w for w, _, _ in hand.iterations]
    assert len(solves) == STEPS * (fwd + bwd)
    for i, ((which, states, res), (_, ref_states, ref_res)) in enumerate(zip(solves, hand.iterations, strict=True)):
        _close(states, ref_states, f"{which} iterate {i} (step {i // (fwd + bwd)})")
        assert res == pytest.approx(ref_res, rel=1e-10, abs=1e-14), (which, i)
    assert got == pytest.approx(want, rel=0, abs=TOL)
    _compare_weights(weights, hand)
