"""The schedule graph (IR version 2): op ids, step patterns shared by the steps that run them,
deterministic order and printing (full and compact, with scopes and value edges), the invariants
`verify()` checks, and the JSON round trip."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mrc.ir.graph import PartitionInfo, Pattern, ScheduleGraph, Stage, lcm
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
from mrc.techniques.brains.ops import Merge, MergeRule
from mrc.techniques.brains.tables import BRAINS, Brains, ReplicaInfo
from mrc.techniques.multirate.ops import Drift

SGD = Rule("sgd", (("momentum", 0.9),), ("momentum",))
ADAM = Rule("adam", (("betas", (0.9, 0.999)),), ())
LR = 0.1


def table(parts: dict[str, int]) -> dict[str, PartitionInfo]:
    return {n: PartitionInfo((f"{n}.weight", f"{n}.bias"), 10 * (i + 1), every)
            for i, (n, every) in enumerate(parts.items())}


def expand(parts: dict[str, int], t: int, smoothing: float = 0.1) -> Pattern:
    """One naive step as mrc.schedule builds it: batch, forward, loss, backward of every
    partition, and an update of each partition whose rate divides t (at lr × every)."""
    names = tuple(parts)
    p = Pattern()
    batch = p.add(Batch())
    fwd = p.add(Forward(EMPTY, 0, None, names), [(batch, Value("batch"))])
    loss = p.add(Loss(EMPTY, "cross_entropy", smoothing), [(fwd, Value("logits")), (batch, Value("batch"))])
    bwd = p.add(Backward(EMPTY, names), [(loss, Value("loss"))])
    for n, every in parts.items():
        if t % every == 0:
            p.add(Update(EMPTY, n, SGD, LR * every), [(bwd, Value("grads", (n,)))])
    return p


def naive(period: int, parts: dict[str, int], smoothing: float = 0.1) -> ScheduleGraph:
    """The naive graph: the steps with the same signature (which rates divide t) share one
    Pattern, expanded once, as mrc.schedule.build_graph does."""
    index: dict[tuple[bool, ...], int] = {}
    patterns: list[Pattern] = []
    pattern_of: list[int] = []
    for t in range(period):
        key = tuple(t % e == 0 for e in parts.values())
        if key not in index:
            index[key] = len(patterns)
            patterns.append(expand(parts, t, smoothing))
        pattern_of.append(index[key])
    for i, p in enumerate(patterns):
        p.steps = tuple(t for t in range(period) if pattern_of[t] == i)
    graph = ScheduleGraph([Stage("train", period, patterns, tuple(pattern_of))], table(parts),
                          layers=tuple(parts))
    graph.verify()
    return graph


def two() -> ScheduleGraph:
    """`head` every step, `body` every 2 steps: period 2, two patterns."""
    return naive(2, {"body": 2, "head": 1})


def op(p: Pattern, op_id: str) -> Op:
    return p.op(op_id)


# ---- ids --------------------------------------------------------------------------------------


def test_ids_are_derived_from_kind_key_scope_and_phase() -> None:
    assert Batch().id == "batch"
    assert Forward().id == "forward"
    assert Forward(EMPTY, 0, 2).id == "forward[0:2]"
    assert Forward(EMPTY, 2, None).id == "forward[2:]"
    assert Loss().id == "loss"
    assert Loss(phase=1).id == "loss#1"
    assert Backward(wrt=("a",)).id == "backward"
    assert Update(partition="head", rule=SGD).id == "update.head"
    assert UpdateGroup(name="body+head", partitions=("body", "head")).id == "update_group.body+head"
    assert Drift(partition="body").id == "drift.body"
    assert Merge(brains=("a", "b")).id == "merge.a+b"
    assert Forward(Scope(("fast",))).id == "forward@fast"
    assert UpdateGroup(Scope(("fast", "slow")), "brains").id == "update_group.brains@fast+slow"
    assert Backward(Scope((), "m2", 1, 0), phase=2).id == "backward@m2@L1.i0#2"
    assert Scope(level=1).key() == "@L1"


def test_forward_segment_is_typed_start_and_stop() -> None:
    whole, prefix, suffix = Forward(), Forward(EMPTY, 0, 3), Forward(EMPTY, 3, None, ("a",))
    assert (whole.start, whole.stop, whole.segment) == (0, None, "model")
    assert (prefix.start, prefix.stop, prefix.segment) == (0, 3, "model[:3]")
    assert (suffix.start, suffix.stop, suffix.segment) == (3, None, "model[3:]")
    assert prefix.text() == "forward model[:3] [no_grad]"
    assert suffix.text() == "forward model[3:] [grad {a}]"


# ---- patterns shared by steps -------------------------------------------------------------------


def test_construction_and_queries() -> None:
    graph = two()
    stage = graph.stage
    assert graph.period == 2 and len(stage.patterns) == 2 and stage.pattern_of == (0, 1)
    assert [p.steps for p in stage.patterns] == [(0,), (1,)]
    p0, p1 = stage.patterns
    assert len(p0.g) == 6 and p0.g.number_of_edges() == 6
    assert len(p1.g) == 5 and p1.g.number_of_edges() == 5
    ids = [o.id for o in graph.at(0)]
    assert ids == ["batch", "forward", "loss", "backward", "update.body", "update.head"]
    assert [o.id for o in graph.at(1)] == ["batch", "forward", "loss", "backward", "update.head"]
    assert graph.at(3) == graph.at(1)  # steps wrap around the period
    assert [o.id for o in p0.of_kind(Update)] == ["update.body", "update.head"]
    bwd = op(p0, "backward")
    assert isinstance(bwd, Backward) and bwd.wrt == ("body", "head")
    assert [o.id for o in p0.succs(bwd)] == ["update.body", "update.head"]
    assert [o.id for o in p0.preds(bwd)] == ["loss"]
    assert [(o.id, v) for o, v in p0.inputs(op(p0, "loss"))] == [("batch", Value("batch")),
                                                                 ("forward", Value("logits"))]
    assert [(o.id, v) for o, v in p0.outputs(bwd)] == [("update.body", Value("grads", ("body",))),
                                                       ("update.head", Value("grads", ("head",)))]
    assert {o.id for o in p0.ancestors(op(p0, "update.head"))} == {"batch", "forward", "loss", "backward"}
    assert {o.id for o in p0.descendants(op(p0, "loss"))} == {"backward", "update.body", "update.head"}
    # ops() of the graph: every pattern's ops once
    assert [o.id for o in graph.ops()] == ids + [o.id for o in graph.at(1)]


def test_steps_with_the_same_pattern_share_one_pattern_object() -> None:
    graph = naive(6, {"slow": 3, "mid": 2, "fast": 1})
    stage = graph.stage
    assert len(stage.patterns) == 4  # {0}, {1, 5}, {2, 4}, {3}
    assert [p.steps for p in stage.patterns] == [(0,), (1, 5), (2, 4), (3,)]
    assert stage.at(1) is stage.at(5) and stage.at(2) is stage.at(4)
    assert stage.at(0) is not stage.at(3)


def test_rates_one_to_eight_make_a_long_period_of_few_patterns() -> None:
    rates = {f"p{k}": k for k in range(1, 9)}
    graph = naive(lcm(rates.values()), rates)
    assert graph.period == 840
    patterns = graph.stage.patterns
    distinct = {tuple(t % k == 0 for k in rates.values()) for t in range(840)}
    assert len(patterns) == len(distinct) < 840 / 10
    # one object per pattern, held by every step that runs it
    assert len({id(graph.stage.at(t)) for t in range(840)}) == len(patterns)
    assert sum(len(p.steps) for p in patterns) == 840
    # the graph's ops are linear in patterns, not steps
    n_ops = len(list(graph.ops()))
    assert n_ops == sum(len(p.g) for p in patterns)
    assert n_ops <= len(patterns) * (4 + len(rates)) < 840 * 5
    assert len(graph.to_text(compact=True).splitlines()) < len(graph.to_text().splitlines()) / 10


def test_a_compiled_spec_with_rates_one_to_eight_shares_patterns(tmp_path: Path) -> None:
    from mrc.api import compile_spec

    parts = "\n".join(f"partition p{k} = depth({k - 1}, {k}) {{ every = {k} }}" for k in range(1, 9))
    spec = tmp_path / "rates.mrs"
    spec.write_text(f"model mlp(hidden=[4, 4, 4, 4, 4, 4, 4])\ndata digits(limit=64)\n"
                    f"optimizer sgd(lr=0.1)\n{parts}\ntrain(steps=2, device=cpu)\n")
    compiled = compile_spec(spec)
    for graph in (compiled.initial_graph, compiled.graph):
        assert graph.period == 840
        patterns = graph.stage.patterns
        assert len(patterns) < 840 / 10
        assert len({id(graph.stage.at(t)) for t in range(840)}) == len(patterns)
        assert len(list(graph.ops())) == sum(len(p.g) for p in patterns) < 840
        for t in (0, 1, 6, 839):
            want = {f"p{k}" for k in range(1, 9) if t % k == 0}
            assert {n for o in graph.at(t) if isinstance(o, UpdateGroup | Update)
                    for n in getattr(o, "partitions", None) or (o.partition,)} == want


def test_adding_an_op_twice_to_a_pattern_is_an_error() -> None:
    p = two().stage.patterns[0]
    with pytest.raises(GraphError, match=r"op loss added twice to one step pattern"):
        p.add(Loss())
    # the same op in another scope or phase is another op
    p.add(Loss(Scope(("b",))))
    p.add(Loss(phase=1))


# ---- printing -----------------------------------------------------------------------------------

TEXT = """\
schedule stage=train period=2 patterns=2
  partition body: tensors=2 numel=10 every=2
  partition head: tensors=2 numel=20 every=1
step 0:
  %0 = batch
  %1 = forward model [grad {body, head}]  ← %0:batch
  %2 = loss cross_entropy(label_smoothing=0.1)  ← %0:batch, %1:logits
  %3 = backward wrt {body, head}  ← %2:loss
  %4 = update body sgd(momentum=0.9) lr=0.2  ← %3:grads
  %5 = update head sgd(momentum=0.9) lr=0.1  ← %3:grads
step 1:
  %0 = batch
  %1 = forward model [grad {body, head}]  ← %0:batch
  %2 = loss cross_entropy(label_smoothing=0.1)  ← %0:batch, %1:logits
  %3 = backward wrt {body, head}  ← %2:loss
  %4 = update head sgd(momentum=0.9) lr=0.1  ← %3:grads
"""


def test_text_form() -> None:
    assert two().to_text() == TEXT


def test_compact_text_lists_each_pattern_once_with_its_steps() -> None:
    graph = naive(6, {"slow": 3, "mid": 2, "fast": 1}, smoothing=0.0)
    text = graph.to_text(compact=True)
    assert text.splitlines()[0] == "schedule stage=train period=6 patterns=4"
    headers = [line for line in text.splitlines() if line.startswith("pattern")]
    assert headers == ["pattern 0 (steps 0):", "pattern 1 (steps 1, 5):", "pattern 2 (steps 2, 4):",
                       "pattern 3 (steps 3):"]
    assert "step " not in text
    block = text.split("pattern 1 (steps 1, 5):\n")[1].split("pattern 2")[0]
    assert block == ("  %0 = batch\n"
                     "  %1 = forward model [grad {slow, mid, fast}]  ← %0:batch\n"
                     "  %2 = loss cross_entropy  ← %0:batch, %1:logits\n"
                     "  %3 = backward wrt {slow, mid, fast}  ← %2:loss\n"
                     "  %4 = update fast sgd(momentum=0.9) lr=0.1  ← %3:grads\n")
    # the full listing repeats that block for each of the pattern's steps
    full = graph.to_text()
    assert f"step 1:\n{block}step 2:" in full and full.endswith(f"step 5:\n{block}")
    # a range of consecutive steps
    g = naive(4, {"slow": 4, "fast": 1})
    assert "pattern 1 (steps 1-3):" in g.to_text(compact=True)


def brains_graph() -> ScheduleGraph:
    """Two brains `fast` (every step) and `slow` (every 2 steps), merged after step 1."""
    patterns = []
    for t in range(2):
        p = Pattern((t,))
        tails: list[Op] = []
        for b in ("fast", "slow") if t == 0 else ("fast",):
            s = Scope((b,))
            batch = p.add(Batch(s))
            fwd = p.add(Forward(s, 0, None, ("all",)), [(batch, Value("batch"))])
            loss = p.add(Loss(s), [(fwd, Value("logits")), (batch, Value("batch"))])
            bwd = p.add(Backward(s, ("all",)), [(loss, Value("loss"))])
            tails.append(p.add(UpdateGroup(s, "all", ("all",), SGD, (0.1 if b == "fast" else 0.2,)),
                               [(bwd, Value("grads", ("all",)))]))
        if t == 1:
            p.add(Merge(EMPTY, ("fast", "slow"), MergeRule("weighted", (1.0, 3.0))), p.after(tails))
        patterns.append(p)
    graph = ScheduleGraph([Stage("train", 2, patterns, (0, 1))], table({"all": 1}),
                          tables={BRAINS: Brains({"fast": ReplicaInfo(1), "slow": ReplicaInfo(2, "own")},
                                                 MergeRule("mean"))})
    graph.verify()
    return graph


def test_scopes_and_value_edges_are_printed() -> None:
    text = brains_graph().to_text()
    assert text.splitlines()[:4] == ["schedule stage=train period=2 patterns=2",
                                     "  brain fast: every=1 data=shared", "  brain slow: every=2 data=own",
                                     "  partition all: tensors=2 numel=10 every=1"]
    assert "  %0 = batch @[brain=fast]\n" in text
    assert "  %2 = forward model [grad {all}] @[brain=fast]  ← %0:batch\n" in text
    assert "  %4 = loss cross_entropy @[brain=fast]  ← %0:batch, %2:logits\n" in text
    assert "update_group all {all} sgd(momentum=0.9) lr=[0.2] kernel=torch.optim @[brain=slow]  ← %7:grads" in text
    # an order-only edge is printed as the bare producer
    assert "  %5 = merge {fast, slow} weighted(weights=[1, 3])  ← %4\n" in text
    assert Scope(("a", "b"), "m1", 2, 3).text() == "brains=a,b module=m1 level=2 iteration=3"


def test_scopes_are_in_json() -> None:
    data = json.loads(brains_graph().to_json())
    ops = data["stages"][0]["patterns"][0]["ops"]
    fwd = next(o for o in ops if o["id"] == "forward@slow")
    assert fwd["scope"] == {"replica": ["slow"], "module": "", "level": -1, "iteration": -1}
    assert fwd["kind"] == "forward" and (fwd["start"], fwd["stop"], fwd["grad"]) == (0, None, ["all"])
    merge = data["stages"][0]["patterns"][1]["ops"][-1]
    assert merge["id"] == "merge.fast+slow" and merge["scope"]["replica"] == []
    assert merge["merge"]["rule"] == "weighted" and merge["merge"]["weights"] == [1.0, 3.0]
    assert data["replicas"] == {"fast": {"every": 1, "data": "shared"}, "slow": {"every": 2, "data": "own"}}
    edges = data["stages"][0]["patterns"][0]["edges"]
    assert ["backward@fast", "update_group.all@fast", "grads", ["all"]] in edges
    assert ["batch@slow", "loss@slow", "batch", []] in edges


def shuffled_copy(p: Pattern, seed: int) -> Pattern:
    """The same ops and edges inserted in another order (ops first, edges after)."""
    rng = random.Random(seed)
    nodes = list(p.g.nodes(data=True))
    edges = list(p.g.edges(data=True))
    rng.shuffle(nodes)
    rng.shuffle(edges)
    out = Pattern(p.steps)
    for _, d in nodes:
        out.add(d["op"])
    for a, b, d in edges:
        out.connect(p.op(a), p.op(b), d["value"])
    return out


@pytest.mark.parametrize("seed", range(6))
def test_order_does_not_depend_on_insertion_order(seed: int) -> None:
    reference = naive(6, {"slow": 3, "mid": 2, "fast": 1})
    other = reference.copy()
    other.stages[0].patterns = [shuffled_copy(p, seed + i) for i, p in enumerate(other.stage.patterns)]
    assert [o.id for o in other.ops()] == [o.id for o in reference.ops()]
    assert other.to_text() == reference.to_text()
    assert other.to_text(compact=True) == reference.to_text(compact=True)
    assert other.to_json() == reference.to_json()
    assert other.to_dot() == reference.to_dot()


def test_order_breaks_ties_by_phase_kind_then_id() -> None:
    # independent ops: listed by (phase, kind rank, id); a dependency always wins
    p = Pattern((0,))
    p.add(Update(EMPTY, "b", SGD, 0.1))
    p.add(Forward(EMPTY, 3, None))
    p.add(Update(EMPTY, "a", SGD, 0.1))
    p.add(Forward(EMPTY, 0, 3))
    p.add(Loss(phase=1))
    p.add(Batch())
    assert [o.id for o in p.ops()] == ["batch", "forward[0:3]", "forward[3:]", "update.a", "update.b", "loss#1"]
    p.connect(p.op("update.b"), p.op("forward[0:3]"))
    ids = [o.id for o in p.ops()]
    assert ids.index("update.b") < ids.index("forward[0:3]")
    assert ids == ["batch", "forward[3:]", "update.a", "update.b", "forward[0:3]", "loss#1"]


def test_replace_keeps_edges_and_copy_is_independent() -> None:
    graph = two()
    copy = graph.copy()
    p = copy.stage.patterns[1]
    old = p.op("backward")
    new = Backward(EMPTY, ("head",))
    p.replace(old, new)
    assert [(o.id, v) for o, v in p.inputs(new)] == [("loss", Value("loss"))]
    assert [(o.id, v) for o, v in p.outputs(new)] == [("update.head", Value("grads", ("head",)))]
    assert p.op("backward") == new
    assert graph.stage.patterns[1].op("backward") == old  # the original is untouched
    assert copy.stage.patterns[1] is not graph.stage.patterns[1]
    copy.partitions["head"] = PartitionInfo(("x",), 1, 7)
    copy.notes.append("x")
    copy.stage.patterns[0].remove(copy.stage.patterns[0].op("update.body"))
    assert graph.partitions["head"].every == 1 and graph.notes == []
    assert len(graph.at(0)) == 6 and len(copy.at(0)) == 5


def test_reindex_merges_patterns_that_became_equal() -> None:
    graph = two()
    p0 = graph.stage.patterns[0]
    p0.remove(p0.op("update.body"))
    graph.reindex()
    assert len(graph.stage.patterns) == 1 and graph.stage.pattern_of == (0, 0)
    assert graph.stage.patterns[0].steps == (0, 1)
    graph.verify()


# ---- verify() -----------------------------------------------------------------------------------


def broken(change) -> ScheduleGraph:  # type: ignore[no-untyped-def]
    graph = two()
    graph.verify()
    change(graph, *graph.stage.patterns)
    return graph


def _cycle(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p0.connect(p0.op("update.head"), p0.op("forward"))


def _step_not_run(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p1.steps = (0, 1)


def _unmapped_steps(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    g.stage.period = 3


def _bad_period(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    g.stage.period = 0


def _no_stage(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    g.stages.clear()


def _unknown_in_update(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p0.add(Update(EMPTY, "tail", SGD, 0.1), [(p0.op("backward"), Value("grads", ("tail",)))])


def _unknown_in_forward(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p1.replace(p1.op("forward"), Forward(EMPTY, 0, None, ("body", "head", "neck")))


def _unknown_brain(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p0.add(Batch(Scope(("ghost",))))


def _forward_without_input(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p1.add(Forward(EMPTY, 0, 2))


def _loss_without_targets(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p1.g.remove_edge("batch", "loss")


def _update_without_backward(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    up = p1.op("update.head")
    p1.remove(up)
    p1.add(up, [(p1.op("loss"), Value("loss"))])


def _update_not_differentiated(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p0.replace(p0.op("backward"), Backward(EMPTY, ("head",)))
    p0.replace(p0.op("forward"), Forward(EMPTY, 0, None, ("head",)))


def _update_after_another_scopes_backward(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    # the gradient must come from a backward of the update's own scope
    g.set_table(BRAINS, Brains({"a": ReplicaInfo(), "b": ReplicaInfo()}))
    up = p1.op("update.head")
    p1.remove(up)
    p1.replace(p1.op("backward"), Backward(Scope(("a",)), ("body", "head")))
    p1.replace(p1.op("forward"), Forward(Scope(("a",)), 0, None, ("body", "head")))
    p1.add(Update(Scope(("b",)), "head", SGD, 0.1), [(p1.op("backward@a"), Value("grads", ("head",)))])


def _backward_without_loss(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p1.remove(p1.op("loss"))
    p1.connect(p1.op("forward"), p1.op("backward"), Value("logits"))


def _backward_untracked(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p1.replace(p1.op("forward"), Forward(EMPTY, 0, None, ("head",)))


def _double_update(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p0.add(UpdateGroup(EMPTY, "head2", ("head",), ADAM, (0.001,)), [(p0.op("backward"), Value("grads", ("head",)))])


def _group_lrs(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p1.remove(p1.op("update.head"))
    p1.add(UpdateGroup(EMPTY, "g", ("body", "head"), SGD, (0.1,)), [(p1.op("backward"), Value("grads"))])


def _group_holds_what_it_does_not_update(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p1.remove(p1.op("update.head"))
    p1.add(UpdateGroup(EMPTY, "g", ("head",), SGD, (0.1,), held=("body",)), [(p1.op("backward"), Value("grads"))])


def _drift_of_unknown_partition(g: ScheduleGraph, p0: Pattern, p1: Pattern) -> None:
    p1.add(Drift(EMPTY, "neck", 2), p1.after([p1.op("update.head")]))


@pytest.mark.parametrize(("change", "message"), [
    (_cycle, r"the schedule has a cycle: .*forward"),
    (_step_not_run, r"stage train: step 0 listed by a pattern it does not run"),
    (_unmapped_steps, r"stage train: 2 steps mapped, period 3"),
    (_bad_period, r"stage train: period must be ≥ 1, not 0"),
    (_no_stage, r"the schedule has no stage"),
    (_unknown_in_update, r"update\.tail: unknown partition `tail`"),
    (_unknown_in_forward, r"forward: unknown partition `neck`"),
    (_unknown_brain, r"batch@ghost: unknown brain `ghost`"),
    (_forward_without_input, r"forward\[0:2\]: a forward needs a batch or an activation as input"),
    (_loss_without_targets, r"loss: a loss needs logits and the batch's targets as inputs"),
    (_update_without_backward, r"update\.head: updates \['head'\] without a backward"),
    (_update_not_differentiated, r"update\.body: updates \['body'\] without a backward"),
    (_update_after_another_scopes_backward, r"update\.head@b: updates \['head'\] without a backward"),
    (_backward_without_loss, r"backward: a backward needs the loss of its step as input"),
    (_backward_untracked, r"backward: differentiates \['body'\] but no forward before it tracks them"),
    (_double_update, r"step 0: partition head is updated twice"),
    (_group_lrs, r"update_group\.g: 2 learning rates expected \(one per brain and partition\), 1 given"),
    (_group_holds_what_it_does_not_update, r"update_group\.g: holds \['body'\] it does not update"),
    (_drift_of_unknown_partition, r"drift\.neck: unknown partition `neck`"),
])
def test_verify_catches_each_broken_invariant(change, message: str) -> None:  # type: ignore[no-untyped-def]
    graph = broken(change)
    with pytest.raises(GraphError, match=message):
        graph.verify()


def test_verify_counts_updates_per_brain() -> None:
    # the same partition updated once in each of two brains is fine; twice in one brain is not
    graph = brains_graph()
    graph.verify()
    p = graph.stage.patterns[0]
    p.add(UpdateGroup(Scope(("slow",)), "again", ("all",), ADAM, (0.1,)), [(p.op("backward@slow"), Value("grads"))])
    with pytest.raises(GraphError, match=r"step 0: partition slow\.all is updated twice"):
        graph.verify()


def test_verify_accepts_a_no_grad_prefix_and_grouped_updates() -> None:
    p = Pattern((0,))
    batch = p.add(Batch())
    pre = p.add(Forward(EMPTY, 0, 2), [(batch, Value("batch"))])
    post = p.add(Forward(EMPTY, 2, None, ("a", "b")), [(pre, Value("activation"))])
    loss = p.add(Loss(), [(post, Value("logits")), (batch, Value("batch"))])
    bwd = p.add(Backward(EMPTY, ("a", "b")), [(loss, Value("loss"))])
    group = p.add(UpdateGroup(EMPTY, "a+b", ("a", "b"), SGD, (0.1, 0.2), held=("a",), intervals=(("a", 2),)),
                  [(bwd, Value("grads", ("a", "b")))])
    p.add(Drift(EMPTY, "a", 2), p.after([group]))
    graph = ScheduleGraph([Stage("train", 1, [p], (0,))], table({"a": 2, "b": 1}))
    graph.verify()


# ---- exports ------------------------------------------------------------------------------------


def test_json_round_trip() -> None:
    graph = two()
    p1 = graph.stage.patterns[1]
    p1.add(UpdateGroup(EMPTY, "g", ("body",), ADAM, (0.25,), "triton", ("body",), intervals=(("body", 2),)),
           [(p1.op("backward"), Value("grads", ("body",)))])
    p1.add(Drift(EMPTY, "body", 2), p1.after([p1.op("update_group.g")]))
    graph.lr_schedule = Rule("cosine", (("warmup", 20),), ("warmup",))
    graph.notes.append("a note")
    text = graph.to_json()
    data = json.loads(text)
    stage = data["stages"][0]
    assert (stage["name"], stage["period"], stage["pattern_of"]) == ("train", 2, [0, 1])
    assert [p["steps"] for p in stage["patterns"]] == [[0], [1]]
    assert data["partitions"]["body"] == {"params": ["body.weight", "body.bias"], "numel": 10, "every": 2,
                                          "drift": "none", "random": "", "fraction": 0.0, "per": ""}
    assert [o["id"] for o in stage["patterns"][1]["ops"]] == [o.id for o in graph.at(1)]
    assert ["loss", "backward", "loss", []] in stage["patterns"][0]["edges"]
    node = next(o for o in stage["patterns"][1]["ops"] if o["id"] == "update_group.g")
    assert node["kind"] == "update_group" and node["partitions"] == ["body"]
    assert (node["lrs"], node["kernel"], node["held"]) == ([0.25], "triton", ["body"])
    assert node["rule"] == {"record": "Rule", "name": "adam", "args": [["betas", [0.9, 0.999]]], "shown": []}
    up = next(o for o in stage["patterns"][0]["ops"] if o["id"] == "update.body")
    assert up["rule"]["args"] == [["momentum", 0.9]] and up["lr"] == pytest.approx(0.2)
    again = ScheduleGraph.from_json(text)
    again.verify()
    assert list(again.ops()) == list(graph.ops())  # equal records, tuples restored
    assert again.stage.patterns[0].op("forward") == Forward(EMPTY, 0, None, ("body", "head"))
    assert again.stage.patterns[1].op("update_group.g").rule == ADAM
    for a, b in zip(again.stage.patterns, graph.stage.patterns, strict=True):
        assert sorted(a.g.edges(data="value")) == sorted(b.g.edges(data="value"))
        assert a.steps == b.steps
    assert again.stage.pattern_of == graph.stage.pattern_of
    assert again.partitions == graph.partitions and again.lr_schedule == graph.lr_schedule
    assert again.notes == ["a note"]
    assert again.to_text() == graph.to_text()
    assert again.to_json() == text


def test_json_round_trip_of_brains() -> None:
    graph = brains_graph()
    again = ScheduleGraph.from_json(graph.to_json())
    again.verify()
    assert list(again.ops()) == list(graph.ops())
    assert again.table(BRAINS) == graph.table(BRAINS) and again.table(BRAINS).final_merge == MergeRule("mean")
    assert again.stage.patterns[1].op("merge.fast+slow").merge == MergeRule("weighted", (1.0, 3.0))
    assert again.to_text() == graph.to_text() and again.to_json() == graph.to_json()


def test_dot_lists_patterns_scopes_nodes_and_edges() -> None:
    dot = two().to_dot()
    assert dot.startswith("digraph schedule {")
    assert "subgraph cluster_g0p0 {" in dot and 'label="train steps 1";' in dot
    assert '"g0p0/forward" [label="forward model [grad \\{body, head\\}]"];' in dot
    assert '"g0p0/loss" -> "g0p0/backward" [label="loss"];' in dot
    assert '"g0p1/backward" -> "g0p1/update.head" [label="grads\\{head\\}"];' in dot
    assert dot.count(" -> ") == 6 + 5
    bdot = brains_graph().to_dot()
    assert 'subgraph cluster_g0p0__slow { label="brain=slow";' in bdot
    assert '"g0p1/update_group.all@fast" -> "g0p1/merge.fast+slow";' in bdot  # order: no label


def test_lcm() -> None:
    assert lcm([]) == 1
    assert lcm([1, 1]) == 1
    assert lcm([2, 3, 4]) == 12
    assert lcm([5]) == 5
    assert lcm(range(1, 9)) == 840


def test_a_forward_range_is_named_by_the_fewest_whole_submodules() -> None:
    from mrc.ir.ops import Forward, covering

    layers = ("stem.0", "stem.1", "layer1.0.a", "layer1.0.b", "layer1.1.a", "layer1.1.b", "layer2.0.a", "head")
    assert covering(layers, 0, 4) == ["stem", "layer1.0"]
    assert covering(layers, 4, 8) == ["layer1.1", "layer2", "head"]
    assert covering(layers, 3, 5) == ["layer1.0.b", "layer1.1.a"]
    assert Forward(start=0, stop=4).named(layers) == "forward model[stem, layer1.0] [no_grad]"
    assert Forward(start=2, stop=None).named(layers) == "forward model[layer1, layer2, head] [no_grad]"
    assert Forward().named(layers) == "forward model [no_grad]"  # the whole model
    assert Forward(start=0, stop=4).named(()) == "forward model[:4] [no_grad]"  # no names known
