"""The op kinds random-subset regularization adds: restore and resample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mrc.ir.ops import Op, op_kind


@op_kind
@dataclass(frozen=True, slots=True)
class Restore(Op):
    """Random-subset regularization: the held-out subset of a partition rejoins the weights for
    this step's gradient (the start of its interval: this step's update moves the subset by its
    slow step k·h, k the interval of the resample that drew it)."""

    kind: ClassVar[str] = "restore"
    rank: ClassVar[int] = 1
    partition: str = ""

    def key(self) -> str:
        return f".{self.partition}"

    def text(self) -> str:
        return f"restore {self.partition}"

    def partitions_used(self) -> tuple[str, ...]:
        return (self.partition,)


@op_kind
@dataclass(frozen=True, slots=True)
class Resample(Op):
    """Random-subset regularization: draw the next subset (`fraction` of the elements, per tensor
    or global) of a partition and hold it at zero until its next restore, `every` steps later
    (k = `every`: the restored subset's slow step is k·h)."""

    kind: ClassVar[str] = "resample"
    rank: ClassVar[int] = 7
    partition: str = ""
    fraction: float = 0.0
    per: str = "tensor"
    every: int = 1

    def key(self) -> str:
        return f".{self.partition}"

    def text(self) -> str:
        return f"resample {self.partition} ({self.fraction:g} per {self.per}, every {self.every})"

    def partitions_used(self) -> tuple[str, ...]:
        return (self.partition,)
