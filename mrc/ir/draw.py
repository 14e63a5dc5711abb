"""The schedule graph drawn: Graphviz (`mrc graph --format svg|png`) and the colours both
drawings share (the HTML page of mrc.ir.html uses the same palette).

Each stage's step patterns become one cluster each, labelled with the steps that run it; inside
it, the ops of each scope (a brain, a module, an MGRIT level and iteration) form a sub-cluster;
ops are filled by kind and edges are labelled with the value that flows (order edges dashed).
The `graphviz` package writes the DOT and calls the `dot` program to lay it out; where `dot` is
missing, `render` raises `DotMissing` with a one-line message saying how to install it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrc.ir.graph import _ranges
from mrc.ir.ops import Op

if TYPE_CHECKING:
    import graphviz

    from mrc.ir.graph import ScheduleGraph

PALETTE: dict[str, str] = {
    "batch": "#e6e6e6",
    "forward": "#a6cee3",
    "loss": "#fdbf6f",
    "backward": "#fb9a99",
    "update": "#b2df8a",
    "drift": "#ffff99",
    "restore": "#e5c494",
    "merge": "#80cdc1",
    "aux_head": "#f4cae4",
    "mgrit": "#bebada",
    "other": "#ffffff",
}
"""Fill colours by kind group (see `group_of`)."""

GROUPS: dict[str, str] = {
    "batch": "batch", "forward": "forward", "loss": "loss", "backward": "backward",
    "update": "update", "update_group": "update", "drift": "drift",
    "restore": "restore", "resample": "restore", "merge": "merge",
    "aux_head": "aux_head", "local_loss": "aux_head",
}

GROUP_LABELS: dict[str, str] = {
    "batch": "batch", "forward": "forward", "loss": "loss", "backward": "backward",
    "update": "update / update_group", "drift": "drift", "restore": "restore / resample",
    "merge": "merge", "aux_head": "aux_head / local_loss", "mgrit": "mgrit_*", "other": "other",
}


class DotMissing(RuntimeError):
    """The Graphviz `dot` program is not installed."""

    MESSAGE = ("the Graphviz `dot` program is not installed: install it with `apt-get install graphviz` "
               "(Debian/Ubuntu) or `brew install graphviz` (macOS)")

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


def group_of(kind: str) -> str:
    """The palette group of an op kind (`mgrit_*` kinds share one; unknown kinds are `other`)."""
    if kind.startswith("mgrit_"):
        return "mgrit"
    return GROUPS.get(kind, "other")


def color_of(kind: str) -> str:
    """The fill colour of an op kind."""
    return PALETTE[group_of(kind)]


def _label(text: str) -> str:
    """Graphviz treats a backslash in a label as an escape; keep the op's text literal."""
    return text.replace("\\", "\\\\")


def to_graphviz(graph: ScheduleGraph) -> graphviz.Digraph:
    """The schedule as a `graphviz.Digraph`: a cluster per step pattern (its label: the stage
    and the steps that run it), a sub-cluster per scope, ops filled by kind, value edges labelled."""
    import graphviz

    dot = graphviz.Digraph("schedule", graph_attr={"rankdir": "TB", "fontname": "Helvetica", "compound": "true"},
                           node_attr={"shape": "box", "style": "rounded,filled", "fontname": "monospace",
                                      "fontsize": "10"},
                           edge_attr={"fontname": "Helvetica", "fontsize": "9"})
    multi = len(graph.stages) > 1
    for si, stage in enumerate(graph.stages):
        for pi, pattern in enumerate(stage.patterns):
            prefix = f"g{si}p{pi}"
            names: dict[str, str] = {}
            plural = "s" if len(pattern.steps) != 1 else ""
            cluster = graphviz.Digraph(name=f"cluster_{prefix}", graph_attr={
                "label": f"{stage.name + ' · ' if multi else ''}pattern {pi} — step{plural} {_ranges(pattern.steps)}",
                "style": "rounded", "color": "#555555", "fontsize": "12"})
            scopes: dict[str, list[Op]] = {}
            for op in pattern.ops():
                scopes.setdefault(op.scope.key(), []).append(op)
            for k, (skey, ops) in enumerate(scopes.items()):
                target = cluster if not skey else graphviz.Digraph(name=f"cluster_{prefix}_s{k}", graph_attr={
                    "label": ops[0].scope.text(), "style": "dashed", "color": "#888888", "fontsize": "10"})
                for op in ops:
                    name = names[op.id] = f"{prefix}_n{len(names)}"
                    tip = op.id + (f" @[{op.scope.text()}]" if not op.scope.empty else "")
                    target.node(name, _label(op.text()), fillcolor=color_of(op.kind), tooltip=_label(tip),
                                id=f"{prefix}/{op.id}", **{"class": f"op kind-{op.kind}"})
                if skey:
                    cluster.subgraph(target)
            dot.subgraph(cluster)
            for a, b, d in sorted(pattern.g.edges(data=True), key=lambda e: (pattern.rank(pattern.op(e[0])),
                                                                           pattern.rank(pattern.op(e[1])))):
                value = d["value"]
                if value.kind == "order":
                    dot.edge(names[a], names[b], style="dashed", color="#999999")
                else:
                    dot.edge(names[a], names[b], label=_label(value.text()))
    return dot


def render(graph: ScheduleGraph, fmt: str) -> bytes:
    """The schedule laid out by `dot` in `fmt` (svg, png, …); raises DotMissing without `dot`."""
    import graphviz

    try:
        return to_graphviz(graph).pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise DotMissing() from None


__all__ = ["GROUP_LABELS", "PALETTE", "DotMissing", "color_of", "group_of", "render", "to_graphviz"]
