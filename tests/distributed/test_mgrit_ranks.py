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
SPEC = ROOT / "specs" / "distributed_layers.mrs"
STEPS = 4

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
    from mrc.techniques.mgrit.grid import Settings, adjoint_blocks, layer_blocks
    from mrc.techniques.mgrit.propagate import StackPropagator
    from mrc.techniques.mgrit.solver import MGRIT, Adjoint, lambdas

    world = current()
    stack, u0 = _stack(variant, depth, seed=depth)
    prop = StackPropagator(stack)
    fs, bs = Settings(levels, cf, relax, fwd_iters), Settings(levels, cf, relax, bwd_iters)
    blocks = layer_blocks(depth, fs, world.size)
    assert not isinstance(blocks, str), blocks
    adj = adjoint_blocks(depth, fs, blocks)
    (lo, hi), (a, b) = blocks[world.rank], adj[world.rank]
    err: dict[str, float] = {}

    def worst(key: str, value: float) -> None:
        err[key] = max(err.get(key, 0.0), value if value == value else float("inf"))  # NaN: the worst

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
    # every uninitialised tensor (torch.empty) is NaN: a rank's adjoint leaves σ'(z) of the layers outside its
    # part unmade, and a step that read one would show as NaN here
    torch.use_deterministic_algorithms(True)
    assert torch.utils.deterministic.fill_uninitialized_memory
    return [compare_case(*case) for case in cases]


def _check(results: list[list[dict[str, float]]], cases: list[tuple[Any, ...]]) -> None:
    for rank, per_rank in enumerate(results):
        for case, err in zip(cases, per_rank, strict=True):
            bad = {k: v for k, v in err.items() if not v <= TOL}
            assert not bad, f"rank {rank}, case {case}: {bad}"


def test_blocks_and_the_adjoints_shift() -> None:
    from mrc.techniques.mgrit.grid import Settings, adjoint_blocks, layer_blocks
    from mrc.techniques.mgrit.ranks import Part, adjoint_part, forward_part

    s = Settings(3, 2, "F", 1)  # C = 4
    assert layer_blocks(19, s, 2) == ((0, 12), (12, 19))  # 5 intervals: 3 + 2 (the tail of 3 last)
    assert adjoint_blocks(19, s, ((0, 12), (12, 19))) == ((0, 11), (11, 19))  # counted from 19: 3, 7, 11, 15
    assert forward_part(((0, 12), (12, 19)), 1).prev == 0
    assert adjoint_part(19, ((0, 11), (11, 19)), 0) == Part(8, 19, 1, -1)  # reversed time: rank 1 comes first
    assert adjoint_part(19, ((0, 11), (11, 19)), 1) == Part(0, 8, -1, 0)
    assert layer_blocks(16, s, 4) == ((0, 4), (4, 8), (8, 12), (12, 16))
    assert "too few" in layer_blocks(12, s, 4)


def test_the_graph_shows_the_blocks_and_sums_the_stacks_gradients() -> None:
    """`mrc graph --nproc 4`: every phase op names its solve's blocks, a `mgrit_sum_grads` stands between the
    backward and the update, the placed graph round-trips through JSON; too many ranks is a diagnostic."""
    import pytest

    from mrc.api import compile_spec
    from mrc.diagnostics import CompileError
    from mrc.ir.graph import ScheduleGraph
    from mrc.techniques.mgrit.ops import SolvePhase, SumStackGrads

    graph = compile_spec(SPEC, ["train.device=cpu"], world=4).graph
    p = graph.stage.patterns[0]
    phases = p.of_kind(SolvePhase)
    fwd, adj = ((0, 8), (8, 16), (16, 24), (24, 30)), ((0, 6), (6, 14), (14, 22), (22, 30))
    assert phases and all(o.blocks == (fwd if o.solve == "forward" else adj) for o in phases)
    (total,) = p.of_kind(SumStackGrads)
    assert (total.stack, total.grads, total.world) == ("stack", ("all",), 4)
    back = next(o for o in p.ops() if o.kind == "backward")
    update = next(o for o in p.ops() if o.kind == "update_group")
    assert [v.kind for s, v in p.inputs(total) if s == back] == ["grads"]
    assert [v.kind for s, v in p.inputs(update) if s == total] == ["grads"]
    assert not any(v.kind == "grads" for s, v in p.inputs(update) if s == back)
    text = graph.to_text()
    assert "(adjoint) on ranks 0..3 blocks [0:6] [6:14] [14:22] [22:30]" in text
    assert "mgrit_sum_grads stack layers of {all} over 4 ranks" in text
    assert ScheduleGraph.from_json(graph.to_json()).to_text() == text
    with pytest.raises(CompileError, match="too few for 9 ranks"):
        compile_spec(SPEC, ["train.device=cpu"], world=9)


def test_one_rank_is_the_one_process_solver() -> None:
    """On a world of one the block is the whole stack: the iterates are the one-process solver's, bit for bit."""
    from mrc.runtime.world import SOLO
    from mrc.techniques.mgrit import ranks as R
    from mrc.techniques.mgrit.grid import Settings
    from mrc.techniques.mgrit.propagate import StackPropagator
    from mrc.techniques.mgrit.solver import MGRIT

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


def train_spec(steps: int, at: int, resume: bool) -> dict[str, Any]:
    """`steps` steps of specs/distributed_layers.mrs at the Plan level on this process's world. After `at`
    steps the plan is synchronized and its state kept (as a checkpoint is); with `resume`, a fresh plan loaded
    from that state and the model's parameters runs the rest (as a resumed run does). Returns the initial and
    final parameters, the losses, the MGRIT metrics, the kept warm starts and the last step's trace lines of
    the MGRIT ops."""
    import io

    from mrc.api import compile_spec
    from mrc.lower import lower
    from mrc.runtime.world import current

    world = current()
    compiled = compile_spec(SPEC, ["train.device=cpu"], world=world.size)
    initial = {n: p.detach().clone() for n, p in compiled.bound.graph_module.named_parameters()}
    plan = lower(compiled.graph, compiled.bound, steps)
    data = compiled.bound.data
    batches = data.batch_indices(0)
    losses, saved = [], {}
    for t in range(steps):
        if t == at:
            plan.synchronize()
            state, model = plan.state_dict(), compiled.bound.model.state_dict()  # what a checkpoint holds
            saved = {k: v.clone() for k, v in state["state"].items()}
            if resume:
                compiled = compile_spec(SPEC, ["train.device=cpu"], world=world.size)
                plan = lower(compiled.graph, compiled.bound, steps)
                compiled.bound.model.load_state_dict(model)
                plan.load_state_dict(state)
        if t == steps - 1:
            plan.trace = io.StringIO()
        idx = batches[t]
        losses.append(float(plan.step(t, data.train_x[idx].to(torch.float64), data.train_y[idx])))
    trace = plan.trace.getvalue() if plan.trace is not None else ""
    return {"initial": initial, "losses": losses, "mgrit": plan.technique_metrics()["mgrit"], "saved": saved,
            "params": {n: p.detach().clone() for n, p in compiled.bound.graph_module.named_parameters()},
            "trace": [line for line in trace.splitlines() if "mgrit_" in line]}


def test_training_on_two_ranks_equals_one_process() -> None:
    """Four steps of specs/distributed_layers.mrs (30 layers: uneven, so the adjoint's blocks shift) on 2 ranks,
    resumed after two from a synchronized state, give one process's parameters, losses and residuals; the state
    a checkpoint keeps holds one process's whole warm starts."""
    one = train_spec(STEPS, 2, resume=False)
    params0 = one["params"]
    assert any(n.startswith("stack.") for n in params0) and any(not n.startswith("stack.") for n in params0)
    # the run moved: a test of equal parameters is not a test of nothing
    assert max((params0[n] - one["initial"][n]).abs().max().item() for n in params0) > 1e-4
    for rank, run in enumerate(run_ranks(train_spec, 2, STEPS, 2, True)):
        for name, p in run["params"].items():
            assert (p - params0[name]).abs().max().item() <= 1e-12, (rank, name)
        assert max(abs(a - b) for a, b in zip(run["losses"], one["losses"], strict=True)) <= 1e-12
        for which in ("forward", "adjoint"):
            assert _rel(run["mgrit"]["stack"][which], one["mgrit"]["stack"][which]) <= 1e-12
        assert run["saved"].keys() == one["saved"].keys() and run["saved"]
        for key, value in run["saved"].items():
            assert (value - one["saved"][key]).abs().max().item() <= 1e-12, key
        # the phase ops trace as they run, as in one process; the sum of the stack's gradients follows them
        assert [line for line in run["trace"] if "mgrit_sum_grads" not in line] == one["trace"] != []
        assert run["trace"][-1].startswith(f"{STEPS - 1} mgrit_sum_grads.stack.all mgrit_sum_grads")


def train_and_resume(out: str) -> dict[str, Any]:
    """Through mrc.api.train: 6 steps of the spec (evaluations on the way, a checkpoint at the pause), then a
    resumed run to step 9 from that checkpoint."""
    import mrc.api as mrc

    settings = ["train.eval_every=3", "train.log_every=1"]
    first = mrc.train(SPEC, out=out, stop_at=6, overrides=settings, tensorboard=False)
    last = mrc.train(SPEC, out=out, resume=out, stop_at=9, overrides=settings, tensorboard=False)
    return {"params": {k: v.detach().clone() for k, v in last.model.state_dict().items()},
            "paused": first.status,
            "losses": [(m["step"], m["loss"]) for m in first.metrics if "loss" in m]
            + [(m["step"], m["loss"]) for m in last.metrics if "loss" in m and m["step"] > 6],
            "val_acc": last.summary["val_acc"]}


def test_a_run_paused_and_resumed_on_two_ranks_equals_one_process(tmp_path: Path) -> None:
    """The trainer on 2 ranks (rank 0 writes; evaluations and the checkpoint after a synchronize) gives one
    process's parameters, logged losses and accuracy, across a pause and a resume."""
    one = train_and_resume(str(tmp_path / "one"))
    ranks = run_ranks(train_and_resume, 2, str(tmp_path / "two"))
    assert one["paused"] == "paused" and [s for s, _ in one["losses"]] == list(range(1, 10))
    for run in ranks:
        for name, p in run["params"].items():
            assert (p - one["params"][name]).abs().max().item() <= 1e-12, name
        assert [s for s, _ in run["losses"]] == [s for s, _ in one["losses"]]
        assert max(abs(a - b) for (_, a), (_, b) in zip(run["losses"], one["losses"], strict=True)) <= 1e-12
        assert run["val_acc"] == one["val_acc"]
