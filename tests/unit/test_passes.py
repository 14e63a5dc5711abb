"""Passes on hand-built multi-step schedule graphs (IR version 2), the pass manager, and
`mrc graph`'s pass options (--passes, --after, --print-after, --time-passes)."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from mrc.passes import DEFAULT_PIPELINE, PASSES, Pass
from mrc.passes.freeze_prefix import FreezePrefix
from mrc.passes.fuse_drift import FuseDrift
from mrc.passes.group_updates import GroupUpdates
from mrc.passes.prune_gradients import PruneGradients
from mrc.passes.select_kernels import SelectKernels

from mrc.cli import main
from mrc.ir.graph import PartitionInfo, Pattern, ScheduleGraph, Stage
from mrc.ir.ops import (
    EMPTY,
    Backward,
    Batch,
    Forward,
    GraphError,
    Loss,
    Op,
    Rule,
    Scope,
    Update,
    UpdateGroup,
    Value,
)
from mrc.passmanager import PassError, PassManager, parse_pipeline
from mrc.target import Target
from mrc.techniques.multirate.ops import Drift

SGD = Rule("sgd", (("momentum", 0.9),), ("momentum",))
ADAM = Rule("adam", (), ())
LR = 0.1


def naive(period: int, parts: dict[str, tuple[int, Rule]], *, drift: tuple[str, ...] = (),
          literal: bool = False, layers: tuple[str, ...] | None = None,
          random: tuple[str, ...] = ()) -> ScheduleGraph:
    """The naive schedule as mrc.schedule builds it: every step differentiates every partition;
    partition `name` (every, rule) updates on steps divisible by `every`, at lr × every; a
    partition in `drift` (every > 1) is held and drifts by 1/every after the step's updates.
    `literal`: multirate(first_fast_gradient = after_slow) — slow non-drifting partitions update
    in phase 0, the others in phase 1 after a second forward. Steps that start the same
    intervals share one Pattern. Layers: the partitions' names (param `n.weight` is in layer n)."""
    names = tuple(parts)

    def drifts(n: str) -> bool:
        return n in drift and parts[n][0] > 1

    def expand(t: int) -> Pattern:
        p = Pattern()
        moving = [n for n, (every, _) in parts.items() if t % every == 0 or n in random]
        slow = [n for n in moving if parts[n][0] > 1 and not drifts(n) and n not in random]
        phases = [slow, [n for n in moving if n not in slow]] if literal and slow and len(slow) < len(moving) \
            else [moving]
        batch = p.add(Batch())
        last: list[Op] = []
        for phase, members in enumerate(phases):
            fwd = p.add(Forward(EMPTY, 0, None, names, phase), [(batch, Value("batch")), *p.after(last)])
            loss = p.add(Loss(EMPTY, "cross_entropy", 0.0, (), phase),
                         [(fwd, Value("logits")), (batch, Value("batch"))])
            bwd = p.add(Backward(EMPTY, names, "autograd", 0.0, phase), [(loss, Value("loss"))])
            last = [p.add(Update(EMPTY, n, parts[n][1], LR * (1 if n in random else parts[n][0]), drifts(n), phase,
                                 parts[n][0]),
                          [(bwd, Value("grads", (n,)))]) for n in members]
        tail = list(last)
        for n in names:
            if drifts(n):
                tail.append(p.add(Drift(EMPTY, n, parts[n][0]), p.after(last)))
        return p

    index: dict[tuple[bool, ...], int] = {}
    patterns: list[Pattern] = []
    pattern_of: list[int] = []
    for t in range(period):
        key = tuple(t % every == 0 for every, _ in parts.values())
        if key not in index:
            index[key] = len(patterns)
            patterns.append(expand(t))
        pattern_of.append(index[key])
    for i, p in enumerate(patterns):
        p.steps = tuple(t for t in range(period) if pattern_of[t] == i)
    table = {n: PartitionInfo((f"{n}.weight", f"{n}.bias"), 10, every, "linear" if drifts(n) else "none",
                              "random(0.1)" if n in random else "", 0.1 if n in random else 0.0,
                              "tensor" if n in random else "")
             for n, (every, _) in parts.items()}
    graph = ScheduleGraph([Stage("train", period, patterns, tuple(pattern_of))], table,
                          layers=layers if layers is not None else names)
    graph.verify()
    return graph


def listing(graph: ScheduleGraph, compact: bool = False) -> list[str]:
    """The graph's text without its header and partition lines."""
    return [line for line in graph.to_text(compact).splitlines()
            if not line.startswith(("schedule", "  partition", "  note"))]


def groups(graph: ScheduleGraph, t: int) -> dict[str, UpdateGroup]:
    return {op.id: op for op in graph.at(t) if isinstance(op, UpdateGroup)}


BODY_HEAD = {"body": (2, SGD), "head": (1, SGD)}


# ---- prune-gradients ------------------------------------------------------------------------


def test_prune_narrows_each_step_to_the_partitions_it_updates() -> None:
    graph = naive(2, BODY_HEAD)
    before = graph.to_text()
    pruned = PruneGradients().apply(graph)
    pruned.verify()
    assert graph.to_text() == before  # the input is left untouched
    assert listing(pruned) == [
        "step 0:",
        "  %0 = batch",
        "  %1 = forward model [grad {body, head}]  ← %0:batch",
        "  %2 = loss cross_entropy  ← %0:batch, %1:logits",
        "  %3 = backward wrt {body, head}  ← %2:loss",
        "  %4 = update body sgd(momentum=0.9) lr=0.2  ← %3:grads",
        "  %5 = update head sgd(momentum=0.9) lr=0.1  ← %3:grads",
        "step 1:",
        "  %0 = batch",
        "  %1 = forward model [grad {head}]  ← %0:batch",
        "  %2 = loss cross_entropy  ← %0:batch, %1:logits",
        "  %3 = backward wrt {head}  ← %2:loss",
        "  %4 = update head sgd(momentum=0.9) lr=0.1  ← %3:grads",
    ]


def test_prune_keeps_partition_order_not_update_order() -> None:
    graph = naive(1, {"c": (1, SGD), "a": (1, SGD), "b": (1, SGD)})
    p = graph.stage.patterns[0]
    p.replace(p.op("backward"), Backward(EMPTY, ("b", "a", "c")))
    pruned = PruneGradients().apply(graph)
    (bwd,) = pruned.stage.patterns[0].of_kind(Backward)
    assert bwd.wrt == ("c", "a", "b")


def test_prune_removes_everything_on_steps_where_nothing_updates() -> None:
    graph = naive(3, {"slow": (3, SGD)})
    assert len(graph.stage.patterns) == 2  # steps 1 and 2 already share one pattern
    pruned = PruneGradients().apply(graph)
    pruned.verify()
    assert [op.id for op in pruned.at(0)] == ["batch", "forward", "loss", "backward", "update.slow"]
    assert pruned.at(1) == [] and pruned.at(2) == []  # not even the batch is drawn
    assert listing(pruned)[-2:] == ["step 1:", "step 2:"]
    assert listing(pruned, compact=True)[-1] == "pattern 1 (steps 1-2):"


def test_prune_with_three_rates() -> None:
    graph = naive(4, {"a": (1, SGD), "b": (2, SGD), "c": (4, SGD)})
    pruned = PruneGradients().apply(graph)
    wrt = {t: op.wrt for t in range(4) for op in pruned.at(t) if isinstance(op, Backward)}
    grad = {t: op.grad for t in range(4) for op in pruned.at(t) if isinstance(op, Forward)}
    assert wrt == {0: ("a", "b", "c"), 1: ("a",), 2: ("a", "b"), 3: ("a",)}
    assert grad == wrt
    assert len(pruned.stage.patterns) == 3 and pruned.stage.at(1) is pruned.stage.at(3)


def test_prune_understands_groups_and_leaves_no_grad_forwards() -> None:
    patterns = []
    for t in range(2):
        p = Pattern((t,))
        batch = p.add(Batch())
        pre = p.add(Forward(EMPTY, 0, 1), [(batch, Value("batch"))])
        post = p.add(Forward(EMPTY, 1, None, ("body", "head")), [(pre, Value("activation"))])
        loss = p.add(Loss(), [(post, Value("logits")), (batch, Value("batch"))])
        bwd = p.add(Backward(EMPTY, ("body", "head")), [(loss, Value("loss"))])
        parts = ("body", "head") if t == 0 else ("head",)
        p.add(UpdateGroup(EMPTY, "+".join(parts), parts, SGD, (LR,) * len(parts)), [(bwd, Value("grads", parts))])
        patterns.append(p)
    graph = ScheduleGraph([Stage("train", 2, patterns, (0, 1))], naive(2, BODY_HEAD).partitions)
    graph.verify()
    pruned = PruneGradients().apply(graph)
    pruned.verify()
    p0, p1 = pruned.stage.patterns
    assert p1.op("forward[0:1]").grad == ()
    assert p1.op("forward[1:]").grad == ("head",)
    assert p1.op("backward").wrt == ("head",)
    assert p0.op("backward").wrt == ("body", "head")


def test_prune_works_per_scope_and_phase() -> None:
    # after_slow: phase 0 differentiates the slow partition only, phase 1 the fast one only
    graph = naive(2, {"slow": (2, SGD), "fast": (1, SGD)}, literal=True)
    pruned = PruneGradients().apply(graph)
    pruned.verify()
    assert listing(pruned)[:10] == [
        "step 0:",
        "  %0 = batch",
        "  %1 = forward model [grad {slow}]  ← %0:batch",
        "  %2 = loss cross_entropy  ← %0:batch, %1:logits",
        "  %3 = backward wrt {slow}  ← %2:loss",
        "  %4 = update slow sgd(momentum=0.9) lr=0.2  ← %3:grads",
        "  %5 = forward model [grad {fast}] @[phase=1]  ← %0:batch, %4",
        "  %6 = loss cross_entropy @[phase=1]  ← %0:batch, %5:logits",
        "  %7 = backward wrt {fast} @[phase=1]  ← %6:loss",
        "  %8 = update fast sgd(momentum=0.9) lr=0.1 @[phase=1]  ← %7:grads",
    ]
    assert [op.id for op in pruned.at(0)][5:] == ["forward#1", "loss#1", "backward#1", "update.fast#1"]


def test_prune_is_idempotent() -> None:
    once = PruneGradients().apply(naive(2, BODY_HEAD))
    assert PruneGradients().apply(once).to_text() == once.to_text()


# ---- group-updates --------------------------------------------------------------------------


def test_group_updates_groups_one_rule_with_each_partitions_lr() -> None:
    graph = naive(1, {"head": (1, SGD), "body": (1, SGD), "bias": (1, SGD)})
    p = graph.stage.patterns[0]
    p.replace(p.op("update.bias"), Update(EMPTY, "bias", SGD, 0.5))
    grouped = GroupUpdates().apply(graph)
    grouped.verify()
    (group,) = grouped.stage.patterns[0].of_kind(UpdateGroup)
    assert isinstance(group, UpdateGroup)
    assert group.name == "head+body+bias" and group.partitions == ("head", "body", "bias")
    assert (group.rule, group.lrs, group.kernel, group.held, group.drifting) == \
        (SGD, (0.1, 0.1, 0.5), "torch.optim", (), ())
    assert grouped.stage.patterns[0].of_kind(Update) == []
    assert [(o.id, v) for o, v in grouped.stage.patterns[0].inputs(group)] == [
        ("backward", Value("grads", ("head", "body", "bias")))]
    assert listing(grouped)[-1] == ("  %4 = update_group head+body+bias {head, body, bias} "
                                    "sgd(momentum=0.9) lr=[0.1, 0.1, 0.5] kernel=torch.optim  ← %3:grads")


def test_group_updates_keeps_distinct_rules_apart() -> None:
    nesterov = Rule("sgd", (("momentum", 0.9), ("nesterov", True)), ("momentum", "nesterov"))
    graph = naive(1, {"a": (1, SGD), "b": (1, ADAM), "c": (1, SGD), "d": (1, ADAM), "e": (1, nesterov)})
    grouped = GroupUpdates().apply(graph)
    grouped.verify()
    found = {op.name: op for op in grouped.stage.patterns[0].of_kind(UpdateGroup)}
    assert set(found) == {"a+c", "b+d", "e"}
    assert found["a+c"].rule == SGD and found["b+d"].rule == ADAM and found["e"].rule == nesterov
    assert all([o.id for o in grouped.stage.patterns[0].preds(g)] == ["backward"] for g in found.values())


def test_group_updates_keeps_phases_scopes_and_random_subsets_apart() -> None:
    graph = naive(2, {"slow": (2, SGD), "fast": (1, SGD), "other": (1, SGD)}, literal=True)
    grouped = GroupUpdates().apply(graph)
    grouped.verify()
    assert sorted(groups(grouped, 0)) == ["update_group.fast+other#1", "update_group.slow"]
    assert groups(grouped, 0)["update_group.slow"].phase == 0
    rnd = naive(1, {"sub": (2, SGD), "rest": (1, SGD)}, random=("sub",))
    assert sorted(groups(GroupUpdates().apply(rnd), 0)) == ["update_group.rest", "update_group.sub"]
    # two brains' updates of one rule stay two groups
    p = Pattern((0,))
    for b in ("x", "y"):
        s = Scope((b,))
        batch = p.add(Batch(s))
        fwd = p.add(Forward(s, 0, None, ("head",)), [(batch, Value("batch"))])
        loss = p.add(Loss(s), [(fwd, Value("logits")), (batch, Value("batch"))])
        bwd = p.add(Backward(s, ("head",)), [(loss, Value("loss"))])
        p.add(Update(s, "head", SGD, 0.1), [(bwd, Value("grads", ("head",)))])
    from mrc.techniques.brains.tables import BRAINS, Brains, ReplicaInfo

    brains = ScheduleGraph([Stage("train", 1, [p], (0,))], naive(1, {"head": (1, SGD)}).partitions,
                           tables={BRAINS: Brains({"x": ReplicaInfo(), "y": ReplicaInfo()})})
    assert sorted(groups(GroupUpdates().apply(brains), 0)) == ["update_group.head@x", "update_group.head@y"]


def test_group_updates_on_a_multi_step_graph() -> None:
    graph = naive(2, {"body": (2, SGD), "head": (1, SGD), "bias": (1, SGD)})
    grouped = GroupUpdates().apply(PruneGradients().apply(graph))
    grouped.verify()
    assert listing(grouped) == [
        "step 0:",
        "  %0 = batch",
        "  %1 = forward model [grad {body, head, bias}]  ← %0:batch",
        "  %2 = loss cross_entropy  ← %0:batch, %1:logits",
        "  %3 = backward wrt {body, head, bias}  ← %2:loss",
        "  %4 = update_group body+head+bias {body, head, bias} sgd(momentum=0.9) lr=[0.2, 0.1, 0.1] "
        "kernel=torch.optim  ← %3:grads",
        "step 1:",
        "  %0 = batch",
        "  %1 = forward model [grad {head, bias}]  ← %0:batch",
        "  %2 = loss cross_entropy  ← %0:batch, %1:logits",
        "  %3 = backward wrt {head, bias}  ← %2:loss",
        "  %4 = update_group head+bias {head, bias} sgd(momentum=0.9) lr=[0.1, 0.1] kernel=torch.optim  ← %3:grads",
    ]


def test_group_updates_keeps_what_came_after_the_updates() -> None:
    graph = naive(2, {"slow": (2, SGD), "fast": (1, SGD)}, drift=("slow",))
    grouped = GroupUpdates().apply(graph)
    grouped.verify()
    for t, name in ((0, "update_group.slow+fast"), (1, "update_group.fast")):
        p = grouped.stage.at(t)
        (drift,) = p.of_kind(Drift)
        assert [(o.id, v.kind) for o, v in p.inputs(drift)] == [(name, "order")]
    assert groups(grouped, 0)["update_group.slow+fast"].held == ("slow",)
    assert groups(grouped, 1)["update_group.fast"].held == ()


def test_pipeline_order_does_not_matter_for_prune_and_group() -> None:
    graph = naive(4, {"body": (2, SGD), "head": (1, SGD), "tail": (4, ADAM)})
    a = GroupUpdates().apply(PruneGradients().apply(graph))
    b = PruneGradients().apply(GroupUpdates().apply(graph))
    assert a.to_text() == b.to_text()


# ---- freeze-prefix --------------------------------------------------------------------------


def test_freeze_prefix_runs_leading_frozen_layers_without_autograd() -> None:
    graph = PruneGradients().apply(naive(2, BODY_HEAD))
    frozen = FreezePrefix().apply(graph)
    frozen.verify()
    assert listing(frozen)[7:] == [
        "step 1:",
        "  %0 = batch",
        "  %1 = forward model[body] [no_grad]  ← %0:batch",
        "  %2 = forward model[head] [grad {head}]  ← %1:activation",
        "  %3 = loss cross_entropy  ← %0:batch, %2:logits",
        "  %4 = backward wrt {head}  ← %3:loss",
        "  %5 = update head sgd(momentum=0.9) lr=0.1  ← %4:grads",
    ]
    assert listing(frozen)[:7] == listing(graph)[:7]  # step 0 differentiates the first layer
    pre, post = frozen.at(1)[1:3]
    assert (pre.start, pre.stop, pre.grad) == (0, 1, ()) and (post.start, post.stop, post.grad) == (1, None, ("head",))


def test_freeze_prefix_leaves_a_live_first_layer_and_a_fully_frozen_model() -> None:
    graph = PruneGradients().apply(naive(2, BODY_HEAD, layers=("head", "body")))
    assert FreezePrefix().apply(graph).to_text() == graph.to_text()
    # a partition whose parameters are in no traced layer: every layer is frozen, nothing to cut
    graph = PruneGradients().apply(naive(2, BODY_HEAD, layers=("body",)))
    assert FreezePrefix().apply(graph).to_text() == graph.to_text()


# ---- select-kernels -------------------------------------------------------------------------


def kernels_of(graph: ScheduleGraph) -> dict[str, str]:
    return {op.name: op.kernel for op in graph.ops() if isinstance(op, UpdateGroup)}


def four_rules(device: str = "cpu", setting: str = "auto", triton: bool = False) -> ScheduleGraph:
    sgd2 = Rule("sgd", (("momentum", 0.5),), ("momentum",))
    graph = GroupUpdates().apply(naive(2, {"a": (2, SGD), "b": (1, ADAM), "c": (1, sgd2), "d": (1, sgd2)},
                                       drift=("a",), random=("c",)))
    graph.target, graph.kernels = Target(device=device, triton=triton), setting
    return graph


def test_select_kernels_picks_fused_sgd_only_for_drifting_rules_on_the_cpu() -> None:
    graph = four_rules()
    assert set(kernels_of(graph).values()) == {"torch.optim"}
    # on the CPU only the rule with a drifting partition goes through the fused path
    assert kernels_of(SelectKernels().apply(graph)) == {"a": "torch", "b": "torch.optim", "c": "subset.torch",
                                                        "d": "torch.optim"}
    assert kernels_of(SelectKernels().apply(four_rules(setting="torch.optim"))) == {
        "a": "torch.optim", "b": "torch.optim", "c": "subset.torch", "d": "torch.optim"}
    assert kernels_of(SelectKernels().apply(four_rules(setting="torch"))) == {
        "a": "torch", "b": "torch", "c": "subset.torch", "d": "torch"}


def test_select_kernels_on_cuda() -> None:
    assert kernels_of(SelectKernels().apply(four_rules("cuda", triton=True))) == {
        "a": "triton", "b": "triton", "c": "subset.triton", "d": "triton"}
    assert kernels_of(SelectKernels().apply(four_rules("cuda"))) == {
        "a": "torch", "b": "torch", "c": "subset.torch", "d": "torch"}


def test_select_kernels_gives_every_group_of_a_rule_the_same_kernel() -> None:
    # `a` drifts: its rule is fused on every step, also where only `b` of that rule updates
    graph = SelectKernels().apply(GroupUpdates().apply(naive(2, {"a": (2, SGD), "b": (1, SGD)}, drift=("a",))))
    assert groups(graph, 1)["update_group.b"].kernel == "torch"
    assert groups(graph, 0)["update_group.a+b"].kernel == "torch"


# ---- fuse-drift -----------------------------------------------------------------------------


def lowered(graph: ScheduleGraph, until: str = "fuse-drift") -> ScheduleGraph:
    return PassManager(["prune-gradients", "group-updates", "select-kernels", "fuse-drift"]).run(graph, until)


def test_fuse_drift_folds_a_drift_into_the_group_of_its_rule() -> None:
    graph = naive(4, {"slow": (4, SGD), "fast": (1, SGD)}, drift=("slow",))
    before = lowered(graph, "select-kernels")
    assert [op.id for op in before.at(1)][-2:] == ["update_group.fast", "drift.slow"]
    fused = FuseDrift().apply(before)
    fused.verify()
    assert before.stage.at(1).of_kind(Drift)  # the input is left untouched
    # the step that updates the held partition: its first 1/k is taken in the update itself
    assert [op.id for op in fused.at(0)][-1] == "update_group.slow+fast"
    g0 = groups(fused, 0)["update_group.slow+fast"]
    assert (g0.held, g0.drifting) == (("slow",), ())
    # the other steps: it joins the group's drifting list, and its drift op is gone
    for t in (1, 2, 3):
        assert not any(isinstance(op, Drift) for op in fused.at(t))
        assert groups(fused, t)["update_group.fast"].drifting == ("slow",)
    assert listing(fused, compact=True)[-1] == ("  %4 = update_group fast {fast} sgd(momentum=0.9) lr=[0.1] "
                                                "kernel=torch + drift {slow every 4}  ← %3:grads")


def test_fuse_drift_keeps_what_ran_after_the_drift() -> None:
    graph = lowered(naive(2, {"slow": (2, SGD), "fast": (1, SGD)}, drift=("slow",)), "select-kernels")
    p = graph.stage.at(1)
    later = p.add(Batch(Scope((), "m9")), p.after(p.of_kind(Drift)))
    fused = FuseDrift().apply(graph)
    q = fused.stage.at(1)
    assert [(o.id, v.kind) for o, v in q.inputs(q.op(later.id))] == [("update_group.fast", "order")]


def test_fuse_drift_keeps_a_drift_with_no_group_of_its_rule_before_it() -> None:
    # the only group of step 1 is another rule's: the drift stays (a drift-only call of its rule)
    graph = lowered(naive(2, {"slow": (2, SGD), "fast": (1, ADAM)}, drift=("slow",)))
    assert [op.id for op in graph.at(1)][-2:] == ["update_group.fast", "drift.slow"]
    assert groups(graph, 1)["update_group.fast"].drifting == ()
    # a drift with no update group before it at all
    graph = lowered(naive(2, {"slow": (2, SGD), "fast": (1, SGD)}, drift=("slow",)), "select-kernels")
    p = graph.stage.at(1)
    p.g.remove_edge("update_group.fast", "drift.slow")
    assert [op.id for op in FuseDrift().apply(graph).at(1)][-1] == "drift.slow"
    # torch.optim groups take no drift inside the update
    unfused = naive(2, {"slow": (2, SGD), "fast": (1, SGD)}, drift=("slow",))
    unfused.kernels = "torch.optim"
    graph = lowered(unfused)
    assert groups(graph, 1)["update_group.fast"].kernel == "torch.optim"
    assert [op.id for op in graph.at(1)][-1] == "drift.slow"


def test_fuse_drift_with_after_slow_folds_into_the_last_phase_only() -> None:
    parts = {"drifty": (4, SGD), "slow": (2, SGD), "fast": (1, SGD)}
    graph = lowered(naive(4, parts, drift=("drifty",), literal=True))
    graph.verify()
    for t in range(4):
        two_points = any(g.phase == 1 for g in groups(graph, t).values())
        for g in groups(graph, t).values():
            assert not (two_points and g.phase == 0 and g.drifting), (t, g.id)
        assert not any(isinstance(op, Drift) for op in graph.at(t))
    assert [t for t in range(4) if any(g.phase for g in groups(graph, t).values())] == [0, 2]
    g2 = groups(graph, 2)
    assert sorted(g2) == ["update_group.fast#1", "update_group.slow"]
    assert g2["update_group.fast#1"].drifting == ("drifty",) and g2["update_group.slow"].drifting == ()
    assert groups(graph, 0)["update_group.drifty+fast#1"].held == ("drifty",)


def test_fuse_drift_prefers_the_last_phase_when_the_drift_follows_both() -> None:
    parts = {"drifty": (4, SGD), "slow": (2, SGD), "fast": (1, SGD)}
    graph = lowered(naive(4, parts, drift=("drifty",), literal=True), "select-kernels")
    p = graph.stage.at(2)
    (drift,) = p.of_kind(Drift)
    p.connect(p.op("update_group.slow"), drift)  # also after the first gradient point's group
    graph.verify()
    g2 = groups(FuseDrift().apply(graph), 2)
    assert g2["update_group.slow"].drifting == ()
    assert g2["update_group.fast#1"].drifting == ("drifty",)


def test_fuse_drift_with_after_slow_in_a_compiled_spec(tmp_path: Path) -> None:
    from mrc.api import compile_spec

    spec = tmp_path / "literal.mrs"
    spec.write_text("model mlp(hidden=[8, 8])\ndata digits(limit=64)\noptimizer sgd(lr=0.1, momentum=0.9)\n"
                    "partition first = depth(0, 1) { every = 4; drift = linear }\n"
                    "partition second = depth(1, 2) { every = 2 }\npartition fast = rest\n"
                    "multirate(first_fast_gradient = after_slow)\ntrain(steps=4, device=cpu)\n")
    graph = compile_spec(spec).graph
    drifting = {t: {g.id: g.drifting for g in groups(graph, t).values()} for t in range(4)}
    assert drifting == {0: {"update_group.second": (), "update_group.first+fast#1": ()},
                        1: {"update_group.fast": ("first",)},
                        2: {"update_group.second": (), "update_group.fast#1": ("first",)},
                        3: {"update_group.fast": ("first",)}}
    assert not any(isinstance(op, Drift) for op in graph.ops())


# ---- the pass manager -----------------------------------------------------------------------


@dataclass(frozen=True)
class Boom(Pass):
    name: ClassVar[str] = "boom"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        raise RuntimeError("kaboom")


@dataclass(frozen=True)
class Unloss(Pass):
    """Leaves a broken graph: removes every loss."""

    name: ClassVar[str] = "unloss"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        for p in out.patterns():
            for op in p.of_kind(Loss):
                p.remove(op)
        return out


@pytest.fixture
def extra_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PASSES, "boom", Boom)
    monkeypatch.setitem(PASSES, "unloss", Unloss)


def test_pass_manager_names_the_failing_pass_and_those_before(extra_passes: None) -> None:
    graph = naive(2, BODY_HEAD)
    manager = PassManager(["prune-gradients", "group-updates", "boom"], out=io.StringIO())
    with pytest.raises(PassError) as info:
        manager.run(graph)
    assert str(info.value) == ("error in pass boom after passes [prune-gradients, "
                               "group-updates]: RuntimeError: kaboom")
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(PassError, match=r"^error in pass boom after passes \[\]: "):
        PassManager(["boom", "prune-gradients"]).run(graph)


def test_pass_manager_verifies_after_every_pass(extra_passes: None) -> None:
    graph = naive(1, {"a": (1, SGD)})
    with pytest.raises(PassError) as info:
        PassManager(["prune-gradients", "unloss", "group-updates"]).run(graph)
    assert str(info.value).startswith("error in pass unloss after passes [prune-gradients]: "
                                      "GraphError: backward: a backward needs the loss")
    assert isinstance(info.value.__cause__, GraphError)


def test_print_after_and_stop_after() -> None:
    graph = naive(2, BODY_HEAD)
    out = io.StringIO()
    result = PassManager(["prune-gradients", "group-updates"], print_after=["all"], out=out).run(graph)
    text = out.getvalue()
    pruned = PruneGradients().apply(graph)
    assert text == (f"// ----- after prune-gradients\n{pruned.to_text()}"
                    f"// ----- after group-updates\n{result.to_text()}")
    out = io.StringIO()
    PassManager(["prune-gradients", "group-updates"], print_after=["group-updates"], out=out).run(graph)
    assert out.getvalue() == f"// ----- after group-updates\n{result.to_text()}"
    out = io.StringIO()
    PassManager(["prune-gradients"], print_after=["build"], out=out).run(graph)
    assert out.getvalue() == f"// ----- after build\n{graph.to_text()}"
    out = io.StringIO()
    compact = PassManager(["prune-gradients"], print_after=["all"], out=out,
                          printer=lambda g: g.to_text(compact=True)).run(graph)
    assert out.getvalue() == f"// ----- after prune-gradients\n{compact.to_text(compact=True)}"
    manager = PassManager(["prune-gradients", "group-updates"], out=io.StringIO())
    stopped = manager.run(graph, stop_after="prune-gradients")
    assert stopped.to_text() == pruned.to_text()
    assert [name for name, _ in manager.timings] == ["prune-gradients"]


def test_time_passes() -> None:
    out = io.StringIO()
    manager = PassManager(["prune-gradients", "group-updates"], time_passes=True, out=out)
    manager.run(naive(2, BODY_HEAD))
    lines = out.getvalue().splitlines()
    assert lines[0] == "// pass timings"
    assert [line.split()[1] for line in lines[1:]] == ["prune-gradients", "group-updates", "total"]
    times = [float(re.fullmatch(r"//\s+\S+\s+(\d+\.\d{3}) ms", line).group(1))  # type: ignore[union-attr]
             for line in lines[1:]]
    assert times[2] == pytest.approx(times[0] + times[1], abs=2e-3)
    assert [name for name, _ in manager.timings] == ["prune-gradients", "group-updates"]


def test_parse_pipeline() -> None:
    assert parse_pipeline("prune-gradients, group-updates") == ["prune-gradients", "group-updates"]
    assert parse_pipeline("group-updates,,") == ["group-updates"]
    with pytest.raises(PassError) as info:
        parse_pipeline("prune-gradients,group-update")
    assert str(info.value) == "unknown pass `group-update`; did you mean `group-updates`?"
    with pytest.raises(PassError) as info:
        parse_pipeline("zzz")
    assert str(info.value).startswith("unknown pass `zzz`; passes are prune-gradients")


def test_every_registered_pass_is_documented_and_named_like_its_file() -> None:
    root = Path(__file__).resolve().parents[2] / "passes"
    for name, cls in PASSES.items():
        assert cls.name == name and re.fullmatch(r"[a-z]+(-[a-z]+)*", name)
        assert (root / f"{name.replace('-', '_')}.py").is_file()
        doc = __import__(cls.__module__, fromlist=["_"]).__doc__
        assert doc and doc.startswith(f"{name}:") and "Requires:" in doc and "Ensures:" in doc
    assert all(name in PASSES for name in DEFAULT_PIPELINE)
    assert "fuse-drift" in DEFAULT_PIPELINE
    assert DEFAULT_PIPELINE.index("select-kernels") < DEFAULT_PIPELINE.index("fuse-drift")


def test_the_default_pipeline_keeps_the_input_graph_and_verifies() -> None:
    graph = naive(4, {"slow": (4, SGD), "mid": (2, ADAM), "fast": (1, SGD)}, drift=("slow",))
    before = graph.to_json()
    out = PassManager(list(DEFAULT_PIPELINE)).run(graph)
    out.verify()
    assert graph.to_json() == before
    assert not any(isinstance(op, Update) for op in out.ops())


# ---- `mrc graph` ----------------------------------------------------------------------------

SPEC = """\
model mlp(hidden=[8])
data digits(limit=64)
optimizer sgd(lr=0.1)
partition head = module("head")
partition body = rest { optimizer adam(lr=0.01) }
"""


@pytest.fixture
def spec(tmp_path: Path) -> str:
    path = tmp_path / "g.mrs"
    path.write_text(SPEC)
    return str(path)


def graph_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["graph", *args])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return status, out.out, out.err


def test_cli_print_after_all(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = graph_cli(capsys, spec, "--print-after", "all")
    assert status == 0
    headers = re.findall(r"^// ----- after (\S+)$", err, flags=re.M)
    assert headers == list(DEFAULT_PIPELINE)
    # the last printed graph is the one written to stdout
    assert err.endswith(out)
    assert "update_group head {head} sgd() lr=[0.1]" in out and "update_group body {body} adam() lr=[0.01]" in out


def test_cli_print_after_one_pass_and_build(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = graph_cli(capsys, spec, "--print-after", "build", "--print-after", "prune-gradients")
    assert status == 0
    assert re.findall(r"^// ----- after (\S+)$", err, flags=re.M) == ["build", "prune-gradients"]
    build = err.split("// ----- after prune-gradients\n")[0]
    assert "update head sgd() lr=0.1" in build and "update_group" not in build


def test_cli_time_passes(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = graph_cli(capsys, spec, "--time-passes")
    assert status == 0
    lines = err.splitlines()
    start = lines.index("// pass timings")
    names = [line.split()[1] for line in lines[start + 1:]]
    assert names == [*DEFAULT_PIPELINE, "total"]
    assert all(re.fullmatch(r"//\s+\S+\s+\d+\.\d{3} ms", line) for line in lines[start + 1:])


def test_cli_after_build_and_a_pass(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = graph_cli(capsys, spec, "--after", "build")
    assert status == 0
    assert "backward wrt {head, body}" in out and "update_group" not in out
    status, out, _ = graph_cli(capsys, spec, "--after", "prune-gradients")
    assert status == 0 and "update head" in out and "update_group" not in out


def test_cli_passes_option(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = graph_cli(capsys, spec, "--passes", "group-updates")
    assert status == 0 and "update_group head {head}" in out


def test_cli_formats_and_output_file(spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = graph_cli(capsys, spec, "--format", "json")
    assert status == 0
    data = json.loads(out)
    assert data["stages"][0]["period"] == 1 and list(data["partitions"]) == ["head", "body"]
    assert ScheduleGraph.from_json(out).to_json() == out
    target = tmp_path / "g.dot"
    status, out, _ = graph_cli(capsys, spec, "--format", "dot", "-o", str(target))
    assert status == 0 and out == ""
    assert target.read_text().startswith("digraph schedule {")


@pytest.mark.parametrize(("args", "message"), [
    (["--passes", "prune-gradient"], "mrc graph: unknown pass `prune-gradient`; did you mean `prune-gradients`?"),
    (["--after", "group-update"], "mrc graph: --after/--print-after `group-update` is not in the pipeline"),
    (["--passes", "group-updates", "--print-after", "prune-gradients"],
     "mrc graph: --after/--print-after `prune-gradients` is not in the pipeline (build, group-updates)"),
])
def test_cli_pass_errors(spec: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    status, out, err = graph_cli(capsys, spec, *args)
    assert status == 2 and out == ""
    assert err.startswith(message), err


def test_cli_reports_a_failing_pass(spec: str, capsys: pytest.CaptureFixture[str], extra_passes: None) -> None:
    status, out, err = graph_cli(capsys, spec, "--passes", "prune-gradients,boom,group-updates")
    assert status == 2 and out == ""
    assert err == "mrc graph: error in pass boom after passes [prune-gradients]: RuntimeError: kaboom\n"
