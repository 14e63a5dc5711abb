"""How brains are drawn (mrc.ir.draw): merges, and a group of timeline rows per brain."""

from __future__ import annotations

from mrc.ir.draw import Cell, Drawing, View
from mrc.ir.graph import ScheduleGraph
from mrc.ir.ops import Op
from mrc.techniques.brains.tables import BRAINS


def _merge(op: Op, view: View) -> list[Cell]:
    """A merge marks every partition of the brains it merges."""
    brains = tuple(getattr(op, "brains", ())) or None
    return [Cell("M", ("p", p), replicas=brains) for p in view.graph.partitions]


def _replicas(graph: ScheduleGraph) -> dict[str, str]:
    return {name: f"brain {name} — {info.text()}" for name, info in graph.table(BRAINS).replicas.items()}


DRAWING = Drawing(
    groups={"merge": ("#80cdc1", "merge")},
    kinds={"merge": "merge"},
    marks={"M": ("merge of brains", "#80cdc1")},
    mark={"merge": _merge},
    replicas=_replicas,
    words=lambda graph: " of a brain" if graph.table(BRAINS).replicas else "",
)
