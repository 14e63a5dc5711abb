"""`mrc show SPEC`: what the spec bound — each partition, module, brain and MGRIT stack with the
parameters it holds, and the rule, learning rate and period of each update.

Everything is read from the compiled schedule graph (its tables and its update ops), so what
`show` lists is what runs. Parameter names are grouped where they differ only in indices and
abbreviated for big models: `layers.[0-2].{weight,bias}`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

MAX_GROUPS = 8
"""The most name groups listed per partition; the rest are counted."""


def abbreviate(names: Sequence[str], limit: int = MAX_GROUPS) -> str:
    """Parameter names, grouped by their shape with indices collected — `layers.0.weight`,
    `layers.1.weight` → `layers.[0-1].weight` — and leaves sharing a module joined —
    `head.{weight,bias}`; at most `limit` groups, then `… (+N more)`."""
    by_shape: dict[str, list[tuple[int, ...]]] = {}
    for name in names:
        numbers = tuple(int(n) for n in re.findall(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", name))
        shape = re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "#", name)
        by_shape.setdefault(shape, []).append(numbers)
    groups: dict[str, list[str]] = {}  # the module part → its leaves, in order
    for shape, numbers in by_shape.items():
        text = shape
        for i in range(shape.count("#")):
            values = sorted({n[i] for n in numbers})
            text = text.replace("#", _ranges(values), 1)
        module, _, leaf = text.rpartition(".")
        groups.setdefault(module, []).append(leaf)
    out = [f"{m}.{{{','.join(leaves)}}}" if len(leaves) > 1 else (f"{m}.{leaves[0]}" if m else leaves[0])
           for m, leaves in groups.items()]
    if len(out) > limit:
        return ", ".join(out[:limit]) + f", … (+{len(out) - limit} more)"
    return ", ".join(out)


def _ranges(values: list[int]) -> str:
    if len(values) == 1:
        return str(values[0])
    runs: list[str] = []
    start = prev = values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return "[" + ",".join(runs) + "]"


def updates(graph: Any) -> dict[str, list[str]]:
    """Each partition's updates over its stage's period: rule, learning rate and the steps."""
    from mrc.ir.ops import Update, UpdateGroup

    seen: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    for stage in graph.stages:
        for step in range(stage.period):
            for op in stage.at(step).ops():
                if isinstance(op, Update):
                    pairs = [(op.partition, op.lr)]
                elif isinstance(op, UpdateGroup):
                    pairs = list(zip(op.partitions, op.lrs, strict=False))
                else:
                    continue
                for part, lr in pairs:
                    seen[(part, stage.name, op.rule.text(), f"{lr:g}")].append(step)
    out: dict[str, list[str]] = defaultdict(list)
    for (part, stage, rule, lr), steps in seen.items():
        period = next(s.period for s in graph.stages if s.name == stage)
        when = "every step" if len(steps) == period else (
            f"every {period // len(steps)} steps" if len(steps) > 0 and period % len(steps) == 0
            and steps == list(range(steps[0], period, period // len(steps))) else f"steps {steps} of {period}")
        where = f" [{stage}]" if len(graph.stages) > 1 else ""
        out[part].append(f"{rule} lr={lr}, {when}{where}")
    return out


def show(graph: Any, spec: str = "") -> str:
    """The text `mrc show` prints for a compiled graph."""
    lines: list[str] = []
    parts = graph.partitions
    total = sum(info.numel for info in parts.values())
    lines.append(f"{spec}: {len(parts)} partition{'s' if len(parts) != 1 else ''}, {total:,} trained elements")
    lines.append("partitions:")
    ups = updates(graph)
    for name, info in parts.items():
        held = f"{'of' if info.partial else 'in'} {len(info.params)} tensor{'s' if len(info.params) != 1 else ''}"
        extra = f", {info.sample}" if info.sample else (f", random {info.fraction:g} per {info.per}" if info.random
                                                        else "")
        lines.append(f"  {name}: {info.numel:,} elements {held}{extra}")
        lines.append(f"    params: {abbreviate(info.params)}")
        for u in ups.get(name, ["never updated"]):
            lines.append(f"    update: {u}" + (f" (drift {info.drift})" if info.drift != "none" else ""))
    from mrc.techniques.brains.tables import BRAINS
    from mrc.techniques.mgrit.tables import STACKS
    from mrc.techniques.modules.tables import MODULES

    if graph.table(MODULES):
        lines.append("modules:")
        from mrc.ir.ops import covering

        for name, m in graph.table(MODULES).items():
            named = ", ".join(covering(tuple(graph.layers), *_span(graph.layers, m.layers))) if m.layers else "-"
            lines.append(f"  {name}: {named} — {len(m.layers)} layers, {m.params:,} parameters, head {m.head}")
    if graph.table(BRAINS).replicas:
        lines.append("brains:")
        for name, b in graph.table(BRAINS).replicas.items():
            lines.append(f"  {name}: {b.text()}")
    if graph.table(STACKS):
        lines.append("mgrit stacks:")
        for name, s in graph.table(STACKS).items():
            lines.append(f"  {name}: {s.text()}")
    return "\n".join(lines)


def _span(layers: Sequence[str], held: Sequence[str]) -> tuple[int, int]:
    index = {n: i for i, n in enumerate(layers)}
    found = [index[n] for n in held if n in index]
    return (min(found), max(found) + 1) if found else (0, 0)
