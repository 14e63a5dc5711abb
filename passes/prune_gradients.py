"""prune-gradients: differentiate, on each step, only the partitions that update on that step.

Requires: a verified graph whose backward ops may list partitions that no update after them uses.
Ensures: each backward differentiates exactly the partitions that the updates it feeds move, and
each forward and loss track exactly what the backwards below them (same scope and phase) need, in
partition order; a forward, loss or backward that feeds no update is removed (a forward that
feeds the next module's forward is kept, without autograd), and so is a pure op (Op.pure: an
auxiliary head) whose value nothing reads any more, and a batch
that no op reads any more (a step that updates nothing keeps none of them).

Example (head every step, backbone every 2 steps), step 1:
    before:  forward model [grad {head, backbone}]; backward wrt {head, backbone}; update head
    after:   forward model [grad {head}];           backward wrt {head};           update head
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.ir.graph import Pattern, ScheduleGraph
from mrc.ir.ops import Backward, Batch, Forward, Loss, Update, UpdateGroup


def _prune(p: Pattern, order: list[str]) -> None:
    needs: dict[str, set[str]] = {}
    for op in p.ops():
        if isinstance(op, Backward):
            moved: set[str] = set()
            for succ in p.succs(op):
                if isinstance(succ, Update):
                    moved.add(succ.partition)
                elif isinstance(succ, UpdateGroup):
                    moved.update(succ.partitions)
            needs[op.id] = moved
    for op in reversed(list(p.ops())):  # consumers first: a forward knows whether one is left
        if isinstance(op, Backward):
            needed = tuple(n for n in order if n in needs[op.id])
        elif isinstance(op, Forward | Loss):
            below = set().union(*(needs[d.id] for d in p.descendants(op) if d.id in needs
                                  and d.scope == op.scope and d.phase == op.phase))
            needed = tuple(n for n in order if n in below)
        elif op.pure:
            if not any(v.kind != "order" for _, v in p.outputs(op)):
                p.remove(op)
            continue
        else:
            continue
        if not needed and isinstance(op, Forward) and _feeds_forward(p, op):
            # a module-wise forward whose own partitions do not move still feeds the next module
            if op.grad:
                p.replace(op, replace(op, grad=()))
        elif not needed:
            p.remove(op)
        elif isinstance(op, Backward) and op.wrt != needed:
            p.replace(op, replace(op, wrt=needed))
        elif isinstance(op, Forward) and op.grad and op.grad != needed:
            p.replace(op, replace(op, grad=needed))
    for op in list(p.ops()):
        if isinstance(op, Batch) and not p.succs(op):
            p.remove(op)


def _feeds_forward(p: Pattern, op: Forward) -> bool:
    return any(isinstance(s, Forward) and v.kind in ("activation", "detached") for s, v in p.outputs(op))


@dataclass(frozen=True)
class PruneGradients(Pass):
    name: ClassVar[str] = "prune-gradients"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        order = list(graph.partitions)
        for p in out.patterns():
            _prune(p, order)
        out.reindex()
        return out
