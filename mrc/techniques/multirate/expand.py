"""Multirate within a network in the schedule graph (seeds/multirate-training.md).

The naive expansion of one step of a replica (the whole model when there are no brains): the
step's batch, a forward of the whole model tracking every partition, the loss, a backward to
every partition, then an update of each partition whose rate divides the replica's own step n (a
partition with `every = k` moves on steps 0, k, 2k, …: the slow step comes first), and for each
partition with linear drift a drift by 1/k of its last step. Passes then prune and group this.

With `multirate(first_fast_gradient = after_slow)` (the seed's literal no-drift loop), a step on
which slow partitions (every > 1, no drift) update runs in two phases: the slow partitions are
differentiated and updated first, then the model runs again for the other partitions' gradient at
the moved point.

Learning rates: a partition's `lr`, else the base rate of its rule times its `every` (the seed's
h_S = k·h_F; random-subset partitions step every step with h); a brain multiplies them by its
own scale (mrc/techniques/brains).
"""

from __future__ import annotations

from typing import Any

from mrc.binding import Bound
from mrc.ir.graph import PartitionInfo, Pattern
from mrc.ir.ops import Backward, Batch, Forward, Loss, Op, Rule, Scope, Update, Value
from mrc.losses import op_fields
from mrc.program import Component, SelectSample
from mrc.techniques.base import Expansion
from mrc.techniques.multirate.bind import BoundPartition
from mrc.techniques.multirate.ops import Drift
from mrc.techniques.random_subsets.expand import add_resamples, add_restores, is_random


def base_lr(comp: Component) -> float:
    """The learning rate a rule's spec gives (or its registry default)."""
    from mrc.optim import OPTIMIZERS

    if "lr" in comp.kwargs:
        return float(comp.kwargs["lr"])
    entry = OPTIMIZERS.get(comp.name)
    param = entry.param("lr") if entry else None
    return float(param.default) if param is not None and not param.required else 1e-3


def rule_of(comp: Component) -> Rule:
    """The graph's record of an integrator: every hyper-parameter but the learning rate."""
    def hashable(v: Any) -> Any:
        return tuple(hashable(x) for x in v) if isinstance(v, list | tuple) else v

    return Rule(comp.name, tuple((k, hashable(v)) for k, v in comp.kwargs.items() if k != "lr"),
                tuple(k for k in comp.arg_spans if k != "lr"))


def drifts(part: BoundPartition) -> bool:
    """Linear drift over an interval of one step is no drift at all (k = 1 is plain SGD)."""
    return part.spec.drift != "none" and part.spec.every > 1


def partition_table(bound: Bound) -> dict[str, PartitionInfo]:
    out = {}
    for p in bound.partitions:
        sel = p.spec.selector
        sample = f"{sel.fraction:g}/{sel.per}" if isinstance(sel, SelectSample) else ""
        out[p.name] = PartitionInfo(p.params, p.numel, p.spec.every, p.spec.drift if drifts(p) else "none",
                                    sel.describe() if is_random(p) else "",
                                    sel.fraction if is_random(p) else 0.0, sel.per if is_random(p) else "",
                                    tuple(p.mask_of()), sample)
    return out


def partition_lr(part: BoundPartition, comp: Component) -> float:
    if part.spec.lr is not None:
        return float(part.spec.lr)
    return base_lr(comp) * (1.0 if is_random(part) else float(part.spec.every))


def updating(parts: list[BoundPartition], n: int) -> list[BoundPartition]:
    """The partitions that update on the replica's own step n (random subsets: every step)."""
    return [p for p in parts if n % p.spec.every == 0 or is_random(p)]


def signature(parts: list[BoundPartition], n: int) -> tuple[bool, ...]:
    """What distinguishes step n's pattern: which partitions' intervals start on it."""
    return tuple(n % p.spec.every == 0 for p in parts)


def expand_step(pattern: Pattern, bound: Bound, scope: Scope, n: int, batch: Batch,
                rule_for: dict[str, tuple[Rule, float]], after: list[Op] = ()) -> list[Op]:
    """Add one step of the replica `scope` (its own step n) to `pattern`; `rule_for` gives each
    partition's rule and learning rate. Returns the ops the step ends with."""
    program = bound.program
    parts = list(bound.partitions)
    names = tuple(p.name for p in parts)
    loss_fields = op_fields(program)
    literal = program.first_fast_gradient == "after_slow"
    moving = updating(parts, n)
    slow_first = [p for p in moving if p.spec.every > 1 and not drifts(p) and not is_random(p)]
    phases = [slow_first, [p for p in moving if p not in slow_first]] \
        if literal and slow_first and len(slow_first) < len(moving) else [moving]
    batch = pattern.add(batch, pattern.after(after))
    last: list[Op] = add_restores(pattern, parts, scope, n)
    for phase, members in enumerate(phases):
        fwd = pattern.add(Forward(scope, 0, None, names, phase), [(batch, Value("batch")), *pattern.after(last)])
        loss = pattern.add(Loss(scope, phase=phase, **loss_fields),
                           [(fwd, Value("logits")), (batch, Value("batch"))])
        bwd = pattern.add(Backward(scope, names, "autograd", program.train.grad_clip, phase), [(loss, Value("loss"))])
        last = []
        for p in members:
            rule, lr = rule_for[p.name]
            last.append(pattern.add(Update(scope, p.name, rule, lr, drifts(p), phase, p.spec.every),
                                    [(bwd, Value("grads", (p.name,)))]))
    tail = list(last)
    for p in parts:
        if drifts(p):
            tail.append(pattern.add(Drift(scope, p.name, p.spec.every), pattern.after(last)))
    tail += add_resamples(pattern, parts, scope, n, tail)
    return tail


def rates(bound: Bound) -> tuple[int, ...]:
    """Each partition's rate: its interval starts distinguish the step patterns."""
    return tuple(p.spec.every for p in bound.partitions)


EXPANSION = Expansion(rates=rates)
