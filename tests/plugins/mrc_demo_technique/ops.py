"""The `ema` op: fold the replica's weights into their moving average."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mrc.ir.ops import Op, op_kind


@op_kind
@dataclass(frozen=True, slots=True)
class Ema(Op):
    """e ← decay·e + (1 − decay)·θ over every weight of the op's replica (after its updates)."""

    kind: ClassVar[str] = "ema"
    rank: ClassVar[int] = 9
    decay: float = 0.99

    def text(self) -> str:
        return f"ema of the weights decay={self.decay:g}"
