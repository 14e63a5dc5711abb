"""group-updates: merge the updates of one step that share an integrator into one group.

Requires: a verified graph of `update` nodes.
Ensures: on every step, updates with the same rule (optimizer and hyper-parameters) and the same
learning-rate scale become one `update_group` over all their partitions, so the runtime makes one
optimizer call (and, on a GPU, one fused kernel launch) per group instead of one per partition.
Groups are named by the partitions they hold.

Example, step 0 with `head` and `body` both `sgd(lr=0.1)` at lr×1:
    before:  update head sgd(lr=0.1) lr×1;  update body sgd(lr=0.1) lr×1
    after:   update_group body+head {body, head} sgd(lr=0.1) lr×1 kernel=torch.optim
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.graph import ScheduleGraph, Update, UpdateGroup


@dataclass(frozen=True)
class GroupUpdates(Pass):
    name: ClassVar[str] = "group-updates"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        order = list(graph.partitions)
        for step in range(graph.period):
            buckets: dict[tuple[str, float, float | None, int], list[Update]] = {}
            for op in out.at(step):
                if isinstance(op, Update):
                    buckets.setdefault((op.rule, op.scale, op.lr, op.phase), []).append(op)
            for (rule, scale, lr, phase), ups in buckets.items():
                ups.sort(key=lambda u: order.index(u.partition))
                parts = tuple(u.partition for u in ups)
                held = tuple(u.partition for u in ups if u.drift)
                group = UpdateGroup(step, "+".join(parts), parts, rule, scale, lr, "torch.optim", held,
                                    phase)
                deps = {p.id: p for u in ups for p in out.preds(u)}
                succs = {s.id: s for u in ups for s in out.succs(u)}
                for u in ups:
                    out.remove(u)
                out.add(group, deps.values())
                for s in succs:
                    out.g.add_edge(group.id, s)
        return out
