"""The schedule graph drawn: Graphviz (`mrc graph --format svg|png`) and the colours both
drawings share (the HTML page of mrc.ir.html uses the same palette).

Each stage's step patterns become one cluster each, labelled with the steps that run it; inside
it, the ops of each scope form a sub-cluster; ops are filled by kind group (each technique's
`Drawing` names its kinds' groups and colours, and the marks its ops put on the HTML timeline)
and edges are labelled with the value that flows (order edges dashed).
The `graphviz` package writes the DOT and calls the `dot` program to lay it out; where `dot` is
missing, `render` raises `DotMissing` with a one-line message saying how to install it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from mrc.ir.graph import _ranges
from mrc.ir.ops import Op

if TYPE_CHECKING:
    import graphviz

    from mrc.ir.graph import ScheduleGraph

RowKey = tuple[Any, ...]
"""A timeline row of one replica: `("p", PARTITION)`, or a lane's own key."""


@dataclass(frozen=True, slots=True)
class Cell:
    """A mark an op puts on a timeline row (`label`: the row's, should the op create it);
    `replicas`: the replicas whose rows it marks (None: its scope's, or every replica)."""

    mark: str
    row: RowKey
    label: str = ""
    replicas: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class View:
    """What a mark function may read: the graph, and each layer's partitions (by the graph's
    layer index)."""

    graph: ScheduleGraph
    layer_parts: list[list[str]]


MarkFn = Callable[[Op, View], list[Cell]]


@dataclass(frozen=True, slots=True)
class Lane:
    """Rows a technique adds under each replica of the timeline, below one header."""

    header: str
    rows: tuple[tuple[RowKey, str], ...]


@dataclass(frozen=True, slots=True)
class Drawing:
    """How a technique's ops and tables are drawn (`Technique.draw`, mrc/techniques); each part
    optional. groups: palette group → (fill, legend label), in legend order; kinds: op kind →
    its group (other kinds are `other`); marks: timeline mark → (meaning, colour), in legend
    order; mark: op kind → the marks its ops put on the timeline (other kinds mark the
    partitions they name with `?`); replicas: the replicas of a graph, each with its rows'
    header; groups_of_scope: the module scopes of a graph, in order (each a group of partition
    rows); lanes: the rows it adds under each replica; words: what its rows add to the page's
    sentence "Each row is a partition…"."""

    groups: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    kinds: Mapping[str, str] = field(default_factory=dict)
    marks: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    mark: Mapping[str, MarkFn] = field(default_factory=dict)
    replicas: Callable[[ScheduleGraph], dict[str, str]] | None = None
    groups_of_scope: Callable[[ScheduleGraph], list[str]] | None = None
    lanes: Callable[[ScheduleGraph], list[Lane]] | None = None
    words: Callable[[ScheduleGraph], str] | None = None


def _forward(op: Op, view: View) -> list[Cell]:
    grad = set(getattr(op, "grad", ()))
    start, stop = getattr(op, "start", 0), getattr(op, "stop", None)
    seen = [p for parts in view.layer_parts[start:stop] for p in parts] or list(grad)
    frozen = getattr(op, "frozen", False)
    return [Cell("F" if p in grad and not frozen else "f", ("p", p)) for p in dict.fromkeys(seen)]


def _none(op: Op, view: View) -> list[Cell]:
    return []


CORE = Drawing(
    groups={"batch": ("#e6e6e6", "batch"), "forward": ("#a6cee3", "forward"), "loss": ("#fdbf6f", "loss"),
            "backward": ("#fb9a99", "backward"), "update": ("#b2df8a", "update / update_group")},
    kinds={"batch": "batch", "forward": "forward", "loss": "loss", "backward": "backward", "update": "update",
           "update_group": "update"},
    marks={"F": ("forward (tracking gradients)", "#a6cee3"), "f": ("forward without gradients (or frozen)", "#e3f0f7"),
           "B": ("backward", "#fb9a99"), "U": ("update", "#b2df8a")},
    mark={"forward": _forward, "batch": _none, "loss": _none,
          "backward": lambda op, view: [Cell("B", ("p", p)) for p in getattr(op, "wrt", ())],
          "update": lambda op, view: [Cell("U", ("p", getattr(op, "partition", "")))],
          "update_group": lambda op, view: [Cell("U", ("p", p)) for p in getattr(op, "partitions", ())]
          + [Cell("D", ("p", p)) for p in getattr(op, "drifting", ())]},
)
"""How the core's ops are drawn (the other techniques' drawings are in their folders)."""

OTHER = ("#ffffff", "other")
UNKNOWN_MARK = ("?", ("another op naming the partition", OTHER[0]))


@cache
def drawings() -> tuple[Drawing, ...]:
    """The core's drawing, then every technique's, in registry order."""
    from mrc.techniques import techniques
    from mrc.techniques.base import resolve

    return (CORE, *(resolve(t.draw) for t in techniques() if t.draw))


@cache
def _fills() -> dict[str, str]:
    return {**{g: c for d in drawings() for g, (c, _) in d.groups.items()}, "other": OTHER[0]}


def palette() -> dict[str, str]:
    """Fill colours by kind group (see `group_of`), in legend order (`other` last)."""
    return dict(_fills())


def group_labels() -> dict[str, str]:
    """The legend's label of each kind group, in legend order."""
    return {**{g: label for d in drawings() for g, (_, label) in d.groups.items()}, "other": OTHER[1]}


@cache
def _kinds() -> dict[str, str]:
    return {k: g for d in drawings() for k, g in d.kinds.items()}


def group_of(kind: str) -> str:
    """The palette group of an op kind (unknown kinds are `other`)."""
    return _kinds().get(kind, "other")


def color_of(kind: str) -> str:
    """The fill colour of an op kind."""
    return _fills()[group_of(kind)]


class DotMissing(RuntimeError):
    """The Graphviz `dot` program is not installed."""

    MESSAGE = ("the Graphviz `dot` program is not installed: install it with `apt-get install graphviz` "
               "(Debian/Ubuntu) or `brew install graphviz` (macOS)")

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


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


__all__ = ["CORE", "Cell", "DotMissing", "Drawing", "Lane", "View", "color_of", "drawings", "group_labels", "group_of",
           "palette", "render", "to_graphviz"]
