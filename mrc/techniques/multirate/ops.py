"""The op kind multirate adds: linear drift."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from mrc.ir.ops import GraphError, Op, op_kind

if TYPE_CHECKING:
    from mrc.ir.graph import Pattern


@op_kind
@dataclass(frozen=True, slots=True)
class Drift(Op):
    """Move a partition by 1/k of the step its last update computed, k = `every` its interval
    (linear drift: the seed's θ_S ← θ_S − (h/k) p_S on each of the k steps of its interval)."""

    kind: ClassVar[str] = "drift"
    rank: ClassVar[int] = 6
    partition: str = ""
    every: int = 1

    def key(self) -> str:
        return f".{self.partition}"

    @property
    def fraction(self) -> float:
        """The part of the held step each drift moves: 1/k."""
        return 1.0 / self.every

    def text(self) -> str:
        return f"drift {self.partition} by {self.fraction:g} of its step"

    def verify(self, pattern: Pattern) -> None:
        if self.every < 1:
            raise GraphError(f"{self.id}: a drift interval of {self.every} steps")

    def partitions_used(self) -> tuple[str, ...]:
        return (self.partition,)
