"""What brains add to the IR: the merge op and its rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mrc.ir.ops import GraphError, Op, names, op_kind, record

if TYPE_CHECKING:
    from mrc.ir.graph import Pattern


@record
@dataclass(frozen=True, slots=True)
class MergeRule:
    """How brains that reach the same time are merged (mrc/techniques/brains)."""

    rule: str = "mean"
    weights: tuple[float, ...] = ()
    metric: str = "val_loss"
    decay: float = 0.9
    momentum: str = "keep"

    def text(self) -> str:
        extra = []
        if self.rule == "weighted":
            extra.append("weights=[" + ", ".join(f"{w:g}" for w in self.weights) + "]")
        if self.rule == "best":
            extra.append(f"metric={self.metric}")
        if self.rule == "ema":
            extra.append(f"decay={self.decay:g}")
        if self.momentum != "keep":
            extra.append(f"momentum={self.momentum}")
        return self.rule + (f"({', '.join(extra)})" if extra else "")

    def to_json(self) -> dict[str, Any]:
        return {"record": "MergeRule", "rule": self.rule, "weights": list(self.weights), "metric": self.metric,
                "decay": self.decay, "momentum": self.momentum}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MergeRule:
        return cls(data["rule"], tuple(data["weights"]), data["metric"], data["decay"], data["momentum"])


@op_kind
@dataclass(frozen=True, slots=True)
class Merge(Op):
    """Brains that reach the same time are merged by `merge` (their parameters, and their
    optimizer state as its `momentum` says) and go on from the merged point.

    collective: "" — the merge runs in one process (every brain it merges is there); in a run
    with brains on ranks (mrc/techniques/brains/ranks.py), a merge over brains of several ranks
    is a collective of all `world` ranks: `all_reduce` (mean, weighted, ema: each rank sums its
    brains' weighted states, one SUM over the ranks) or `all_gather` (best: the validation
    metrics gathered, the winner's state broadcast from its rank)."""

    kind: ClassVar[str] = "merge"
    rank: ClassVar[int] = 8
    brains: tuple[str, ...] = ()
    merge: MergeRule = MergeRule()
    collective: str = ""
    world: int = 1

    COLLECTIVES: ClassVar[tuple[str, ...]] = ("", "all_reduce", "all_gather")

    def key(self) -> str:
        return f".{'+'.join(self.brains)}"

    def text(self) -> str:
        out = f"merge {names(self.brains)} {self.merge.text()}"
        if self.collective == "all_reduce":
            out += f" all_reduce sum over {self.world} ranks"
        elif self.collective == "all_gather":
            out += f" all_gather {self.merge.metric} + broadcast winner over {self.world} ranks"
        return out

    def verify(self, pattern: Pattern) -> None:
        if self.collective not in self.COLLECTIVES:
            raise GraphError(f"{self.id}: unknown collective `{self.collective}`")
        if self.collective and self.world < 2:
            raise GraphError(f"{self.id}: a collective merge over a world of {self.world}")
        if self.collective and (self.collective == "all_gather") != (self.merge.rule == "best"):
            raise GraphError(f"{self.id}: a `{self.merge.rule}` merge cannot be an {self.collective}")
        if self.collective and self.scope.rank >= 0:
            raise GraphError(f"{self.id}: a collective merge runs on every rank, not on rank {self.scope.rank}")
