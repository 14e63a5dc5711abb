"""The core's table on the schedule graph: the residual stacks whose parameters are stacked.

A residual stack of the built-in blocks (`ResidualStack` of `DenseStep`s or `ConvStep`s,
mrc/models/ode_resnet.py) can keep its N weights in one tensor [N, …] and its N biases in
another, each layer's parameter a view of it: the optimizer then moves one tensor per stack,
autograd writes one gradient, and an MGRIT solve reads the weights without copying them. The
graph builder lists every such stack (`runs` empty: not decided yet); the `stack-params` pass
decides, per stack, the tensors (one per run of consecutive layers in one partition) or why the
stack keeps its per-layer parameters. Lowering reads this table and nothing else to stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mrc.ir.tables import TableKind


@dataclass(frozen=True, slots=True)
class Run:
    """Layers [first, stop) of a stack whose weights (or biases) lie in one partition: one
    stacked tensor."""

    partition: str
    first: int
    stop: int

    def text(self) -> str:
        return f"{self.partition}[{self.first}:{self.stop}]"


@dataclass(frozen=True, slots=True)
class StackLayout:
    """How a stack's parameters are held: `steps` layers of block `kind` (dense | conv) at module
    path `path`, spanning the traced nodes `first_node` … `last_node`; `weights` and `biases`,
    the runs of its stacked tensors (empty: per layer); `reason`, why they stay per layer (empty
    and no runs: not decided yet)."""

    path: str
    steps: int
    kind: str
    first_node: str
    last_node: str
    weights: tuple[Run, ...] = ()
    biases: tuple[Run, ...] = ()
    reason: str = ""

    @property
    def stacked(self) -> bool:
        return bool(self.weights)

    def text(self) -> str:
        head = f"N={self.steps} {self.kind}"
        if self.stacked:
            return (f"{head} stacked weight {' '.join(r.text() for r in self.weights)} "
                    f"bias {' '.join(r.text() for r in self.biases)}")
        return f"{head} per-layer ({self.reason})" if self.reason else f"{head} candidate"


Layouts = dict[str, StackLayout]
"""The residual stacks of built-in blocks, by module path (empty: none)."""


def _runs(data: list[list[Any]]) -> tuple[Run, ...]:
    return tuple(Run(str(p), int(a), int(b)) for p, a, b in data)


def _encode(table: Layouts) -> dict[str, Any]:
    if not table:
        return {}
    return {"stacked": {p: {"steps": s.steps, "kind": s.kind, "reason": s.reason,
                            "nodes": [s.first_node, s.last_node],
                            "weights": [[r.partition, r.first, r.stop] for r in s.weights],
                            "biases": [[r.partition, r.first, r.stop] for r in s.biases]}
                        for p, s in table.items()}}


def _decode(data: dict[str, Any]) -> Layouts | None:
    if "stacked" not in data:
        return None
    return {p: StackLayout(p, int(s["steps"]), str(s["kind"]), str(s["nodes"][0]), str(s["nodes"][1]),
                           _runs(s["weights"]), _runs(s["biases"]), str(s["reason"]))
            for p, s in data["stacked"].items()}


def _header(table: Layouts) -> list[str]:
    return [f"  stack {path}: {layout.text()}" for path, layout in table.items()]


STACKED: TableKind[Layouts] = TableKind("stacked", dict, _encode, _decode, _header)
