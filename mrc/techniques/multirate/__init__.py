"""Multirate training within a network (seeds/multirate-training.md): partitions of the
parameters selected by selectors, each with its own rate (`every`), step size, integrator and
drift, and the `multirate(…)` options of how slow and fast steps interleave."""

from __future__ import annotations

from mrc.techniques.base import PassAt, Technique

TECHNIQUE = Technique(
    "multirate",
    check="mrc.techniques.multirate.check",
    ops=("mrc.techniques.multirate.ops", "mrc.techniques.multirate.lower"),
    expand="mrc.techniques.multirate.expand:EXPANSION",
    passes=(PassAt("fuse-drift", "mrc.passes.fuse_drift:FuseDrift", after="select-kernels"),),
    draw="mrc.techniques.multirate.draw:DRAWING",
)
