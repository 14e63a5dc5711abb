"""The interface every pass implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mrc.ir.graph import ScheduleGraph


@dataclass(frozen=True)
class Pass:
    """A rewrite of the schedule graph. Subclasses set `name` and implement `apply`, which
    returns a new graph (the input is left untouched)."""

    name: ClassVar[str] = "pass"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        raise NotImplementedError
