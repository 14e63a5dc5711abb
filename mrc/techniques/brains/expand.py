"""Multirate across networks ("brains") in the schedule graph: each brain is a replica scope.

Brain i (rate k_i) steps on the global steps t with t % k_i == 0, as its own step n = t / k_i,
and so reaches time t + k_i; after global step t, the brains whose time is t + 1 (k_i divides
t + 1) have arrived together, and two or more of them are merged. Within a brain, its partitions
follow their own rates on its own steps (mrc/techniques/multirate), at k_i times their step
sizes (or at `lr`/base times them for a brain that sets `lr`). Batches: `data = shared` — the
batch of the global step; `data = own` — the n-th batch of an order of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from mrc.binding import Bound
from mrc.ir.graph import Pattern, lcm
from mrc.ir.ops import EMPTY, Batch, Op, Rule, Scope
from mrc.ir.tables import TableKind
from mrc.program import Brain, Merge
from mrc.techniques.base import Expansion, ReplicaStep
from mrc.techniques.brains.ops import Merge as MergeOp
from mrc.techniques.brains.ops import MergeRule
from mrc.techniques.brains.tables import BRAINS, Brains, ReplicaInfo
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


class BrainReplication:
    """The brains as replicas of the schedule (see the module docstring): the period is the
    lcm of each brain's rate times the replica period; a global step is which brains step (at
    which of their own step signatures) and which land together; its ops are each stepping
    brain's step, then the merge of the brains that land together."""

    def __init__(self, bound: Bound) -> None:
        self.bound = bound
        self.brains = bound.program.brains
        self.merge = merge_rule(bound.program.merge)
        self.rules = {b.name: brain_rules(bound, b) for b in self.brains}

    def period(self, inner: int) -> int:
        return lcm(b.every * inner for b in self.brains)

    def signature(self, t: int, step: Callable[[int], Hashable]) -> Hashable:
        stepping = tuple(step(t // b.every) if t % b.every == 0 else None for b in self.brains)
        arriving = landing(self.brains, t) if self.merge is not None else ()
        return stepping, arriving if len(arriving) >= 2 else ()

    def expand(self, pattern: Pattern, t: int, step: ReplicaStep) -> None:
        tails: list[Op] = []
        for b in self.brains:
            if t % b.every == 0:
                batch = brain_batch(self.bound, b)
                tails += step(pattern, batch.scope, t // b.every, batch, self.rules[b.name])
        arriving = landing(self.brains, t)
        if self.merge is not None and len(arriving) >= 2:
            pattern.add(MergeOp(EMPTY, arriving, self.merge), pattern.after(tails))


def replication(bound: Bound) -> BrainReplication | None:
    return BrainReplication(bound) if bound.program.brains else None


def tables(bound: Bound) -> Mapping[TableKind[Any], Any]:
    """The brains' table (none without brains)."""
    if not bound.program.brains:
        return {}
    from mrc.techniques.brains.batchable import obstacle

    why = stack_obstacle(bound) or (
        obstacle(bound.graph_module) if bound.graph_module is not None else "the model is not traced")
    return {BRAINS: Brains(replica_table(bound), merge_rule(bound.program.merge), why)}


def stack_obstacle(bound: Bound) -> str:
    """Why the brains' integrators cannot run stacked ("" when they can): one SGD-family rule,
    the same for every brain up to its step size, no partitions, and batches of one size (a brain
    with its own batch order and every > 1 is at another place in its epoch than a brain on the
    shared order, so an epoch's short last batch would meet a full one)."""
    from mrc.optim.families import sgd_like

    program = bound.program
    if program.mgrit:
        return "the MGRIT solve runs each brain's stack on its own copy"
    if program.modules is not None:
        return "module-wise brains train each brain's modules on its own copy"
    if program.partitions:
        return "each brain runs its own partition schedule"
    comps = [b.optimizer or program.optimizer for b in program.brains]
    names = {c.name for c in comps}
    if not all(sgd_like(n) for n in names):
        return f"the batched update is SGD-momentum, and the brains use {', '.join(sorted(names))}"
    rest = {rule_of(c) for c in comps}
    if len(rest) > 1:
        return "the brains' integrators differ in more than their step size"
    # on step t a brain reads batch t of the shared order, or batch t // every of its own: brains
    # whose positions in their epochs differ can step together on a short last batch and a full one
    strides = {b.every if b.data == "own" else 1 for b in program.brains}
    data = getattr(bound, "data", None)
    if len(strides) > 1 and data is not None and data.loaders is None and not data.drop_last \
            and data.batch_size > 0 and data.train_size % data.batch_size:
        n, size = data.train_size, data.batch_size
        return (f"brains with their own batch order (`data = own`) and `every` > 1 can step together "
                f"on batches of different sizes ({n} training examples in batches of {size} end each "
                f"epoch with {n % size}); `drop_last = true` lets them run batched")
    return ""


EXPANSION = Expansion(replicas=replication, tables=tables)
