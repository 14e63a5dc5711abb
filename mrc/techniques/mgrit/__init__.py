"""Layer-parallel training by multigrid-in-time (seeds/layer-parallel-mgrit.md): the generic MGRIT solver."""

from __future__ import annotations

from mrc.techniques.base import PassAt, Technique

TECHNIQUE = Technique(
    "mgrit",
    check="mrc.techniques.mgrit.check",
    ops=("mrc.techniques.mgrit.ops", "mrc.techniques.mgrit.lower"),
    bind="mrc.techniques.mgrit.bind:bind",
    tables=("mrc.techniques.mgrit.tables:STACKS",),
    expand="mrc.techniques.mgrit.expand:EXPANSION",
    passes=(PassAt("mgrit-regions", "mrc.passes.mgrit_regions:MgritRegions", before="select-kernels"),),
    place={"layers": "mrc.techniques.mgrit.place:place_layers"},
    draw="mrc.techniques.mgrit.draw:DRAWING",
)
