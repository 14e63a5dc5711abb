"""How multirate's drift is drawn (mrc.ir.draw)."""

from __future__ import annotations

from mrc.ir.draw import Cell, Drawing

DRAWING = Drawing(
    groups={"drift": ("#ffff99", "drift")},
    kinds={"drift": "drift"},
    marks={"D": ("drift", "#ffff99")},
    mark={"drift": lambda op, view: [Cell("D", ("p", getattr(op, "partition", "")))]},
)
