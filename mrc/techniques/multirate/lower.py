"""Lowering of linear drift (seeds/multirate-training.md): θ_S ← θ_S − (h/k)·p_S on each of the
k steps of a slow partition's interval.

On a fused SGD kernel the drift op left after fuse-drift is one drift-only call of the rule's
kernel; otherwise the partition moves by `fraction` of the step its held update kept.
"""

from __future__ import annotations

import torch

from mrc.ir.graph import Pattern
from mrc.lower.plan import Env, Lowering, LoweringError, StepFn, lowers
from mrc.techniques.core.lower import FUSED, drift_buffers, fused_integrator, replica
from mrc.techniques.multirate.ops import Drift


@lowers("drift")
def lower_drift(op: Drift, pattern: Pattern, ctx: Lowering) -> StepFn:
    r = replica(op)
    owner = ctx.owners.get((r, op.partition))
    if owner is None:
        raise LoweringError(f"{op.id}: partition {op.partition} drifts but never updates")
    if owner.kernel in FUSED:
        integ = fused_integrator(owner, ctx)
        name, intervals = (op.partition,), ((op.partition, op.every),)

        def fused_drift(env: Env) -> None:
            integ.mult = env.mult
            integ.step_partitions((), name, intervals)
        return fused_drift
    params = ctx.replicas.params(ctx.graph, r, op.partition)
    deltas = drift_buffers(ctx, r, op.partition)
    fraction = op.fraction

    def drift(env: Env) -> None:
        with torch.no_grad():
            torch._foreach_add_(params, deltas, alpha=fraction)
    return drift
