"""Lowerings of random-subset regularization: restore, resample, and the subset integrator
(mrc/runtime/subset.py: RandomSubsetSGD), one per replica and partition."""

from __future__ import annotations

from typing import Any

from mrc.ir.graph import Pattern
from mrc.ir.ops import UpdateGroup
from mrc.lower.plan import Env, Lowering, LoweringError, StepFn, lowers
from mrc.techniques.brains.tables import BRAINS
from mrc.techniques.core.lower import replica
from mrc.techniques.random_subsets.ops import Resample, Restore


def subset_integrator(ctx: Lowering, r: str, partition: str) -> Any:
    from mrc.optim.families import sgd_hyper
    from mrc.runtime.subset import RandomSubsetSGD

    key = (r, "subset", partition)
    integ = ctx.integrators.get(key)
    if integ is None:
        owner = ctx.owners.get((r, partition))
        if owner is None:
            raise LoweringError(f"random-subset partition {partition} never updates")
        info = ctx.graph.partitions[partition]
        integ = RandomSubsetSGD(ctx.replicas.params(ctx.graph, r, partition), lr=ctx.lr_of(r, partition),
                                every=info.every, fraction=info.fraction, per=info.per,
                                seed=ctx.bound.program.train.seed, salt=partition,
                                **sgd_hyper(owner.rule.name, owner.rule.kwargs),
                                kernel=owner.kernel.partition(".")[2] or "torch")
        ctx.integrators[key] = integ
        ctx.subsets[(r, partition)] = integ
    return integ


@lowers("restore")
def lower_restore(op: Restore, pattern: Pattern, ctx: Lowering) -> StepFn:
    integ = subset_integrator(ctx, replica(op), op.partition)

    def restore(env: Env) -> None:
        integ.restore()
    return restore


@lowers("resample")
def lower_resample(op: Resample, pattern: Pattern, ctx: Lowering) -> StepFn:
    r = replica(op)
    integ = subset_integrator(ctx, r, op.partition)
    stride = ctx.graph.table(BRAINS).replicas[r].every if r else 1
    every = op.every

    def resample(env: Env) -> None:
        integ.resample(env.t // stride // every)
    return resample


@lowers("update_group", when=lambda op, ctx: op.kernel.startswith("subset."))
def subset_update(op: UpdateGroup, pattern: Pattern, ctx: Lowering) -> StepFn:
    if len(op.partitions) != 1:
        raise LoweringError(f"{op.id}: a random-subset update moves one partition")
    integ = subset_integrator(ctx, replica(op), op.partitions[0])
    group = integ.param_groups[0]
    lr = op.lrs[0]

    def step(env: Env) -> None:
        group["lr"] = lr * env.mult
        integ.step()
    return step

