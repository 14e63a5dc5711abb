"""The run follows a field edited on an op: each value a pass or the expansion decided lives on the
ops, and lowering reads it from there, never from the graph's side tables.

Each test compiles a small spec, edits one field on the ops of a copy of its graph (the drift
interval k, a random subset's fraction, a module's τ, an MGRIT solve's iterations and warm start),
lowers and runs it, and compares with a run of the spec compiled with that setting (or, for the
drift interval, which no spec can set apart from the rate, with a reference written from the
seed's equations). Each also checks that the edit changed the run, so a lowering that read the
setting anywhere but the op would fail.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mrc.api import Compiled, compile_spec
from mrc.ir.graph import ScheduleGraph
from mrc.ir.ops import UpdateGroup
from mrc.lower import lower
from mrc.techniques.mgrit.ops import SolvePhase
from mrc.techniques.modules.ops import LocalLoss
from mrc.techniques.multirate.ops import Drift
from mrc.techniques.random_subsets.ops import Resample

State = dict[str, torch.Tensor]


def compiled(tmp_path: Path, text: str, name: str = "spec") -> Compiled:
    path = tmp_path / f"{name}.mrs"
    path.write_text(text)
    return compile_spec(path)


def run(spec: Compiled, steps: int, graph: ScheduleGraph | None = None) -> State:
    """Lower `graph` (default: the spec's own) and run its first `steps` steps on the spec's
    data from the initial weights; the final model's parameters."""
    bound = spec.bound
    plan = lower(graph if graph is not None else spec.graph, bound, steps)
    data = bound.data
    dtype = next(bound.model.parameters()).dtype
    plan.attach(data.train_x.to(dtype), data.train_y, data.val_x.to(dtype), data.val_y)
    for t, i in enumerate(data.batch_indices(0)[:steps]):
        plan.step(t, data.train_x[i].to(dtype), data.train_y[i])
    plan.finish()
    return {k: v.detach().clone() for k, v in plan.final_model().named_parameters()}


def edit(graph: ScheduleGraph, kind: type | tuple[type, ...], change: Any) -> int:
    """Replace every op of `kind` in every pattern by `change(op)`; how many were edited."""
    n = 0
    for p in graph.patterns():
        for op in list(p.of_kind(kind)):
            new = change(op)
            if new is not op:
                p.replace(op, new)
                n += 1
    return n


def same(a: State, b: State, tol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=tol), (k, (a[k] - b[k]).abs().max().item())


def differs(a: State, b: State) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


# ---- drift: the interval k on the update group (and its drift ops) ----------------------------


DRIFT = """\
model mlp(hidden=[8])
data digits(batch=16, val=0.2)
optimizer sgd(lr=0.05, momentum=0.9)
partition head = module("head")
partition body = rest { every = 2; drift = linear }
train(steps=6, seed=0, dtype=float64)
"""


def drift_reference(spec: Compiled, init: State, k: int, steps: int) -> State:
    """The seed's linear drift by hand: `head` takes SGD-momentum steps at h = 0.05 every step;
    `body` takes its momentum step on even steps at k_rate·h = 0.1 (rate 2), and moves by 1/k
    of it on every step (the update step included)."""
    import copy

    model = copy.deepcopy(spec.bound.model)
    model.load_state_dict(init)
    head = set(spec.graph.partitions["head"].params)
    data = spec.bound.data
    bufs: State = {}
    for t, i in enumerate(data.batch_indices(0)[:steps]):
        x, y = data.train_x[i].double(), data.train_y[i]
        named = list(model.named_parameters())
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), [p for _, p in named])
        with torch.no_grad():
            for (name, p), g in zip(named, grads, strict=True):
                if name in head:
                    bufs[name] = g.clone() if name not in bufs else 0.9 * bufs[name] + g
                    p -= 0.05 * bufs[name]
                    continue
                if t % 2 == 0:
                    bufs[name] = g.clone() if name not in bufs else 0.9 * bufs[name] + g
                p -= (0.1 / k) * bufs[name]
    return {k_: v.detach().clone() for k_, v in model.named_parameters()}


def test_the_drift_interval_is_read_from_the_update_group_and_drift_ops(tmp_path: Path) -> None:
    spec = compiled(tmp_path, DRIFT)
    init = {k: v.detach().clone() for k, v in spec.bound.model.state_dict().items()}
    plain = run(spec, 6)
    graph = spec.graph.copy()

    def four(op: Any) -> Any:
        if isinstance(op, Drift):
            return replace(op, every=4)
        if op.intervals:
            return replace(op, intervals=tuple((n, 4) for n, _ in op.intervals))
        return op
    assert edit(graph, (UpdateGroup, Drift), four) >= 2
    graph.verify()
    spec.bound.model.load_state_dict(init)
    got = run(spec, 6, graph)
    same(plain, drift_reference(spec, init, 2, 6), 1e-12)  # the reference is the spec's run
    same(got, drift_reference(spec, init, 4, 6), 1e-12)
    assert differs(got, plain)


# ---- random subsets: the draw on the resample ops ---------------------------------------------


SUBSETS = """\
model mlp(hidden=[16])
data digits(batch=16, val=0.2)
optimizer sgd(lr=0.05, momentum=0.9)
partition subset = random({fraction}, per={per}, of=weight - module("head")) {{ every = 3 }}
partition others = rest
train(steps=7, seed=0)
"""


def test_the_random_subset_draw_is_read_from_the_resample_ops(tmp_path: Path) -> None:
    spec = compiled(tmp_path, SUBSETS.format(fraction=0.1, per="tensor"), "a")
    plain = run(spec, 7)
    graph = spec.graph.copy()
    assert edit(graph, Resample, lambda op: replace(op, fraction=0.4, per="global")) >= 1
    graph.verify()
    got = run(compiled(tmp_path, SUBSETS.format(fraction=0.1, per="tensor"), "b"), 7, graph)
    want = run(compiled(tmp_path, SUBSETS.format(fraction=0.4, per="global"), "c"), 7)
    same(got, want)
    assert differs(got, plain)


# ---- module-wise: τ on the local loss ----------------------------------------------------------


MODULES = """\
model resnet(depth=8, width=4)
data synthetic(shape=[3,8,8], classes=4, samples=40, batch=8)
optimizer sgd(lr=0.1, momentum=0.9)
train(steps=4, seed=0, dtype=float64, kernels="torch.optim")
modules {{ split = equal(3); aux = conv(width=4); transport = fixed(tau={tau}); regime = parallel }}
"""


def test_tau_is_read_from_the_local_loss(tmp_path: Path) -> None:
    spec = compiled(tmp_path, MODULES.format(tau=0.5), "a")
    plain = run(spec, 4)
    graph = spec.graph.copy()
    assert edit(graph, LocalLoss, lambda op: replace(op, tau=0.05)) >= 2
    graph.verify()
    got = run(compiled(tmp_path, MODULES.format(tau=0.5), "b"), 4, graph)
    want = run(compiled(tmp_path, MODULES.format(tau=0.05), "c"), 4)
    same(got, want)
    assert differs(got, plain)


# ---- MGRIT: the solve's iterations and settings on its phase ops -------------------------------


MGRIT = """\
model ode_resnet(width=4, depth=16, h=0.1)
data levelsets(batch=8)
optimizer sgd(lr=0.1)
train(steps=3, seed=0, dtype=float64, kernels="torch.optim")
mgrit "stack" {{ levels = 2; coarsening = 4; forward_iters = {iters}; backward_iters = 1; warm_start = {warm} }}
"""


def test_an_mgrit_solve_runs_the_iterations_its_ops_hold(tmp_path: Path) -> None:
    spec = compiled(tmp_path, MGRIT.format(iters=2, warm="false"), "a")
    plain = run(spec, 3)
    graph = spec.graph.copy()
    dropped = 0
    for p in graph.patterns():
        for op in list(p.of_kind(SolvePhase)):
            if op.solve == "forward" and op.scope.iteration == 1:
                p.remove(op)
                dropped += 1
    assert dropped
    got = run(compiled(tmp_path, MGRIT.format(iters=2, warm="false"), "b"), 3, graph)
    want = run(compiled(tmp_path, MGRIT.format(iters=1, warm="false"), "c"), 3)
    same(got, want)
    assert differs(got, plain)


@pytest.mark.parametrize("guess", ["previous", "coarse"])
def test_an_mgrit_solve_takes_its_warm_start_from_its_ops(tmp_path: Path, guess: str) -> None:
    spec = compiled(tmp_path, MGRIT.format(iters=1, warm="false"), "a")
    plain = run(spec, 3)
    graph = spec.graph.copy()
    warm = lambda op: replace(op, settings=replace(op.settings, warm_start=guess))  # noqa: E731
    assert edit(graph, SolvePhase, warm) >= 2
    got = run(compiled(tmp_path, MGRIT.format(iters=1, warm="false"), "b"), 3, graph)
    want = run(compiled(tmp_path, MGRIT.format(iters=1, warm=guess), "c"), 3)
    same(got, want)
    assert differs(got, plain)


def test_an_mgrit_solve_takes_its_buffer_layers_from_its_ops(tmp_path: Path) -> None:
    spec = compiled(tmp_path, MGRIT.format(iters=1, warm="false"), "a")
    plain = run(spec, 3)
    graph = spec.graph.copy()
    assert edit(graph, SolvePhase, lambda op: replace(op, settings=replace(op.settings, buffer=2))) >= 2
    got = run(compiled(tmp_path, MGRIT.format(iters=1, warm="false"), "b"), 3, graph)
    want = run(compiled(tmp_path, MGRIT.format(iters=1, warm="false; buffer = 2"), "c"), 3)
    same(got, want)
    assert differs(got, plain)
