"""group-updates: merge the updates of one step that share an integrator into one group.

Requires: a verified graph of `update` ops.
Ensures: on every step, the updates of one scope and gradient point with the same rule (optimizer
and hyper-parameters but the learning rate) become one `update_group` over all their partitions
(a random-subset partition keeps a group of its own: its integrator is its own),
each with its own learning rate, so the runtime makes one optimizer call (and, on a GPU, one fused
kernel launch) per group instead of one per partition. Groups are named by their partitions.

Example, step 0 with `head` and `body` both `sgd(momentum=0.9)`, at lr 0.1 and 0.5:
    before:  update head sgd(momentum=0.9) lr=0.1;  update body sgd(momentum=0.9) lr=0.5
    after:   update_group body+head {body, head} sgd(momentum=0.9) lr=[0.5, 0.1] kernel=torch.optim
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.ir.graph import ScheduleGraph
from mrc.ir.ops import Op, Rule, Scope, Update, UpdateGroup, Value


@dataclass(frozen=True)
class GroupUpdates(Pass):
    name: ClassVar[str] = "group-updates"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        order = {n: i for i, n in enumerate(graph.partitions)}
        for p in out.patterns():
            buckets: dict[tuple[Scope, Rule, int, str], list[Update]] = {}
            for op in p.ops():
                if isinstance(op, Update):  # a random-subset partition has an integrator of its own
                    own = op.partition if graph.partitions[op.partition].random else ""
                    buckets.setdefault((op.scope, op.rule, op.phase, own), []).append(op)
            for (scope, rule, phase, _), ups in buckets.items():
                ups.sort(key=lambda u: order[u.partition])
                parts = tuple(u.partition for u in ups)
                group = UpdateGroup(scope, "+".join(parts), parts, rule, tuple(u.lr for u in ups), "torch.optim",
                                    tuple(u.partition for u in ups if u.held), (), phase,
                                    tuple((u.partition, u.every) for u in ups if u.held))
                ins: dict[str, tuple[Op, Value]] = {}
                outs: dict[str, tuple[Op, Value]] = {}
                for u in ups:
                    for src, v in p.inputs(u):
                        if v.kind == "grads" and src.id in ins:
                            v = Value("grads", (*ins[src.id][1].partitions, *v.partitions))
                        ins[src.id] = (src, v)
                    for dst, v in p.outputs(u):
                        outs[dst.id] = (dst, v)
                for u in ups:
                    p.remove(u)
                p.add(group, ins.values())
                for dst, v in outs.values():
                    p.connect(group, dst, v)
        out.reindex()
        return out
