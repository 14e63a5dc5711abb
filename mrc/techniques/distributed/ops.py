"""The op kinds of multi-process training: a rank's shard of the batch, and the all-reduce of a
bucket of gradients.

`shard` stands between the step's batch and everything that reads it: each rank takes its
contiguous share of the global batch (the shares as even as can be), so the global batch, its
order and the learning rate stay what one process would use. `all_reduce` stands between a
backward and the updates that read its gradients: the gradients of exactly the partitions those
updates move are summed over the ranks, each rank's weighted by its share of the batch — so the
result is the gradient of the global batch's mean loss, as one process computes it. A partition
that does not update on a step is not in that step's bucket: a slow partition with `every = k`
is communicated once every k steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from mrc.ir.ops import GraphError, Op, names, op_kind

if TYPE_CHECKING:
    from mrc.ir.graph import Pattern


@op_kind
@dataclass(frozen=True, slots=True)
class Shard(Op):
    """This rank's contiguous share of the batch on its input edge, of `world` shares.
    `batchnorm`: `global` — the model's batch-norm layers normalise over the whole batch, not
    the shard (mrc/techniques/distributed/batchnorm.py), so the run is the one-process run."""

    kind: ClassVar[str] = "shard"
    rank: ClassVar[int] = 1
    world: int = 1
    batchnorm: str = ""
    pure: ClassVar[bool] = True

    def text(self) -> str:
        extra = ", batch norm over the whole batch" if self.batchnorm == "global" else ""
        return f"shard batch 1/{self.world} per rank{extra}"

    def verify(self, pattern: Pattern) -> None:
        if not any(v.kind == "batch" for _, v in pattern.inputs(self)):
            raise GraphError(f"{self.id}: a shard needs a batch as input")
        if self.world < 2:
            raise GraphError(f"{self.id}: a shard of a world of {self.world}")


@op_kind
@dataclass(frozen=True, slots=True)
class AllReduce(Op):
    """Sum the gradients of the partitions `grads` over the ranks in flat buckets (one collective per
    integrator's flat gradient span, one for the rest). `how`: `mean` scales each rank's by its
    share of the batch first (the shards' weighted mean: the gradient one process computes for
    the whole batch); `sum` adds them as they are (ranks that each computed part of them)."""

    kind: ClassVar[str] = "all_reduce"
    rank: ClassVar[int] = 4
    grads: tuple[str, ...] = ()
    world: int = 1
    how: str = "mean"
    phase: int = 0
    clip: float = 0.0
    """Clip the reduced gradients' norm to this (> 0): the backward's clipping, moved after the
    reduction so that it sees the global batch's gradient."""

    def key(self) -> str:
        return "." + "+".join(self.grads)

    def text(self) -> str:
        clip = f" clip={self.clip:g}" if self.clip else ""
        return f"all_reduce grads {names(self.grads)} {self.how} over {self.world} ranks{clip}"

    def partitions_used(self) -> tuple[str, ...]:
        return self.grads

    def verify(self, pattern: Pattern) -> None:
        if self.how not in ("mean", "sum"):
            raise GraphError(f"{self.id}: reduces by `{self.how}` (mean or sum)")
        got = set().union(*(v.partitions for _, v in pattern.inputs(self) if v.kind == "grads"))
        missing = [p for p in self.grads if p not in got]
        if missing:
            raise GraphError(f"{self.id}: reduces {missing} but no backward hands it their gradients")
