"""MGRIT across ranks (mrc/techniques/mgrit/ranks.py, `distributed layers`) against the one-process solver.

Each rank runs the one-process solver on the whole stack and its own block's solver side by side, phase by
phase, and compares after every iteration: its states (ghost included) with the one-process states of its block,
the residual norms, then the adjoint's λ over its adjoint block, λ_0, the output y_N and the stack's parameter
gradients summed over ranks — all in float64 at 1e-14. The cases cover 2 and 4 ranks, 2 and 3 levels, F and FCF,
even and uneven depth (the adjoint's blocks then shift), a warm start, and a conv stack. A Plan-level check trains
`specs/distributed_layers.mrs` for a few steps on 2 ranks and compares every parameter with one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from gloo_ranks import run_ranks

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-14

# (variant, depth, levels, coarsening, relax, forward iterations, backward iterations)
CASES_2 = [
    ("dense", 16, 2, 4, "FCF", 3, 2),
    ("dense", 19, 3, 2, "F", 3, 3),      # uneven: 19 = 4·4 + 3; the adjoint's blocks shift by 1
    ("dense", 26, 3, 2, "FCF", 2, 2),    # uneven on level 1 (13 = 2·6 + 1)
    ("conv", 9, 2, 2, "FCF", 2, 2),      # uneven: blocks [0:6] [6:9], adjoint [0:5] [5:9]
    ("conv", 9, 3, 2, "F", 2, 1),        # the last block is only the tail [8:9] (no C-point of level 1)
]
CASES_4 = [
    ("dense", 32, 3, 2, "FCF", 2, 2),
    ("dense", 23, 2, 4, "F", 3, 2),      # uneven: 23 = 5·4 + 3; the last rank holds 1 + the tail
    ("dense", 16, 3, 2, "F", 2, 2),      # one coarsest interval per rank
]


def _stack(variant: str, depth: int, seed: int) -> Any:
    from mrc.models.ode_resnet import ConvStep, DenseStep, ResidualStack

    torch.manual_seed(seed)
    width = 5 if variant == "dense" else 2
    layers = [DenseStep(width, "tanh") if variant == "dense" else ConvStep(width, "tanh") for _ in range(depth)]
    stack = ResidualStack(layers, 0.6 / depth).double()
    for layer in stack.layers:
        for p in layer.parameters():
            p.data.mul_(2.0)  # a stack far from the identity: MGRIT needs its iterations
    u0 = torch.randn(3, width, dtype=torch.float64) if variant == "dense" else \
        torch.randn(2, width, 3, 3, dtype=torch.float64)
    return stack, u0


def _iterate(solver: Any) -> list[torch.Tensor]:
    """Every iterate's states (after each whole iteration)."""
    out = []
    while len(solver.residuals) < solver.settings.iters and not solver.converged:
        solver.iterate()
        out.append(solver.states.clone())
    return out


def _rel(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), (a, b)
    return max((abs(x - y) / max(abs(y), 1e-300) for x, y in zip(a, b, strict=True)), default=0.0)


def compare_case(variant: str, depth: int, levels: int, cf: int, relax: str, fwd_iters: int,
                 bwd_iters: int) -> dict[str, float]:
    """One rank's largest differences from the one-process solver in one case (see the module docstring)."""
    from mrc.runtime.world import current
    from mrc.techniques.mgrit import ranks as R
    from mrc.techniques.mgrit.propagate import StackPropagator
    from mrc.techniques.mgrit.solver import MGRIT, Adjoint, Settings, lambdas

    world = current()
    stack, u0 = _stack(variant, depth, seed=depth)
    prop = StackPropagator(stack)
    fs, bs = Settings(levels, cf, relax, fwd_iters), Settings(levels, cf, relax, bwd_iters)
    blocks = R.layer_blocks(depth, fs, world.size)
    assert not isinstance(blocks, str), blocks
    adj = R.adjoint_blocks(depth, fs, blocks)
    (lo, hi), (a, b) = blocks[world.rank], adj[world.rank]
    err: dict[str, float] = {}

    def worst(key: str, value: float) -> None:
        err[key] = max(err.get(key, 0.0), value)

    # forward: a cold solve, then a warm one from its states
    serial, mine = MGRIT(prop, depth, fs), R.rank_forward_solve(prop, depth, fs, blocks, world, u0)
    serial.start(u0)
    warm_full, warm_mine, cold = None, None, []
    for warm in (False, True):
        if warm:
            serial.start(u0, warm_full)
            mine.start(u0, warm_mine)
        ref_iterates, got_iterates = _iterate(serial), _iterate(mine)
        assert len(ref_iterates) == len(got_iterates) == fwd_iters
        for ref, got in zip(ref_iterates, got_iterates, strict=True):
            worst("forward states", float((got - ref[lo:hi + 1]).abs().max()))
        worst("forward residuals", _rel(mine.residuals, serial.residuals))
        worst("output", float((R.last_state(mine, u0) - serial.states[-1]).abs().max()))
        warm_full, warm_mine = serial.states.clone(), mine.states.clone()
        cold = cold if warm else list(serial.residuals)
    states, local = serial.states.clone(), mine.states.clone()

    # adjoint about the final forward states
    g = torch.randn_like(u0)
    ref_adj = MGRIT(Adjoint(prop, states), depth, bs)
    ref_adj.start(g)
    rows, table = R.adjoint_table(depth, fs, blocks, adj, world, local)
    worst("adjoint table", float((table[rows[a:b]] - states[a:b]).abs().max()))
    got_adj = R.rank_adjoint_solve(prop, depth, bs, adj, world, rows, table, g)
    ref_iterates, got_iterates = _iterate(ref_adj), _iterate(got_adj)
    for ref, got in zip(ref_iterates, got_iterates, strict=True):
        worst("adjoint states", float((got.flip(0) - ref.flip(0)[a:b + 1]).abs().max()))
    worst("adjoint residuals", _rel(got_adj.residuals, ref_adj.residuals))
    lam_full, lam = lambdas(ref_adj), R.block_lambdas(got_adj)
    worst("lambda_0", float((R.first_lambda(lam, world) - lam_full[0]).abs().max()))

    # parameter gradients: one process's, and the ranks' blocks summed
    params = [p for layer in stack.layers for p in layer.parameters()]
    prop.param_grads(states, lam_full)
    ref_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    R.block_param_grads(prop, depth, adj, world.rank, rows, table, lam)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    owned = {id(p) for layer in stack.layers[a:b] for p in layer.parameters()}
    assert all((p.grad is not None) == (id(p) in owned) for p in params)
    world.all_reduce(flat)
    worst("gradients", float((flat - torch.cat([r.reshape(-1) for r in ref_grads])).abs().max()))
    # the cases are meant to take their iterations: not converged at the first one
    assert cold[0] > 1e-6 and ref_adj.residuals[0] > 1e-8, (cold, ref_adj.residuals)
    return err


def compare_cases(cases: list[tuple[Any, ...]]) -> list[dict[str, float]]:
    torch.set_default_dtype(torch.float64)
    return [compare_case(*case) for case in cases]


def _check(results: list[list[dict[str, float]]], cases: list[tuple[Any, ...]]) -> None:
    for rank, per_rank in enumerate(results):
        for case, err in zip(cases, per_rank, strict=True):
            bad = {k: v for k, v in err.items() if not v <= TOL}
            assert not bad, f"rank {rank}, case {case}: {bad}"


def test_blocks_and_the_adjoints_shift() -> None:
    from mrc.techniques.mgrit.ranks import Part, adjoint_blocks, adjoint_part, forward_part, layer_blocks
    from mrc.techniques.mgrit.solver import Settings

    s = Settings(3, 2, "F", 1)  # C = 4
    assert layer_blocks(19, s, 2) == ((0, 12), (12, 19))  # 5 intervals: 3 + 2 (the tail of 3 last)
    assert adjoint_blocks(19, s, ((0, 12), (12, 19))) == ((0, 11), (11, 19))  # counted from 19: 3, 7, 11, 15
    assert forward_part(((0, 12), (12, 19)), 1).prev == 0
    assert adjoint_part(19, ((0, 11), (11, 19)), 0) == Part(8, 19, 1, -1)  # reversed time: rank 1 comes first
    assert adjoint_part(19, ((0, 11), (11, 19)), 1) == Part(0, 8, -1, 0)
    assert layer_blocks(16, s, 4) == ((0, 4), (4, 8), (8, 12), (12, 16))
    assert "too few" in layer_blocks(12, s, 4)


def test_one_rank_is_the_one_process_solver() -> None:
    """On a world of one the block is the whole stack: the iterates are the one-process solver's, bit for bit."""
    from mrc.runtime.world import SOLO
    from mrc.techniques.mgrit import ranks as R
    from mrc.techniques.mgrit.propagate import StackPropagator
    from mrc.techniques.mgrit.solver import MGRIT, Settings

    stack, u0 = _stack("dense", 19, seed=1)
    prop = StackPropagator(stack)
    s = Settings(3, 2, "FCF", 3)
    serial = MGRIT(prop, 19, s)
    serial.start(u0)
    mine = R.rank_forward_solve(prop, 19, s, ((0, 19),), SOLO, u0)
    for ref, got in zip(_iterate(serial), _iterate(mine), strict=True):
        assert torch.equal(ref, got)
    assert mine.residuals == serial.residuals


def test_two_ranks_give_the_one_process_iterates() -> None:
    _check(run_ranks(compare_cases, 2, CASES_2), CASES_2)


def test_four_ranks_give_the_one_process_iterates() -> None:
    _check(run_ranks(compare_cases, 4, CASES_4), CASES_4)
