"""The schedule graph: ids, deterministic order and printing, the invariants `verify()` checks,
and the JSON round trip."""

from __future__ import annotations

import json
import random

import pytest

from mrc.graph import (
    Backward,
    Forward,
    GraphError,
    Loss,
    Op,
    ScheduleGraph,
    Update,
    UpdateGroup,
    lcm,
)

SGD = "sgd(lr=0.1)"
ADAM = "adam(lr=0.001)"


def partitions() -> dict[str, dict[str, object]]:
    return {"body": {"tensors": 4, "numel": 1152, "every": 2, "rule": SGD},
            "head": {"tensors": 2, "numel": 90, "every": 1, "rule": SGD}}


def naive_ops(period: int = 2) -> list[tuple[Op, list[Op]]]:
    """(op, deps) of the naive period-2 schedule: `head` every step, `body` every 2 steps."""
    out: list[tuple[Op, list[Op]]] = []
    for step in range(period):
        fwd = Forward(step=step, segment="model", grad=("body", "head"))
        loss = Loss(step=step, fn="cross_entropy", label_smoothing=0.1)
        bwd = Backward(step=step, wrt=("body", "head"))
        out += [(fwd, []), (loss, [fwd]), (bwd, [loss])]
        if step % 2 == 0:
            out.append((Update(step=step, partition="body", rule=SGD, scale=2.0), [bwd]))
        out.append((Update(step=step, partition="head", rule=SGD, scale=1.0, lr=0.05), [bwd]))
    return out


def build(ops: list[tuple[Op, list[Op]]], period: int = 2) -> ScheduleGraph:
    graph = ScheduleGraph(period, partitions())
    for op, deps in ops:
        graph.add(op, deps)
    return graph


def shuffled(ops: list[tuple[Op, list[Op]]], seed: int) -> list[tuple[Op, list[Op]]]:
    """The same nodes in another order that still adds every node after its dependencies."""
    rng = random.Random(seed)
    left, done, out = list(ops), set(), []
    while left:
        ready = [item for item in left if all(d.id in done for d in item[1])]
        item = rng.choice(ready)
        left.remove(item)
        done.add(item[0].id)
        out.append((item[0], rng.sample(item[1], len(item[1]))))
    return out


def test_ids_are_derived_from_step_kind_and_key() -> None:
    assert Forward(step=0, segment="model").id == "s0.forward.model"
    assert Loss(step=3).id == "s3.loss"
    assert Backward(step=1, wrt=("a",)).id == "s1.backward"
    assert Update(step=2, partition="head", rule=SGD).id == "s2.update.head"
    group = UpdateGroup(step=0, name="body+head", partitions=("body", "head"), rule=SGD)
    assert group.id == "s0.update_group.body+head"


def test_construction_and_queries() -> None:
    graph = build(naive_ops())
    assert len(graph.g) == 9 and graph.g.number_of_edges() == 7
    graph.verify()
    ids = [op.id for op in graph.ops()]
    assert ids == ["s0.forward.model", "s0.loss", "s0.backward", "s0.update.body",
                   "s0.update.head", "s1.forward.model", "s1.loss", "s1.backward",
                   "s1.update.head"]
    assert [op.id for op in graph.at(1)] == ids[5:]
    assert [op.id for op in graph.of_kind(Update)] == ["s0.update.body", "s0.update.head",
                                                       "s1.update.head"]
    bwd = graph.op("s0.backward")
    assert isinstance(bwd, Backward) and bwd.wrt == ("body", "head")
    assert [o.id for o in graph.succs(bwd)] == ["s0.update.body", "s0.update.head"]
    assert [o.id for o in graph.preds(bwd)] == ["s0.loss"]


def test_adding_a_node_twice_is_an_error() -> None:
    graph = build(naive_ops())
    with pytest.raises(GraphError, match=r"s0\.loss added twice"):
        graph.add(Loss(step=0))


def test_text_form() -> None:
    assert build(naive_ops()).to_text() == """\
schedule period=2
  partition body: tensors=4 numel=1152 every=2 rule=sgd(lr=0.1)
  partition head: tensors=2 numel=90 every=1 rule=sgd(lr=0.1)
step 0:
  %0 = forward model [grad {body, head}]
  %1 = loss cross_entropy(label_smoothing=0.1)  after %0
  %2 = backward wrt {body, head}  after %1
  %3 = update body sgd(lr=0.1) lr×2  after %2
  %4 = update head sgd(lr=0.1) lr=0.05  after %2
step 1:
  %0 = forward model [grad {body, head}]
  %1 = loss cross_entropy(label_smoothing=0.1)  after %0
  %2 = backward wrt {body, head}  after %1
  %3 = update head sgd(lr=0.1) lr=0.05  after %2
"""


@pytest.mark.parametrize("seed", range(6))
def test_order_does_not_depend_on_insertion_order(seed: int) -> None:
    reference = build(naive_ops())
    other = build(shuffled(naive_ops(), seed))
    assert [op.id for op in other.ops()] == [op.id for op in reference.ops()]
    assert other.to_text() == reference.to_text()
    assert other.to_json() == reference.to_json()
    assert other.to_dot() == reference.to_dot()


def test_order_breaks_ties_by_step_kind_then_id() -> None:
    # two independent forwards of one step: listed by id; updates after them by kind rank
    graph = ScheduleGraph(1, {"a": {}, "b": {}})
    graph.add(Update(step=0, partition="b", rule=SGD))
    graph.add(Forward(step=0, segment="z", grad=()))
    graph.add(Update(step=0, partition="a", rule=SGD))
    graph.add(Forward(step=0, segment="y", grad=()))
    assert [op.id for op in graph.ops()] == ["s0.forward.y", "s0.forward.z", "s0.update.a",
                                             "s0.update.b"]
    # but a dependency always wins over the tie-break
    graph.g.add_edge("s0.update.b", "s0.forward.y")
    assert [op.id for op in graph.ops()].index("s0.update.b") < \
        [op.id for op in graph.ops()].index("s0.forward.y")


def test_replace_keeps_edges_and_copy_is_independent() -> None:
    graph = build(naive_ops())
    copy = graph.copy()
    old = graph.op("s1.backward")
    new = Backward(step=1, wrt=("head",))
    copy.replace(old, new)
    assert [o.id for o in copy.preds(new)] == ["s1.loss"]
    assert [o.id for o in copy.succs(new)] == ["s1.update.head"]
    assert copy.op("s1.backward") == new
    assert graph.op("s1.backward") == old  # the original is untouched
    copy.partitions["head"]["every"] = 7
    copy.meta["x"] = 1
    assert graph.partitions["head"]["every"] == 1 and "x" not in graph.meta


# ---- verify() -------------------------------------------------------------------------------


def broken(change) -> ScheduleGraph:  # type: ignore[no-untyped-def]
    graph = build(naive_ops())
    graph.verify()
    change(graph)
    return graph


def _cycle(g: ScheduleGraph) -> None:
    g.g.add_edge("s0.update.head", "s0.forward.model")


def _outside(g: ScheduleGraph) -> None:
    fwd = g.add(Forward(step=2, segment="model", grad=("head",)))
    loss = g.add(Loss(step=2), [fwd])
    g.add(Backward(step=2, wrt=("head",)), [loss])


def _negative_step(g: ScheduleGraph) -> None:
    g.add(Forward(step=-1, segment="model", grad=()))


def _unknown_in_update(g: ScheduleGraph) -> None:
    g.add(Update(step=0, partition="tail", rule=SGD), [g.op("s0.backward")])


def _unknown_in_forward(g: ScheduleGraph) -> None:
    g.replace(g.op("s1.forward.model"), Forward(step=1, segment="model", grad=("head", "neck")))


def _update_without_backward(g: ScheduleGraph) -> None:
    g.remove(g.op("s1.update.head"))
    g.add(Update(step=1, partition="head", rule=SGD), [g.op("s1.loss")])


def _update_not_differentiated(g: ScheduleGraph) -> None:
    g.replace(g.op("s0.backward"), Backward(step=0, wrt=("head",)))
    g.replace(g.op("s0.forward.model"), Forward(step=0, segment="model", grad=("head",)))


def _update_after_other_steps_backward(g: ScheduleGraph) -> None:
    # the gradient must come from the update's own step
    g.remove(g.op("s1.update.head"))
    g.add(Update(step=1, partition="head", rule=SGD), [g.op("s0.backward")])


def _backward_without_loss(g: ScheduleGraph) -> None:
    g.remove(g.op("s1.loss"))
    g.g.add_edge("s1.forward.model", "s1.backward")


def _backward_untracked(g: ScheduleGraph) -> None:
    g.replace(g.op("s1.forward.model"), Forward(step=1, segment="model", grad=("head",)))


def _double_update(g: ScheduleGraph) -> None:
    g.add(UpdateGroup(step=0, name="head2", partitions=("head",), rule=ADAM),
          [g.op("s0.backward")])


def _bad_period(g: ScheduleGraph) -> None:
    g.period = 0


@pytest.mark.parametrize(("change", "message"), [
    (_cycle, r"the schedule has a cycle: .*s0\.forward\.model"),
    (_outside, r"s2\.forward\.model: step 2 outside the period 0…1"),
    (_negative_step, r"step -1 outside the period 0…1"),
    (_unknown_in_update, r"s0\.update\.tail: unknown partition `tail`"),
    (_unknown_in_forward, r"s1\.forward\.model: unknown partition `neck`"),
    (_update_without_backward, r"s1\.update\.head: updates \['head'\] without a backward"),
    (_update_not_differentiated, r"s0\.update\.body: updates \['body'\] without a backward"),
    (_update_after_other_steps_backward, r"s1\.update\.head: updates \['head'\] without"),
    (_backward_without_loss, r"s1\.backward: a backward needs the loss of its step"),
    (_backward_untracked, r"s1\.backward: differentiates \['body'\] but no forward"),
    (_double_update, r"step 0: partition head is updated twice"),
    (_bad_period, r"period must be ≥ 1, not 0"),
])
def test_verify_catches_each_broken_invariant(change, message: str) -> None:  # type: ignore[no-untyped-def]
    graph = broken(change)
    with pytest.raises(GraphError, match=message):
        graph.verify()


def test_verify_accepts_a_no_grad_prefix_and_grouped_updates() -> None:
    graph = ScheduleGraph(1, {"a": {}, "b": {}})
    pre = graph.add(Forward(step=0, segment="model[:2]", grad=()))
    post = graph.add(Forward(step=0, segment="model[2:]", grad=("a", "b")), [pre])
    loss = graph.add(Loss(step=0), [post])
    bwd = graph.add(Backward(step=0, wrt=("a", "b")), [loss])
    graph.add(UpdateGroup(step=0, name="a+b", partitions=("a", "b"), rule=SGD), [bwd])
    graph.verify()


# ---- exports --------------------------------------------------------------------------------


def test_json_round_trip() -> None:
    graph = build(naive_ops())
    graph.add(UpdateGroup(step=1, name="g", partitions=("body",), rule=ADAM, scale=0.5,
                          lr=0.25, kernel="triton"), [graph.op("s1.backward")])
    text = graph.to_json()
    data = json.loads(text)
    assert data["period"] == 2 and data["partitions"] == partitions()
    assert [n["id"] for n in data["nodes"]] == [op.id for op in graph.ops()]
    assert ["s0.loss", "s0.backward"] in data["edges"]
    node = next(n for n in data["nodes"] if n["id"] == "s1.update_group.g")
    assert node["kind"] == "update_group" and node["partitions"] == ["body"]
    assert (node["scale"], node["lr"], node["kernel"]) == (0.5, 0.25, "triton")
    again = ScheduleGraph.from_json(text)
    again.verify()
    assert list(again.ops()) == list(graph.ops())  # equal records, tuples restored
    assert again.op("s0.forward.model") == Forward(step=0, segment="model", grad=("body", "head"))
    assert sorted(again.g.edges) == sorted(graph.g.edges)
    assert again.to_text() == graph.to_text()
    assert again.to_json() == text


def test_dot_lists_steps_nodes_and_edges() -> None:
    dot = build(naive_ops()).to_dot()
    assert dot.startswith("digraph schedule {")
    assert 'subgraph cluster_s0 {' in dot and 'label="step 1";' in dot
    assert '"s0.forward.model" [label="forward model [grad \\{body, head\\}]"];' in dot
    assert '"s0.loss" -> "s0.backward";' in dot
    assert dot.count(" -> ") == 7


def test_lcm() -> None:
    assert lcm([]) == 1
    assert lcm([1, 1]) == 1
    assert lcm([2, 3, 4]) == 12
    assert lcm([5]) == 5
