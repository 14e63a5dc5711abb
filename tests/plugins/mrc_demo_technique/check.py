"""The `ema(decay=…)` statement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mrc import ast
from mrc.check.registry import statement
from mrc.registry import Param

PARAMS = (Param("decay", "float", 0.99, "the weight of the average so far", lo=0, hi=1),)


@dataclass(frozen=True, slots=True)
class Ema:
    """A checked `ema` statement."""

    decay: float


@statement("ema", "an exponential moving average of the weights", technique="ema", args=True, once=True,
           usage="ema(decay=0.99)")
def check_ema(ck: Any, st: ast.Statement | None) -> None:
    if st is None or not ck.form(st):
        return
    values, _ = ck.arguments("`ema`", PARAMS, st.args, st.span, "ema.")
    if len(values) == len(PARAMS):
        ck.parts["ema"] = Ema(float(values["decay"]))
