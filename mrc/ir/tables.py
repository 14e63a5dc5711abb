"""The kinds of table a technique keeps on the schedule graph.

The graph's core knows its stages, partitions, layers, device, kernels, learning-rate schedule,
notes, laps and precision. Everything else a technique decides once for the whole schedule — its
replicas, the pieces it cuts the model into, its placement on processes — is a *table*: a frozen value
of a `TableKind` the technique registers (mrc/techniques). The graph stores each table by kind and
copies, prints, writes and reads it through the kind, so `ScheduleGraph` names no technique.

A table is replaced (`ScheduleGraph.set_table`), never changed in place: a copy of the graph
shares its tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

if TYPE_CHECKING:
    from mrc.ir.graph import ScheduleGraph

T = TypeVar("T")


@dataclass(frozen=True, slots=True, eq=False)
class TableKind(Generic[T]):
    """One kind of table. `name`: its key in the graph (and the technique's word for it);
    `empty`: the value of a graph that has none; `encode`: its top-level JSON keys (an empty
    dict writes none); `decode`: the value back from the whole JSON object (None: not there);
    `header`: its lines in the listing's header, printed at `place` — `top`, before the
    partitions (what the ops' scopes name), or `bottom`, after them and the
    precision (how the run is placed); `verify`: the graph invariants the table implies."""

    name: str
    empty: Callable[[], T]
    encode: Callable[[T], dict[str, Any]]
    decode: Callable[[dict[str, Any]], T | None]
    header: Callable[[T], list[str]]
    place: Literal["top", "bottom"] = "top"
    verify: Callable[[ScheduleGraph, T], None] | None = None

    def __repr__(self) -> str:
        return f"TableKind({self.name!r})"


__all__ = ["TableKind"]
