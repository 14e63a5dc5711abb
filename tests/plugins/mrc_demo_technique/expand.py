"""The `ema` op at the end of every replica's step, after the ops the step ends with."""

from __future__ import annotations

from typing import Any

from mrc.ir.graph import Pattern
from mrc.ir.ops import Op, Scope
from mrc.techniques.base import Expansion
from mrc_demo_technique.ops import Ema


def after_step(pattern: Pattern, bound: Any, scope: Scope, n: int, ends: list[Op]) -> list[Op]:
    spec = bound.program.parts.get("ema")
    if spec is None:
        return ends
    return [pattern.add(Ema(scope, spec.decay), pattern.after(ends))]


EXPANSION = Expansion(after_step=after_step)
