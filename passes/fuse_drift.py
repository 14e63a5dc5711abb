"""fuse-drift: fold linear drift into the fused update call of its rule.

Requires: kernels chosen (run after select-kernels).
Ensures: for an update group on a fused SGD kernel (`torch` or `triton`), each drift op that runs
right after it (same scope, same rule: the step's last gradient point) is folded into it — a
drifting partition the group updates takes its first 1/k in the update itself (its drift op is
removed: the fused update of a held partition moves it by 1/k of the new step), and one the group
does not update joins its `drifting` list and takes its drift step in the same kernel call. A
drift op with no such group after which it runs stays, lowered to a drift-only call of its rule.

With `first_fast_gradient = after_slow`, a slow partition may update at the first gradient point
and the drifting ones at the second: only a group at the second point takes the drift, so no
partition drifts before the second gradient is taken, and none drifts twice.

Example (rule sgd with `b` drifting every 4, `a` every 2), step 2:
    before:  update_group a {a} … kernel=torch;  drift b by 0.25 of its step
    after:   update_group a {a} … kernel=torch + drift {b}
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.ir.graph import ScheduleGraph
from mrc.ir.ops import UpdateGroup
from mrc.optim.families import sgd_like
from mrc.techniques.multirate.ops import Drift

FUSED = ("torch", "triton")


@dataclass(frozen=True)
class FuseDrift(Pass):
    name: ClassVar[str] = "fuse-drift"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        rule_of = {}
        for op in graph.ops():
            if isinstance(op, UpdateGroup):
                for n in op.partitions:
                    rule_of[(op.scope, n)] = op
        for p in out.patterns():
            for drift in list(p.of_kind(Drift)):
                owner = rule_of.get((drift.scope, drift.partition))
                if owner is None or owner.kernel not in FUSED or not sgd_like(owner.rule.name):
                    continue
                before = [g for g in p.preds(drift) if isinstance(g, UpdateGroup) and g.scope == drift.scope
                          and g.rule == owner.rule and g.kernel in FUSED]
                last = max((g.phase for g in p.of_kind(UpdateGroup) if g.scope == drift.scope), default=0)
                group = next((g for g in before if g.phase == last), None)
                if group is None:
                    continue
                if drift.partition not in group.partitions:
                    new = replace(group, drifting=(*group.drifting, drift.partition),
                                  intervals=(*group.intervals, (drift.partition, drift.every)))
                    p.replace(group, new)
                    group = new
                for s, v in p.outputs(drift):
                    p.connect(group, s, v)
                p.remove(drift)
        out.reindex()
        return out
