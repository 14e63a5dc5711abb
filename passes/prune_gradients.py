"""prune-gradients: differentiate, on each step, only the partitions that update on that step.

Requires: a verified graph whose backward nodes may list partitions that no update after them
uses.
Ensures: each backward differentiates exactly the partitions that the updates right after it
move, and each forward tracks exactly what the backwards below it (same step and phase) need, in
partition order; a forward, loss or backward that feeds no update is removed (a step that
updates nothing keeps none of them).

Example (head every step, backbone every 2 steps), step 1:
    before:  forward model [grad {backbone, head}]; backward wrt {backbone, head}; update head
    after:   forward model [grad {head}];           backward wrt {head};           update head
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import networkx as nx
from mrc.passes.base import Pass

from mrc.graph import Backward, Forward, Loss, ScheduleGraph, Update, UpdateGroup


@dataclass(frozen=True)
class PruneGradients(Pass):
    name: ClassVar[str] = "prune-gradients"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        order = list(graph.partitions)
        needs: dict[str, set[str]] = {}  # backward id → partitions its successor updates move
        for op in graph.ops():
            if isinstance(op, Backward):
                moved: set[str] = set()
                for succ in graph.succs(op):
                    if isinstance(succ, Update):
                        moved.add(succ.partition)
                    elif isinstance(succ, UpdateGroup):
                        moved.update(succ.partitions)
                needs[op.id] = moved
        for op in graph.ops():
            if isinstance(op, Backward):
                needed = tuple(p for p in order if p in needs[op.id])
            elif isinstance(op, Forward | Loss):
                below = set().union(*(needs[d] for d in nx.descendants(graph.g, op.id)
                                      if d in needs and graph.op(d).step == op.step
                                      and graph.op(d).phase == op.phase))
                needed = tuple(p for p in order if p in below)
            else:
                continue
            if not needed:
                out.remove(op)
            elif isinstance(op, Backward) and op.wrt != needed:
                out.replace(op, replace(op, wrt=needed))
            elif isinstance(op, Forward) and op.grad and op.grad != needed:
                out.replace(op, replace(op, grad=needed))
        return out
