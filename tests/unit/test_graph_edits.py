"""The run follows the edited graph: lowering reads everything from the ops.

Each test compiles a small spec, edits a copy of `compiled.graph` (Pattern.replace / remove),
lowers it with mrc.lower.lower, runs a few steps on the spec's data and compares with a
plain-PyTorch reference of what the EDITED graph says. Each also checks that the edit changes
the run (or, for an edit that keeps the arithmetic, that lowering took the edited form), so a
lowering that ignored the graph would fail it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mrc.api import Compiled, compile_spec
from mrc.ir.graph import Pattern, ScheduleGraph
from mrc.ir.ops import Backward, Forward, Loss, Rule, UpdateGroup, Value
from mrc.lower import lower
from mrc.lower.plan import Plan
from mrc.techniques.brains.ops import Merge, MergeRule
from mrc.techniques.brains.tables import BRAINS as BRAINS_TABLE

STEPS = 6
MU = 0.9
SPEC = """\
model mlp(hidden=[8, 8])
data digits(batch=16, val=0.2)
optimizer sgd(lr=0.05, momentum=0.9)
{extra}
train(steps=6, seed=0, dtype=float64, device=cpu)
"""
TWO = 'partition head = module("head")\npartition body = rest'
SLOW_BODY = 'partition head = module("head")\npartition body = rest { every = 2 }'
BRAINS = "brain a { every = 1 }\nbrain b { every = 2 }\nmerge mean"

State = dict[str, torch.Tensor]


@dataclass
class Spec:
    compiled: Compiled
    init: State

    @property
    def graph(self) -> ScheduleGraph:
        return self.compiled.graph

    def batches(self, n: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
        data = self.compiled.bound.data
        idx = data.batch_indices(0)[:n]
        return [(data.train_x[i].to(torch.float64), data.train_y[i]) for i in idx]

    def model(self) -> torch.nn.Module:
        """A fresh copy of the model at its initial weights."""
        model = copy.deepcopy(self.compiled.bound.model)
        model.load_state_dict(self.init)
        return model

    def partition_of(self) -> dict[str, str]:
        return {name: part for part, info in self.graph.partitions.items() for name in info.params}

    def run(self, graph: ScheduleGraph, steps: int = STEPS) -> tuple[list[State], list[float | None], Plan]:
        """Lower `graph`, run `steps` steps from the initial weights; the parameters after each
        step (each brain's, for brains) and the losses."""
        bound = self.compiled.bound
        bound.model.load_state_dict(self.init)
        plan = lower(graph, bound, steps)
        data = bound.data
        plan.attach(data.train_x.double(), data.train_y, data.val_x.double(), data.val_y)
        after, losses = [], []
        for t, (x, y) in enumerate(self.batches(steps)):
            loss = plan.step(t, x, y)
            losses.append(None if loss is None else float(loss))
            if graph.table(BRAINS_TABLE).replicas:
                after.append({f"{b}/{k}": v for b, s in plan.ctx.replicas.brain_states().items() for k, v in s.items()})
            else:
                after.append({k: v.detach().clone() for k, v in bound.model.named_parameters()})
        return after, losses, plan


def make(tmp_path: Path, extra: str = "") -> Spec:
    path = tmp_path / "edit.mrs"
    path.write_text(SPEC.format(extra=extra))
    compiled = compile_spec(path)
    init = {k: v.detach().clone() for k, v in compiled.bound.model.state_dict().items()}
    return Spec(compiled, init)


def close(a: State, b: State, tol: float = 1e-10) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=tol), (k, (a[k] - b[k]).abs().max().item())


def differs(a: State, b: State, tol: float = 1e-6) -> bool:
    return any((a[k] - b[k]).abs().max().item() > tol for k in a)


def sgd_reference(spec: Spec, lr: Callable[[int, str], float | None], *, smoothing: float = 0.0,
                  steps: int = STEPS) -> tuple[list[State], list[float]]:
    """SGD-momentum by hand: p := μ p + g; θ := θ − lr(t, partition) p, skipping a partition
    at step t where lr is None (no gradient, no momentum step)."""
    model = spec.model()
    part = spec.partition_of()
    bufs: State = {}
    after, losses = [], []
    for t, (x, y) in enumerate(spec.batches(steps)):
        loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
        losses.append(float(loss.detach()))
        named = list(model.named_parameters())
        grads = torch.autograd.grad(loss, [p for _, p in named])
        with torch.no_grad():
            for (name, p), g in zip(named, grads, strict=True):
                h = lr(t, part[name])
                if h is None:
                    continue
                bufs[name] = g.clone() if name not in bufs else MU * bufs[name] + g
                p -= h * bufs[name]
        after.append({k: v.detach().clone() for k, v in model.named_parameters()})
    return after, losses


def own_step(graph: ScheduleGraph, t: int, period: int = STEPS) -> Pattern:
    """Unroll the (only) stage to `period` steps and give step t a copy of its pattern of its
    own, to edit that one step."""
    stage = graph.stage
    assert period % stage.period == 0
    pattern_of = [stage.pattern_of[s % stage.period] for s in range(period)]
    mine = stage.patterns[pattern_of[t]].copy()
    patterns = [*stage.patterns, mine]
    pattern_of[t] = len(patterns) - 1
    for i, p in enumerate(patterns):
        p.steps = tuple(s for s in range(period) if pattern_of[s] == i)
    stage.period, stage.patterns, stage.pattern_of = period, patterns, tuple(pattern_of)
    return mine


def edit_all(graph: ScheduleGraph, kind: type, change: Callable[[Any], Any]) -> int:
    n = 0
    for p in graph.patterns():
        for op in list(p.of_kind(kind)):
            p.replace(op, change(op))
            n += 1
    return n


# ---- (a) the integrator of an update group ------------------------------------------------------


def test_an_update_groups_rule_changed_to_adam_runs_adam(tmp_path: Path) -> None:
    spec = make(tmp_path)
    plain, _, _ = spec.run(spec.graph)
    graph = spec.graph.copy()
    adam = Rule("adam", (("betas", (0.9, 0.999)), ("eps", 1e-8)), ("betas",))
    assert edit_all(graph, UpdateGroup, lambda g: replace(g, rule=adam)) == 1
    graph.verify()
    got, _, _ = spec.run(graph)
    model = spec.model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05, betas=(0.9, 0.999), eps=1e-8)
    for t, (x, y) in enumerate(spec.batches()):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        close(got[t], dict(model.named_parameters()))
    assert differs(got[-1], plain[-1])
    # and the unedited graph is SGD-momentum
    ref, _ = sgd_reference(spec, lambda t, n: 0.05)
    close(plain[-1], ref[-1])


# ---- (b) removing a step's backward and its update ----------------------------------------------


def test_a_step_without_its_backward_and_update_moves_nothing(tmp_path: Path) -> None:
    spec = make(tmp_path, TWO)
    plain, _, _ = spec.run(spec.graph)
    graph = spec.graph.copy()
    p = own_step(graph, 2)
    for op in p.of_kind((Backward, UpdateGroup)):
        p.remove(op)
    graph.verify()
    got, losses, _ = spec.run(graph)
    close(got[2], got[1], tol=0)  # step 2 moved nothing
    assert losses[2] is not None  # its forward and loss still ran
    ref, _ = sgd_reference(spec, lambda t, n: None if t == 2 else 0.05)
    for t in range(STEPS):
        close(got[t], ref[t])
    assert differs(got[-1], plain[-1]) and differs(plain[2], plain[1])


def test_a_step_that_drops_one_partitions_update_leaves_it_in_place(tmp_path: Path) -> None:
    spec = make(tmp_path, TWO)
    plain, _, _ = spec.run(spec.graph)
    graph = spec.graph.copy()
    p = own_step(graph, 3)
    (bwd,) = p.of_kind(Backward)
    (group,) = p.of_kind(UpdateGroup)
    assert group.partitions == ("head", "body")
    p.replace(bwd, replace(bwd, wrt=("head",)))
    p.replace(group, replace(group, name="head", partitions=("head",), lrs=group.lrs[:1]))
    graph.verify()
    got, _, _ = spec.run(graph)
    body = spec.graph.partitions["body"].params
    head = spec.graph.partitions["head"].params
    assert all(torch.equal(got[3][n], got[2][n]) for n in body)
    assert all(not torch.equal(got[3][n], got[2][n]) for n in head)
    ref, _ = sgd_reference(spec, lambda t, n: None if (t, n) == (3, "body") else 0.05)
    for t in range(STEPS):
        close(got[t], ref[t])
    assert differs(got[-1], plain[-1])


# ---- (c) learning rates -------------------------------------------------------------------------


def test_an_update_groups_lr_sets_the_step_size(tmp_path: Path) -> None:
    spec = make(tmp_path)
    plain, _, _ = spec.run(spec.graph)
    graph = spec.graph.copy()
    p = own_step(graph, 3)
    (group,) = p.of_kind(UpdateGroup)
    p.replace(group, replace(group, lrs=(0.5,)))
    graph.verify()
    got, _, _ = spec.run(graph)
    ref, _ = sgd_reference(spec, lambda t, n: 0.5 if t == 3 else 0.05)
    for t in range(STEPS):
        close(got[t], ref[t])
    close(got[2], plain[2], tol=0)
    assert differs(got[3], plain[3])
    # every step at another rate
    graph = spec.graph.copy()
    edit_all(graph, UpdateGroup, lambda g: replace(g, lrs=(0.01,)))
    got, _, _ = spec.run(graph)
    close(got[-1], sgd_reference(spec, lambda t, n: 0.01)[0][-1])


def test_each_partitions_lr_in_a_group_is_its_own(tmp_path: Path) -> None:
    spec = make(tmp_path, TWO)
    graph = spec.graph.copy()
    edit_all(graph, UpdateGroup, lambda g: replace(g, lrs=(0.2, 0.01)))  # head, body
    got, _, _ = spec.run(graph)
    ref, _ = sgd_reference(spec, lambda t, n: {"head": 0.2, "body": 0.01}[n])
    close(got[-1], ref[-1])


def test_the_reported_learning_rate_is_the_one_that_runs(tmp_path: Path) -> None:
    spec = make(tmp_path)
    graph = spec.graph.copy()
    p = own_step(graph, 3)
    (group,) = p.of_kind(UpdateGroup)
    p.replace(group, replace(group, lrs=(0.5,)))
    _, _, plan = spec.run(graph)
    assert plan.learning_rates(2) == {"all": pytest.approx(0.05)}
    assert plan.learning_rates(3) == {"all": pytest.approx(0.5)}


# ---- (d), (e) brains ----------------------------------------------------------------------------


def brains_reference(spec: Spec, lrs: dict[str, float], merge: MergeRule,
                     steps: int = STEPS) -> list[State]:
    """Brain a every step, b every 2 steps (SGD-momentum at their own lrs on the shared batch);
    after step t the brains whose time is t + 1 are merged by `merge` (mean, weighted, best)."""
    every = {"a": 1, "b": 2}
    models = {b: spec.model() for b in every}
    bufs: dict[str, State] = {b: {} for b in every}
    data = spec.compiled.bound.data
    after = []
    for t, (x, y) in enumerate(spec.batches(steps)):
        for b, k in every.items():
            if t % k:
                continue
            model = models[b]
            loss = F.cross_entropy(model(x), y)
            named = list(model.named_parameters())
            grads = torch.autograd.grad(loss, [p for _, p in named])
            with torch.no_grad():
                for (name, p), g in zip(named, grads, strict=True):
                    bufs[b][name] = g.clone() if name not in bufs[b] else MU * bufs[b][name] + g
                    p -= lrs[b] * bufs[b][name]
        arrived = [b for b, k in every.items() if (t + 1) % k == 0]
        if len(arrived) >= 2:
            states = [models[b].state_dict() for b in arrived]
            if merge.rule == "best":
                with torch.no_grad():
                    scores = [float(F.cross_entropy(models[b](data.val_x.double()), data.val_y)) for b in arrived]
                state = {k: v.clone() for k, v in states[scores.index(min(scores))].items()}
            else:
                w = list(merge.weights) if merge.rule == "weighted" else [1.0] * len(arrived)
                state = {k: sum(wi / sum(w) * s[k] for wi, s in zip(w, states, strict=True)) for k in states[0]}
            for b in arrived:
                models[b].load_state_dict(state)
        after.append({f"{b}/{k}": v.detach().clone() for b, m in models.items() for k, v in m.state_dict().items()})
    return after


@pytest.mark.parametrize("merge", [MergeRule("weighted", (1.0, 3.0)), MergeRule("best", metric="val_loss")],
                         ids=["weighted", "best"])
def test_a_changed_merge_rule_merges_by_it(tmp_path: Path, merge: MergeRule) -> None:
    spec = make(tmp_path, BRAINS)
    lrs = {"a": 0.05, "b": 0.1}
    plain, _, _ = spec.run(spec.graph)
    for t in range(STEPS):
        close(plain[t], brains_reference(spec, lrs, MergeRule("mean"))[t])
    graph = spec.graph.copy()
    assert edit_all(graph, Merge, lambda m: replace(m, merge=merge)) == 1
    got, _, _ = spec.run(graph)
    ref = brains_reference(spec, lrs, merge)
    for t in range(STEPS):
        close(got[t], ref[t])
    assert differs(got[-1], plain[-1])
    assert not differs({k[2:]: v for k, v in got[1].items() if k.startswith("a/")},
                       {k[2:]: v for k, v in got[1].items() if k.startswith("b/")}, tol=0)


def test_a_brains_lr_on_its_update_ops_sets_its_step(tmp_path: Path) -> None:
    spec = make(tmp_path, BRAINS)
    plain, _, _ = spec.run(spec.graph)
    graph = spec.graph.copy()
    per = len(graph.partitions)

    def slower_b(g: UpdateGroup) -> UpdateGroup:
        if "b" not in g.scope.replica:
            return g
        i = g.scope.replica.index("b")
        return replace(g, lrs=(*g.lrs[:i * per], *(0.3,) * per, *g.lrs[(i + 1) * per:]))

    edit_all(graph, UpdateGroup, slower_b)
    assert [g.lrs for g in graph.ops() if isinstance(g, UpdateGroup) and "b" in g.scope.replica] == [(0.05, 0.3)]
    got, _, _ = spec.run(graph)
    ref = brains_reference(spec, {"a": 0.05, "b": 0.3}, MergeRule("mean"))
    for t in range(STEPS):
        close(got[t], ref[t])
    assert differs(got[0], plain[0])


# ---- (f) the no-grad prefix of freeze-prefix ----------------------------------------------------


def split(p: Pattern) -> tuple[Forward, Forward]:
    pre, post = p.of_kind(Forward)
    assert (pre.start, pre.grad) == (0, ()) and post.start == pre.stop
    return pre, post


def test_a_moved_no_grad_cut_runs_where_the_graph_says(tmp_path: Path) -> None:
    spec = make(tmp_path, SLOW_BODY)  # odd steps: model[:2] no_grad, model[2:] grad {head}
    plain, _, plan = spec.run(spec.graph)
    assert set(plan.ctx.segments) == {("", 2)}
    ref, _ = sgd_reference(spec, lambda t, n: 0.05 if n == "head" else (0.1 if t % 2 == 0 else None))
    close(plain[-1], ref[-1])
    graph = spec.graph.copy()
    p = graph.stage.at(1)
    pre, post = split(p)
    assert pre.stop == 2
    p.replace(pre, replace(pre, stop=1))
    p.replace(post, replace(post, start=1))
    graph.verify()
    got, _, plan = spec.run(graph)
    # the arithmetic is the same (nothing before the head is differentiated), the cut is not
    assert set(plan.ctx.segments) == {("", 1)}
    for t in range(STEPS):
        close(got[t], ref[t])


def test_a_cut_that_freezes_more_keeps_those_layers_in_place(tmp_path: Path) -> None:
    extra = ('partition first = depth(0, 1) { every = 2 }\npartition second = depth(1, 2)\n'
             'partition head = rest')
    spec = make(tmp_path, extra)  # odd steps: model[:1] no_grad, model[1:] grad {second, head}
    plain, _, _ = spec.run(spec.graph)
    graph = spec.graph.copy()
    p = graph.stage.at(1)
    pre, post = split(p)
    (bwd,) = p.of_kind(Backward)
    (group,) = p.of_kind(UpdateGroup)
    assert (pre.stop, post.grad, group.partitions) == (1, ("second", "head"), ("second", "head"))
    p.replace(pre, replace(pre, stop=2))
    p.replace(post, replace(post, start=2, grad=("head",)))
    p.replace(bwd, replace(bwd, wrt=("head",)))
    p.replace(group, replace(group, name="head", partitions=("head",), lrs=(0.05,)))
    graph.verify()
    got, _, plan = spec.run(graph)
    assert set(plan.ctx.segments) == {("", 2)}
    ref, _ = sgd_reference(spec, lambda t, n: {"first": 0.1 if t % 2 == 0 else None,
                                               "second": 0.05 if t % 2 == 0 else None, "head": 0.05}[n])
    for t in range(STEPS):
        close(got[t], ref[t])
    assert differs(got[-1], plain[-1])


def test_removing_the_prefix_feeds_the_whole_model(tmp_path: Path) -> None:
    spec = make(tmp_path, SLOW_BODY)
    plain, _, _ = spec.run(spec.graph)
    graph = spec.graph.copy()
    p = graph.stage.at(1)
    pre, post = split(p)
    (bwd,) = p.of_kind(Backward)
    (group,) = p.of_kind(UpdateGroup)
    batch = p.preds(pre)[0]
    outs = p.outputs(post)
    p.remove(pre)
    p.remove(post)
    whole = p.add(Forward(post.scope, 0, None, ("head", "body")), [(batch, Value("batch"))])
    for dst, v in outs:
        p.connect(whole, dst, v)
    p.replace(bwd, replace(bwd, wrt=("head", "body")))
    p.replace(group, replace(group, name="head+body", partitions=("head", "body"), lrs=(0.05, 0.1)))
    graph.verify()
    got, _, plan = spec.run(graph)
    assert plan.ctx.segments == {}
    ref, _ = sgd_reference(spec, lambda t, n: {"head": 0.05, "body": 0.1}[n])
    for t in range(STEPS):
        close(got[t], ref[t])
    assert differs(got[1], plain[1])


# ---- (g) the loss ---------------------------------------------------------------------------


def test_label_smoothing_on_the_loss_op_sets_the_loss(tmp_path: Path) -> None:
    spec = make(tmp_path)
    plain, plain_losses, _ = spec.run(spec.graph)
    graph = spec.graph.copy()
    assert edit_all(graph, Loss, lambda op: replace(op, label_smoothing=0.2)) == 1
    assert "loss cross_entropy(label_smoothing=0.2)" in graph.to_text()
    got, losses, _ = spec.run(graph)
    ref, ref_losses = sgd_reference(spec, lambda t, n: 0.05, smoothing=0.2)
    assert losses == pytest.approx(ref_losses, abs=1e-12)
    for t in range(STEPS):
        close(got[t], ref[t])
    assert losses[0] != pytest.approx(plain_losses[0], abs=1e-6)
    assert differs(got[-1], plain[-1])
