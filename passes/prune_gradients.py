"""prune-gradients: differentiate, on each step, only the partitions that update on that step.

Requires: a verified graph whose backward nodes may list partitions that no update of their step
and phase uses.
Ensures: each forward tracks, and each backward differentiates, exactly the partitions updated in
its step and phase (in partition order); a step that updates nothing keeps no forward, loss or
backward at all.

Example (head every step, backbone every 2 steps), step 1:
    before:  forward model [grad {backbone, head}]; backward wrt {backbone, head}; update head
    after:   forward model [grad {head}];           backward wrt {head};           update head
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.graph import Backward, Forward, Loss, ScheduleGraph, Update, UpdateGroup


@dataclass(frozen=True)
class PruneGradients(Pass):
    name: ClassVar[str] = "prune-gradients"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        order = list(graph.partitions)
        for step in range(graph.period):
            ops = out.at(step)
            updated: dict[int, set[str]] = {}
            for op in ops:
                if isinstance(op, Update):
                    updated.setdefault(op.phase, set()).add(op.partition)
                elif isinstance(op, UpdateGroup):
                    updated.setdefault(op.phase, set()).update(op.partitions)
            for op in ops:
                if not isinstance(op, Forward | Loss | Backward):
                    continue
                needed = tuple(p for p in order if p in updated.get(op.phase, ()))
                if not needed:
                    out.remove(op)
                elif isinstance(op, Backward) and op.wrt != needed:
                    out.replace(op, replace(op, wrt=needed))
                elif isinstance(op, Forward) and op.grad and op.grad != needed:
                    out.replace(op, replace(op, grad=needed))
        return out
