"""Ops that run on a cadence of their own: evaluation and checkpoints.

A step pattern holds what happens within a period of lcm(rates) steps. How often a run evaluates
and saves is no multiple of that period (every 50 steps, or each epoch's end, against a period
of 3, say), and it counts the run's global steps and epochs across stages and laps, not a
stage's clock. Written into the step patterns, a cadence of N steps would blow the period up to
lcm(rates, N) and the pattern count with it, and an epoch's end (which depends on the data's
size) could not be written at all. So the graph holds these ops once, beside its stages
(`ScheduleGraph.cadence`), each with its cadence; `mrc graph` prints them, and the training loop
(mrc/runtime/trainer.py) runs them from there. Both also run at the run's last step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mrc.ir.ops import Op, op_kind


def _every(every: int) -> str:
    return f"every={every} steps" if every else "every=epoch"


@op_kind
@dataclass(frozen=True, slots=True)
class Evaluate(Op):
    """Evaluate the final model (and the models techniques add) on the validation split and
    each named evaluation set, every `every` global steps (0: at each epoch's end) and at the
    run's last step."""

    kind: ClassVar[str] = "eval"
    rank: ClassVar[int] = 90
    every: int = 0

    def text(self) -> str:
        return f"eval {_every(self.every)} and at the end"


@op_kind
@dataclass(frozen=True, slots=True)
class Checkpoint(Op):
    """Save the run's state every `every` global steps (0: at each epoch's end), kept once the
    next step's loss is known to be finite, and at the run's end (or when it is stopped)."""

    kind: ClassVar[str] = "checkpoint"
    rank: ClassVar[int] = 91
    every: int = 0

    def text(self) -> str:
        return f"checkpoint {_every(self.every)} and at the end"


def cadence_of(settings: Any) -> tuple[Op, ...]:
    """The cadence ops of a run's `train` settings (`eval_every`, `checkpoint_every`)."""
    return (Evaluate(every=settings.eval_every), Checkpoint(every=settings.checkpoint_every))


__all__ = ["Checkpoint", "Evaluate", "cadence_of"]
