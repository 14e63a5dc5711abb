"""What brains add to the IR: the merge op and its rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mrc.ir.ops import Op, names, op_kind, record


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
    optimizer state as its `momentum` says) and go on from the merged point."""

    kind: ClassVar[str] = "merge"
    rank: ClassVar[int] = 8
    brains: tuple[str, ...] = ()
    merge: MergeRule = MergeRule()

    def key(self) -> str:
        return f".{'+'.join(self.brains)}"

    def text(self) -> str:
        return f"merge {names(self.brains)} {self.merge.text()}"
