"""Checks of random-subset partitions: the `random(fraction, per, of)` selector, and what such a
partition may be: the whole selector of its partition, without drift, integrated by an
SGD-family rule (the rule families are `mrc.optim.families`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrc import ast
from mrc.check.registry import finisher, selector
from mrc.optim.families import sgd_like
from mrc.program import Component, Partition, Selector, SelectRandom, SelectSet
from mrc.registry import Param
from mrc.techniques.multirate.check import drawn_subset, partition_rule

if TYPE_CHECKING:
    from mrc.check.checker import Checker

_RANDOM_PARAMS = (Param("fraction", "float", doc="fraction of the weights drawn", lo=0, hi=1,
                        lo_open=True),
                  Param("per", "choice", "tensor", "draw per tensor or over all at once",
                        choices=("tensor", "global")))


@selector("random")
def _random(ck: Checker, expr: ast.Call) -> SelectRandom:
    """`random(fraction, per=tensor|global, of=SELECTOR)`; `of` defaults to `weight`."""
    return SelectRandom(*drawn_subset(ck, expr, "`random`", _RANDOM_PARAMS), expr.span)


@partition_rule
def _whole_selector_and_no_drift(ck: Checker, part: Partition, settings: dict[str, ast.Arg]) -> None:
    if not isinstance(part.selector, SelectRandom) and _has_random(part.selector):
        ck.r.error("`random(…)` must be the whole selector of its partition",
                   part.selector.span, hint="select the tensors to draw from with `of=`: "
                   "`random(0.1, of=weight - module(\"head\"))`")
    if isinstance(part.selector, SelectRandom) and part.drift != "none":
        ck.r.error("a random-subset partition cannot drift", settings["drift"].span)


@finisher
def check_rule(ck: Checker) -> None:
    """A random-subset partition is integrated by an SGD-family rule."""
    base_optimizer = ck.program.get("optimizer")
    for part in ck.program.get("partitions", ()):
        base = part.optimizer or base_optimizer
        if isinstance(part.selector, SelectRandom) and isinstance(base, Component) and \
                not sgd_like(base.name):
            ck.r.error(f"a random-subset partition is integrated by SGD(-momentum), not "
                       f"`{base.name}`", part.selector.span,
                       hint="give the partition `optimizer sgd(…)` in its block")


def _has_random(sel: Selector) -> bool:
    stack = [sel]
    while stack:
        s = stack.pop()
        if isinstance(s, SelectRandom):
            return True
        if isinstance(s, SelectSet):
            stack += (s.left, s.right)
    return False
