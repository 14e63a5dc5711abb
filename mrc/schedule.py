"""Bound program → the initial schedule graph: one period, every partition differentiated on
every step (the naive schedule). Passes then prune and group it."""

from __future__ import annotations

from mrc.binding import Bound
from mrc.graph import Backward, Forward, Loss, ScheduleGraph, Update, lcm


def period_of(bound: Bound) -> int:
    """The least common multiple of every partition's rate."""
    return lcm(p.spec.every for p in bound.partitions)


def rule_of(bound: Bound, partition: str) -> str:
    part = next(p for p in bound.partitions if p.name == partition)
    comp = part.spec.optimizer or bound.program.optimizer
    return comp.describe()


def build_graph(bound: Bound) -> ScheduleGraph:
    """The naive period: each step runs the whole model with autograd, back-propagates to every
    partition, then updates the partitions whose rate divides the step (slow partitions move on
    step 0 of their interval, as in the seed's algorithms)."""
    period = period_of(bound)
    graph = ScheduleGraph(period)
    names = tuple(p.name for p in bound.partitions)
    for part in bound.partitions:
        graph.partitions[part.name] = {
            "tensors": len(part.params), "numel": part.numel, "every": part.spec.every,
            "rule": rule_of(bound, part.name),
        }
    smoothing = bound.program.train.label_smoothing
    for step in range(period):
        fwd = graph.add(Forward(step, "model", names))
        loss = graph.add(Loss(step, "cross_entropy", smoothing), [fwd])
        bwd = graph.add(Backward(step, names), [loss])
        for part in bound.partitions:
            spec = part.spec
            if step % spec.every == 0:
                graph.add(Update(step, part.name, rule_of(bound, part.name),
                                 float(spec.every), spec.lr), [bwd])
    graph.meta["layers"] = list(bound.layers)
    graph.meta["params"] = {p.name: list(p.params) for p in bound.partitions}
    graph.verify()
    return graph
