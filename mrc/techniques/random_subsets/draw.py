"""How random-subset restores and resamples are drawn (mrc.ir.draw)."""

from __future__ import annotations

from mrc.ir.draw import Cell, Drawing

DRAWING = Drawing(
    groups={"restore": ("#e5c494", "restore / resample")},
    kinds={"restore": "restore", "resample": "restore"},
    marks={"r": ("restore (the held-out subset rejoins)", "#e5c494"),
           "R": ("resample (a new subset is held out)", "#e5c494")},
    mark={"restore": lambda op, view: [Cell("r", ("p", getattr(op, "partition", "")))],
          "resample": lambda op, view: [Cell("R", ("p", getattr(op, "partition", "")))]},
)
