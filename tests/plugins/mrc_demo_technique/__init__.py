"""A technique outside mrc, installed as a plugin (the entry-point group `mrc.techniques`): an
exponential moving average of the weights.

    ema(decay=0.99)

keeps, beside the trained weights, their average e ← decay·e + (1 − decay)·θ, taken after every
step's updates (the first step's weights start it). It is a whole technique in four small
modules, and edits nothing in mrc: its statement (check.py), its op kind (ops.py), its graph
expansion — one `ema` op at the end of each replica's step (expand.py) — and its lowering
(lower.py), which keeps the average in the plan's checkpointed state (`ema.PARAM`).
tests/e2e/test_plugin.py installs it and trains with it.
"""

from __future__ import annotations

from mrc.techniques.base import Technique

TECHNIQUE = Technique(
    "ema",
    check="mrc_demo_technique.check",
    ops=("mrc_demo_technique.ops", "mrc_demo_technique.lower"),
    expand="mrc_demo_technique.expand:EXPANSION",
)
