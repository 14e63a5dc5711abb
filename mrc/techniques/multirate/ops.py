"""The op kind multirate adds: linear drift."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mrc.ir.ops import Op, op_kind


@op_kind
@dataclass(frozen=True, slots=True)
class Drift(Op):
    """Move a partition by `fraction` of the step its last update computed (linear drift: the
    seed's θ_S ← θ_S − (h/k) p_S on each of the k steps of its interval)."""

    kind: ClassVar[str] = "drift"
    rank: ClassVar[int] = 6
    partition: str = ""
    fraction: float = 1.0

    def key(self) -> str:
        return f".{self.partition}"

    def text(self) -> str:
        return f"drift {self.partition} by {self.fraction:g} of its step"

    def partitions_used(self) -> tuple[str, ...]:
        return (self.partition,)
