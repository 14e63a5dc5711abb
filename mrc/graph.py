"""The schedule graph: one period of training as typed operations and their dependencies.

A period is the least common multiple of every rate in the spec; the runtime repeats it over the
data. Nodes are frozen records (`Forward`, `Loss`, `Backward`, `Update`, `UpdateGroup`, …) keyed
by a deterministic id; edges say what must run first. The graph is wrapped around a
`networkx.DiGraph`, has a canonical text form (golden-tested), DOT and JSON exports, and a
`verify()` the pass manager runs after every pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import networkx as nx


@dataclass(frozen=True, slots=True)
class Op:
    """Base of every schedule-graph node: the step of the period it runs on."""

    kind: ClassVar[str] = "op"
    rank: ClassVar[int] = 0  # order of kinds within a step, for a stable listing
    step: int

    @property
    def id(self) -> str:
        phase = getattr(self, "phase", 0)
        return f"s{self.step}{f'.p{phase}' if phase else ''}.{self.kind}{self.key()}"

    def key(self) -> str:
        return ""

    def text(self) -> str:
        raise NotImplementedError

    def attrs(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["kind"] = self.kind
        return out


@dataclass(frozen=True, slots=True)
class Forward(Op):
    """Run a segment of the model. `grad` lists the partitions autograd must track through it;
    an empty tuple means the segment runs without autograd (no activations kept)."""

    kind: ClassVar[str] = "forward"
    rank: ClassVar[int] = 1
    segment: str = "model"
    grad: tuple[str, ...] = ()
    phase: int = 0

    def key(self) -> str:
        return f".{self.segment}"

    def text(self) -> str:
        mode = f"grad {{{', '.join(self.grad)}}}" if self.grad else "no_grad"
        return f"forward {self.segment} [{mode}]"


@dataclass(frozen=True, slots=True)
class Loss(Op):
    kind: ClassVar[str] = "loss"
    rank: ClassVar[int] = 2
    fn: str = "cross_entropy"
    label_smoothing: float = 0.0
    phase: int = 0
    of: str = ""
    """The segment (a brain) whose output it scores, when a step has several."""

    def key(self) -> str:
        return f".{self.of}" if self.of else ""

    def text(self) -> str:
        extra = f"(label_smoothing={self.label_smoothing:g})" if self.label_smoothing else ""
        return f"loss {self.fn}{extra}" + (f" of {self.of}" if self.of else "")


@dataclass(frozen=True, slots=True)
class Backward(Op):
    """Back-propagate the loss to the gradients of the partitions in `wrt`."""

    kind: ClassVar[str] = "backward"
    rank: ClassVar[int] = 3
    wrt: tuple[str, ...] = ()
    phase: int = 0
    of: str = ""

    def key(self) -> str:
        return f".{self.of}" if self.of else ""

    def text(self) -> str:
        return f"backward wrt {{{', '.join(self.wrt)}}}"


@dataclass(frozen=True, slots=True)
class Update(Op):
    """Move one partition with its integrator. `scale` multiplies the base learning rate
    (the seed's h_S = k·h_F gives scale k for a partition updated every k steps)."""

    kind: ClassVar[str] = "update"
    rank: ClassVar[int] = 4
    partition: str = ""
    rule: str = ""
    scale: float = 1.0
    lr: float | None = None
    drift: bool = False
    phase: int = 0

    def key(self) -> str:
        return f".{self.partition}"

    def text(self) -> str:
        size = f"lr={self.lr:g}" if self.lr is not None else f"lr×{self.scale:g}"
        held = " (held for drift)" if self.drift else ""
        return f"update {self.partition} {self.rule} {size}{held}"


@dataclass(frozen=True, slots=True)
class UpdateGroup(Op):
    """Updates of one step that share an integrator, run as one call over all their tensors."""

    kind: ClassVar[str] = "update_group"
    rank: ClassVar[int] = 5
    name: str = ""
    partitions: tuple[str, ...] = ()
    rule: str = ""
    scale: float = 1.0
    lr: float | None = None
    kernel: str = "torch.optim"
    drift: tuple[str, ...] = ()
    phase: int = 0

    def key(self) -> str:
        return f".{self.name}"

    def text(self) -> str:
        size = f"lr={self.lr:g}" if self.lr is not None else f"lr×{self.scale:g}"
        held = f" held for drift {{{', '.join(self.drift)}}}" if self.drift else ""
        return (f"update_group {self.name} {{{', '.join(self.partitions)}}} {self.rule} {size} "
                f"kernel={self.kernel}{held}")


@dataclass(frozen=True, slots=True)
class Drift(Op):
    """Move a partition by `fraction` of the step its last update computed (linear drift: the
    seed's θ_S ← θ_S − (h/k) p_S on each of the k steps of its interval)."""

    kind: ClassVar[str] = "drift"
    rank: ClassVar[int] = 6
    partition: str = ""
    fraction: float = 1.0

    def key(self) -> str:
        return f".{self.partition}"

    def text(self) -> str:
        return f"drift {self.partition} by {self.fraction:g} of its step"


@dataclass(frozen=True, slots=True)
class Resample(Op):
    """Random-subset regularization: restore the held-out subset of a partition, draw a new one
    and hold it at zero until the next resample."""

    kind: ClassVar[str] = "resample"
    rank: ClassVar[int] = 7
    partition: str = ""

    def key(self) -> str:
        return f".{self.partition}"

    def text(self) -> str:
        return f"resample {self.partition}"


@dataclass(frozen=True, slots=True)
class Merge(Op):
    """Brains that reach the same time are merged by `rule` (their parameters, and their
    optimizer state as `momentum` says), and go on from the merged point."""

    kind: ClassVar[str] = "merge"
    rank: ClassVar[int] = 8
    brains: tuple[str, ...] = ()
    rule: str = "mean"

    def key(self) -> str:
        return f".{'+'.join(self.brains)}"

    def text(self) -> str:
        return f"merge {{{', '.join(self.brains)}}} {self.rule}"


OP_KINDS: dict[str, type[Op]] = {c.kind: c for c in (Forward, Loss, Backward, Update, UpdateGroup,
                                                     Drift, Resample, Merge)}


class GraphError(Exception):
    """An invariant of the schedule graph does not hold."""


@dataclass
class ScheduleGraph:
    """One period of training. `partitions` maps each partition to its size and rule, for
    printing and for passes that need to know what exists."""

    period: int
    partitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    g: nx.DiGraph = field(default_factory=nx.DiGraph)
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- construction -------------------------------------------------------------------

    def add(self, op: Op, after: Iterable[Op] = ()) -> Op:
        if op.id in self.g:
            raise GraphError(f"node {op.id} added twice")
        self.g.add_node(op.id, op=op)
        for dep in after:
            self.g.add_edge(dep.id, op.id)
        return op

    def remove(self, op: Op) -> None:
        self.g.remove_node(op.id)

    def replace(self, old: Op, new: Op) -> None:
        """Swap a node's record, keeping its edges."""
        preds, succs = list(self.g.predecessors(old.id)), list(self.g.successors(old.id))
        self.g.remove_node(old.id)
        self.g.add_node(new.id, op=new)
        self.g.add_edges_from((p, new.id) for p in preds)
        self.g.add_edges_from((new.id, s) for s in succs)

    def copy(self) -> ScheduleGraph:
        return ScheduleGraph(self.period, {k: dict(v) for k, v in self.partitions.items()},
                             self.g.copy(), dict(self.meta))

    # ---- queries ------------------------------------------------------------------------

    def op(self, node_id: str) -> Op:
        return self.g.nodes[node_id]["op"]

    def ops(self) -> Iterator[Op]:
        """Every node in the canonical order: a topological order, ties broken by
        (step, kind rank, id), so the listing is the same on every run."""
        for nid in nx.lexicographical_topological_sort(self.g, key=self._sort_key):
            yield self.op(nid)

    def _sort_key(self, nid: str) -> tuple[int, int, int, str]:
        op = self.op(nid)
        return (op.step, getattr(op, "phase", 0), op.rank, nid)

    def at(self, step: int) -> list[Op]:
        return [op for op in self.ops() if op.step == step]

    def of_kind(self, cls: type[Op]) -> list[Op]:
        return [op for op in self.ops() if isinstance(op, cls)]

    def preds(self, op: Op) -> list[Op]:
        return sorted((self.op(p) for p in self.g.predecessors(op.id)), key=lambda o: o.id)

    def succs(self, op: Op) -> list[Op]:
        return sorted((self.op(s) for s in self.g.successors(op.id)), key=lambda o: o.id)

    # ---- invariants ---------------------------------------------------------------------

    def verify(self) -> None:
        """Check the invariants every pass must keep; raise GraphError naming the first broken."""
        if self.period < 1:
            raise GraphError(f"period must be ≥ 1, not {self.period}")
        if not nx.is_directed_acyclic_graph(self.g):
            cycle = nx.find_cycle(self.g)
            raise GraphError(f"the schedule has a cycle: {' → '.join(a for a, _ in cycle)}")
        grads_at: dict[int, set[str]] = {}
        for op in self.ops():
            if not 0 <= op.step < self.period:
                raise GraphError(f"{op.id}: step {op.step} outside the period 0…{self.period - 1}")
            for f in fields(op):
                v = getattr(op, f.name)
                if f.name in ("grad", "wrt", "partitions", "partition", "brains") or (
                        f.name == "drift" and isinstance(v, tuple)):
                    names = v if isinstance(v, tuple) else (v,)
                    unknown = [n for n in names if n not in self.partitions]
                    if unknown:
                        raise GraphError(f"{op.id}: unknown partition `{unknown[0]}`")
            if isinstance(op, Backward):
                ancestors = {self.op(a) for a in nx.ancestors(self.g, op.id)}
                if not any(isinstance(a, Loss) and a.step == op.step for a in ancestors):
                    raise GraphError(f"{op.id}: a backward needs the loss of its step before it")
                fwd_grads = set().union(*(a.grad for a in ancestors if isinstance(a, Forward)
                                          and a.step == op.step))
                missing = set(op.wrt) - fwd_grads
                if missing:
                    raise GraphError(f"{op.id}: differentiates {sorted(missing)} but no forward of "
                                     "its step tracks them")
                grads_at.setdefault(op.step, set()).update(op.wrt)
            if isinstance(op, Update | UpdateGroup):
                parts = (op.partition,) if isinstance(op, Update) else op.partitions
                ancestors = {self.op(a) for a in nx.ancestors(self.g, op.id)}
                have = set().union(*(a.wrt for a in ancestors if isinstance(a, Backward)
                                     and a.step == op.step))
                missing = set(parts) - have
                if missing:
                    raise GraphError(f"{op.id}: updates {sorted(missing)} without a backward "
                                     "that computes their gradient on this step")
        for step in range(self.period):
            updated = [op for op in self.at(step) if isinstance(op, Update | UpdateGroup)]
            names = [n for op in updated for n in
                     ((op.partition,) if isinstance(op, Update) else op.partitions)]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise GraphError(f"step {step}: partition {sorted(dup)[0]} is updated twice")

    # ---- printing -----------------------------------------------------------------------

    def to_text(self) -> str:
        """The canonical listing: header, partitions, then each step's operations in order."""
        lines = [f"schedule period={self.period}"]
        lines += [f"  note: {note}" for note in self.meta.get("notes", [])]
        for name, info in self.partitions.items():
            detail = " ".join(f"{k}={_show(v)}" for k, v in info.items())
            lines.append(f"  partition {name}: {detail}")
        for step in range(self.period):
            lines.append(f"step {step}:")
            numbering = {op.id: i for i, op in enumerate(self.at(step))}
            for op in self.at(step):
                deps = [f"%{numbering[p.id]}" for p in self.preds(op) if p.id in numbering]
                after = f"  after {', '.join(deps)}" if deps else ""
                lines.append(f"  %{numbering[op.id]} = {op.text()}{after}")
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        """Graphviz DOT, one cluster per step."""
        out = ["digraph schedule {", "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
        for step in range(self.period):
            out.append(f"  subgraph cluster_s{step} {{")
            out.append(f'    label="step {step}";')
            for op in self.at(step):
                out.append(f'    "{op.id}" [label="{_dot_escape(op.text())}"];')
            out.append("  }")
        for a, b in sorted(self.g.edges):
            out.append(f'  "{a}" -> "{b}";')
        out.append("}")
        return "\n".join(out) + "\n"

    def to_json(self) -> str:
        data = {
            "period": self.period,
            "partitions": self.partitions,
            "notes": list(self.meta.get("notes", [])),
            "nodes": [dict(id=op.id, **_jsonable(op.attrs())) for op in self.ops()],
            "edges": [list(e) for e in sorted(self.g.edges)],
        }
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ScheduleGraph:
        data = json.loads(text)
        graph = cls(data["period"], data["partitions"])
        if data.get("notes"):
            graph.meta["notes"] = list(data["notes"])
        for node in data["nodes"]:
            kind = node.pop("kind")
            node.pop("id")
            op_cls = OP_KINDS[kind]
            args = {f.name: (tuple(node[f.name]) if isinstance(node[f.name], list) else node[f.name])
                    for f in fields(op_cls)}
            graph.add(op_cls(**args))
        graph.g.add_edges_from(tuple(e) for e in data["edges"])
        return graph


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return str(v)


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("{", "\\{").replace("}", "\\}")


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def lcm(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out


__all__ = ["Backward", "Forward", "GraphError", "Loss", "Op", "ScheduleGraph", "Update",
           "UpdateGroup", "asdict", "lcm"]
