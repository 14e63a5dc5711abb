"""Lowerings of random-subset regularization: restore, resample, and the subset integrator
(mrc/techniques/random_subsets/integrator.py: RandomSubsetSGD), one per replica and partition.

The ops drive the integrator: a `resample` draws the next subset with its own fraction, scope
and interval k, a `restore` starts that interval (the subset rejoins; this step's update gives it
the slow step k·h). The integrator's kernel is the update group's (`subset.torch` or
`subset.triton`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mrc.ir.graph import Pattern
from mrc.ir.ops import UpdateGroup
from mrc.lower.plan import Env, Lowering, LoweringError, StepFn, lowers
from mrc.techniques.core.lower import replica
from mrc.techniques.random_subsets.integrator import RandomSubsetSGD
from mrc.techniques.random_subsets.ops import Resample, Restore

SUBSET_KERNELS = {"subset.torch": "torch", "subset.triton": "triton"}
"""The update-group kernels of a random-subset partition → the integrator's own kernel."""


@dataclass
class SubsetState:
    """The random-subset integrators of one lowering, by (replica, partition)."""

    integrators: dict[tuple[str, str], RandomSubsetSGD] = field(default_factory=dict)


def subset_integrator(ctx: Lowering, r: str, partition: str) -> RandomSubsetSGD:
    from mrc.optim.families import sgd_hyper

    made = ctx.state_of(SubsetState).integrators
    integ = made.get((r, partition))
    if integ is None:
        owner = ctx.owners.get((r, partition))
        if owner is None:
            raise LoweringError(f"random-subset partition {partition} never updates")
        kernel = SUBSET_KERNELS.get(owner.kernel)
        if kernel is None:
            raise LoweringError(f"{owner.id}: a random-subset partition updates on kernel `{owner.kernel}`, "
                                f"not one of {sorted(SUBSET_KERNELS)}")
        integ = RandomSubsetSGD(ctx.replicas.params(ctx.graph, r, partition), lr=ctx.lr_of(r, partition),
                                seed=ctx.run.seed, salt=partition, **sgd_hyper(owner.rule.name, owner.rule.kwargs),
                                kernel=kernel)
        made[(r, partition)] = integ
        ctx.integrators[(r, "subset", partition)] = integ
        ctx.subsets[(r, partition)] = integ
    return integ


@lowers("restore")
def lower_restore(op: Restore, pattern: Pattern, ctx: Lowering) -> StepFn:
    integ = subset_integrator(ctx, replica(op), op.partition)

    def restore(env: Env) -> None:
        integ.start()
    return restore


@lowers("resample")
def lower_resample(op: Resample, pattern: Pattern, ctx: Lowering) -> StepFn:
    integ = subset_integrator(ctx, replica(op), op.partition)
    fraction, per, every = op.fraction, op.per, op.every

    def resample(env: Env) -> None:
        integ.resample(fraction, per, every)
    return resample


@lowers("update_group", when=lambda op, ctx: op.kernel in SUBSET_KERNELS)
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
