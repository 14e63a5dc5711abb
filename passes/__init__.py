"""Passes over the schedule graph, one per file; `PASSES` maps each name to its class.

A pass is a frozen dataclass with a kebab-case `name` and `apply(graph) -> graph`; its docstring
says what it requires and ensures, with a small before/after example. Passes work on each step
pattern of each stage and share data only through the graph's typed fields and tables. The pass
manager (mrc.passmanager) runs a pipeline of them, verifying the graph after each.

Each pass belongs to a technique, whose record (mrc/techniques) names it with its position in
the default pipeline (`PassAt.after`): the pipeline is built from the registry, in its order, so
a technique outside this package adds its passes without editing this file.
"""

from __future__ import annotations

from mrc.passes.base import Pass

from mrc.techniques import techniques
from mrc.techniques.base import Technique, resolve


def pipeline(registry: tuple[Technique, ...]) -> tuple[dict[str, type[Pass]], tuple[str, ...]]:
    """Every technique's passes by name, and the default pipeline: each pass right after the
    pass its `after` names (after the passes earlier techniques put there), first for "", last
    for None — or right before the pass its `before` names."""
    passes: dict[str, type[Pass]] = {}
    order: list[str] = []
    anchor: dict[str, str | None] = {}

    def follows(name: str, target: str) -> bool:
        """Whether `name` was placed after `target`, directly or after passes placed there."""
        at = anchor[name]
        while at is not None:
            if at == target:
                return True
            at = anchor.get(at)
        return False

    for t in registry:
        for p in t.passes:
            if p.name in passes:
                raise ValueError(f"pass `{p.name}` of technique {t.name} is a pass already")
            for where, other in (("after", p.after), ("before", p.before)):
                if other and other not in passes:
                    raise ValueError(f"pass `{p.name}` of technique {t.name} runs {where} `{other}`, "
                                     "which is no pass")
            passes[p.name] = resolve(p.ref)
            if p.before:
                at = order.index(p.before)
            elif p.after is None:
                at = len(order)
            elif not p.after:
                at = 0
            else:
                at = order.index(p.after) + 1
                while at < len(order) and follows(order[at], p.after):
                    at += 1
            order.insert(at, p.name)
            anchor[p.name] = p.after
    return passes, tuple(order)


PASSES, DEFAULT_PIPELINE = pipeline(techniques())

__all__ = ["DEFAULT_PIPELINE", "PASSES", "Pass", "pipeline"]
