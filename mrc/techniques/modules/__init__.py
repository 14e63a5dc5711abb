"""Module-wise training (seeds/module-wise-trgl.md): modules with auxiliary heads, transport
regularization (TRGL, VanGL) and the parallel, sequential and multi-lap regimes."""

from __future__ import annotations

from mrc.techniques.base import Technique

TECHNIQUE = Technique(
    "modules",
    check="mrc.techniques.modules.check",
    ops=("mrc.techniques.modules.ops", "mrc.techniques.modules.lower"),
    bind="mrc.techniques.modules.bind:bind",
    split="mrc.techniques.modules.bind:split",
    tables=("mrc.techniques.modules.tables:MODULES",),
    expand="mrc.techniques.modules.expand:EXPANSION",
    place={"pipeline": "mrc.techniques.modules.place:place_pipeline"},
    artifacts=("aux.pt",),
    draw="mrc.techniques.modules.draw:DRAWING",
)
