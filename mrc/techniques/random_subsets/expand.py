"""Random-subset regularization in the schedule graph (seeds/multirate-training.md,
"Neural network regularization").

A random-subset partition updates on every step (its held-out subset is held at zero while the
rest takes fast steps h). At the start of each interval of `every` steps its subset is restored
before the forward (`restore`), so that step's gradient is taken at the full weights and the
subset takes one slow step k·h; after the step's updates a new subset is drawn and held at zero
(`resample`).
"""

from __future__ import annotations

from mrc.ir.graph import Pattern
from mrc.ir.ops import Op, Scope
from mrc.program import SelectRandom
from mrc.techniques.multirate.bind import BoundPartition
from mrc.techniques.random_subsets.ops import Resample, Restore


def is_random(part: BoundPartition) -> bool:
    return isinstance(part.spec.selector, SelectRandom)


def interval_starts(part: BoundPartition, n: int) -> bool:
    """Whether the replica's own step n starts an interval of this random-subset partition."""
    return is_random(part) and n % part.spec.every == 0


def add_restores(pattern: Pattern, parts: list[BoundPartition], scope: Scope, n: int) -> list[Op]:
    """`restore` ops for the partitions whose interval starts on step n (run before the forward)."""
    return [pattern.add(Restore(scope, p.name)) for p in parts if interval_starts(p, n)]


def add_resamples(pattern: Pattern, parts: list[BoundPartition], scope: Scope, n: int, after: list[Op]) -> list[Op]:
    """`resample` ops at the end of the step for the partitions whose interval starts on step n."""
    out = []
    for p in parts:
        if interval_starts(p, n):
            sel = p.spec.selector
            out.append(pattern.add(Resample(scope, p.name, sel.fraction, sel.per, p.spec.every),
                                   pattern.after(after)))
    return out
