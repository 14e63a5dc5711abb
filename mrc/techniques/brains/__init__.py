"""Multirate across networks ("brains"): copies of one network, each on its own time-scale, merged
by a merge rule (mean, weighted, best, ema) whenever two or more reach the same time."""

from __future__ import annotations

from mrc.techniques.base import PassAt, Technique

TECHNIQUE = Technique(
    "brains",
    check="mrc.techniques.brains.check",
    ops=("mrc.techniques.brains.ops", "mrc.techniques.brains.lower", "mrc.techniques.brains.ranks"),
    tables=("mrc.techniques.brains.tables:BRAINS",),
    expand="mrc.techniques.brains.expand:EXPANSION",
    passes=(PassAt("batch-brains", "mrc.passes.batch_brains:BatchBrains", after="fuse-drift"),),
    place={"brains": "mrc.techniques.brains.place:place_brains"},
    artifacts=("brains",),
    draw="mrc.techniques.brains.draw:DRAWING",
)
