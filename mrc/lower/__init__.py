"""Lowering: schedule graph → Plan, one lowering per op kind (mrc.lower.plan).

The techniques register their lowerings when imported; `lower` imports them all first.
"""

from __future__ import annotations

from typing import Any


def lower(graph: Any, bound: Any, total_steps: int, device: Any = "cpu", world: Any = None) -> Any:
    """The Plan of a schedule graph (mrc.lower.plan.Plan), with every technique's lowerings
    registered; `world`: this process among the run's (default: the one it joined)."""
    from mrc.lower.plan import lower as lower_plan
    from mrc.techniques import load_all

    load_all()
    return lower_plan(graph, bound, total_steps, device, world)
