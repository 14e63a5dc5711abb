"""How MGRIT is drawn (mrc.ir.draw): its phase ops, and a timeline row per level of each stack."""

from __future__ import annotations

from mrc.ir.draw import Cell, Drawing, Lane, View
from mrc.ir.graph import ScheduleGraph
from mrc.ir.ops import Op
from mrc.techniques.mgrit.tables import STACKS

COLOUR = "#bebada"
MARKS = {"mgrit_relax": "X", "mgrit_restrict": "↓", "mgrit_coarse_solve": "C", "mgrit_correct": "↑",
         "mgrit_serial": "S"}


def _phase(op: Op, view: View) -> list[Cell]:
    """A phase of a solve marks its level's row of its stack (the serial fallback, the fine level's)."""
    stack, level = getattr(op, "stack", ""), max(op.scope.level, 0)
    return [Cell(MARKS[op.kind], ("L", stack, level), f"{stack} level {level}")]


def _lanes(graph: ScheduleGraph) -> list[Lane]:
    return [Lane(f"mgrit {stack} — {info.levels} levels",
                 tuple((("L", stack, level), f"{stack} level {level}") for level in range(info.levels)))
            for stack, info in graph.table(STACKS).items()]


DRAWING = Drawing(
    groups={"mgrit": (COLOUR, "mgrit_*")},
    kinds={**dict.fromkeys(MARKS, "mgrit"), "mgrit_sum_grads": "mgrit"},
    marks={"X": ("MGRIT relaxation", COLOUR), "↓": ("MGRIT restriction", COLOUR), "C": ("MGRIT coarse solve", COLOUR),
           "↑": ("MGRIT correction", COLOUR), "S": ("serial fallback of an MGRIT stack", COLOUR)},
    mark=dict.fromkeys(MARKS, _phase),
    lanes=_lanes,
    words=lambda graph: " or an MGRIT level" if graph.table(STACKS) else "",
)
