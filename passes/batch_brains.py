"""batch-brains: brains that step on the same step run as one batched computation.

Requires: a brains graph (one forward, loss, backward and update per stepping brain) whose
meta["batchable"] is true (the model has a batched form and the brains share an SGD-family
integrator up to their step sizes; see mrc.schedule.batch_obstacle).
Ensures: on every step, the brains' forwards, losses, backwards and updates become one each over
all the brains stepping then: `forward batched{…}`, `update_group brains{…} kernel=stacked`.
Graphs that are not batchable are left as they are (their header says why).

Example (fast every step, slow every 4 steps), step 0:
    before:  forward fast; forward slow; …; update fast lr×1; update slow lr×4
    after:   forward batched{fast, slow}; loss; backward wrt {fast, slow};
             update_group brains{fast, slow} kernel=stacked
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.graph import Backward, Forward, Loss, Merge, ScheduleGraph, Update, UpdateGroup


@dataclass(frozen=True)
class BatchBrains(Pass):
    name: ClassVar[str] = "batch-brains"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        if not graph.meta.get("brains") or not graph.meta.get("batchable"):
            return graph
        out = graph.copy()
        for step in range(graph.period):
            ops = out.at(step)
            fwds = [op for op in ops if isinstance(op, Forward)]
            if not fwds:
                continue
            brains = tuple(b for f in fwds for b in f.grad)
            ups = [op for op in ops if isinstance(op, Update | UpdateGroup)]
            merges = [op for op in ops if isinstance(op, Merge)]
            rule = ups[0].rule.partition("(")[0] if ups else ""
            for op in ops:
                if not isinstance(op, Merge):
                    out.remove(op)
            label = "{" + ", ".join(brains) + "}"
            fwd = out.add(Forward(step, f"batched{label}", brains))
            loss = out.add(Loss(step, "cross_entropy", _smoothing(ops), of="batched"), [fwd])
            bwd = out.add(Backward(step, brains, of="batched"), [loss])
            group = out.add(UpdateGroup(step, f"brains{label}", brains, f"{rule}(per-brain lr)", 1.0, None,
                                        "stacked"), [bwd])
            for m in merges:
                out.g.add_edge(group.id, m.id)
        return out


def _smoothing(ops: list) -> float:
    return next((op.label_smoothing for op in ops if isinstance(op, Loss)), 0.0)
