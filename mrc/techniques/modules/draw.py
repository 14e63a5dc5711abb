"""How module-wise training is drawn (mrc.ir.draw): auxiliary heads and local losses, and the
modules as groups of timeline rows."""

from __future__ import annotations

from mrc.ir.draw import Cell, Drawing, View
from mrc.ir.ops import Op
from mrc.techniques.modules.tables import MODULES


def _aux_head(op: Op, view: View) -> list[Cell]:
    """An auxiliary head runs forward through the partitions of its own parameters."""
    prefix = getattr(op, "path", "") + "."
    return [Cell("F", ("p", n)) for n, info in view.graph.partitions.items()
            if any(p.startswith(prefix) for p in info.params)]


DRAWING = Drawing(
    groups={"aux_head": ("#f4cae4", "aux_head / local_loss")},
    kinds={"aux_head": "aux_head", "local_loss": "aux_head"},
    mark={"aux_head": _aux_head, "local_loss": lambda op, view: []},
    groups_of_scope=lambda graph: list(graph.table(MODULES)),
)
