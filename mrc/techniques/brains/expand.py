"""Multirate across networks ("brains") in the schedule graph: each brain is a replica scope.

Brain i (rate k_i) steps on the global steps t with t % k_i == 0, as its own step n = t / k_i,
and so reaches time t + k_i; after global step t, the brains whose time is t + 1 (k_i divides
t + 1) have arrived together, and two or more of them are merged. Within a brain, its partitions
follow their own rates on its own steps (mrc/techniques/multirate), at k_i times their step
sizes (or at `lr`/base times them for a brain that sets `lr`). Batches: `data = shared` — the
batch of the global step; `data = own` — the n-th batch of an order of its own.
"""

from __future__ import annotations

from mrc.binding import Bound
from mrc.ir.graph import ReplicaInfo
from mrc.ir.ops import Batch, Rule, Scope
from mrc.program import Brain, Merge
from mrc.techniques.brains.ops import MergeRule
from mrc.techniques.multirate.expand import base_lr, partition_lr, rule_of


def merge_rule(merge: Merge | None) -> MergeRule | None:
    if merge is None:
        return None
    return MergeRule(merge.rule, tuple(merge.weights), merge.metric, merge.decay, merge.momentum)


def replica_table(bound: Bound) -> dict[str, ReplicaInfo]:
    return {b.name: ReplicaInfo(b.every, b.data) for b in bound.program.brains}


def brain_rules(bound: Bound, brain: Brain) -> dict[str, tuple[Rule, float]]:
    """Each partition's rule and learning rate inside `brain`."""
    program = bound.program
    comp_b = brain.optimizer or program.optimizer
    out = {}
    for p in bound.partitions:
        comp = p.spec.optimizer or comp_b
        if not program.partitions:  # the whole model: the brain's own step size, exactly
            lr = brain.lr if brain.lr is not None else base_lr(comp) * brain.every
        else:
            scale = brain.lr / base_lr(comp_b) if brain.lr is not None else float(brain.every)
            lr = scale * partition_lr(p, comp)
        out[p.name] = (rule_of(comp), float(lr))
    return out


def brain_batch(bound: Bound, brain: Brain) -> Batch:
    index = [b.name for b in bound.program.brains].index(brain.name)
    scope = Scope((brain.name,))
    if brain.data == "own":
        return Batch(scope, "own", brain.every, index + 1)
    return Batch(scope)


def landing(brains: tuple[Brain, ...], t: int) -> tuple[str, ...]:
    """The brains whose time after global step t is t + 1."""
    return tuple(b.name for b in brains if (t + 1) % b.every == 0)
