"""The schedule graph (IR version 2): stages of periods, each period a few distinct step patterns.

    ScheduleGraph ── stages: Stage(name, length, period, patterns, pattern_of)
                  ── partitions / layers / target / notes … (the core's typed tables)
                  ── tables: the techniques' tables, by kind (mrc.ir.tables)
    Pattern       ── one networkx.DiGraph of ops (mrc.ir.ops) with value edges, and the steps of
                     the period that run it

A period of lcm(rates) steps has few distinct step patterns (which partitions are differentiated,
which update, drift, resample, merge), so each pattern is held once with the steps that use it:
passes and lowering work per pattern, and compile cost is linear in the ops, not in period × ops.
The printer still shows the period step by step (`to_text`), or pattern by pattern (`compact`).

Edges carry the value that flows (mrc.ir.ops.Value): the batch into a forward, a forward's
activation into the next segment, logits and targets into a loss, the loss into a backward, its
gradients into an update, or pure order. The canonical order of a pattern is a topological order
with ties broken by (kind rank, id), computed once per pattern and cached, so every listing is
stable and golden-testable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import networkx as nx

from mrc.ir import cadence as _cadence  # noqa: F401  (registers the cadence op kinds for from_json)
from mrc.ir.ops import OP_KINDS, ORDER, Forward, GraphError, Op, Value, decode
from mrc.ir.tables import TableKind
from mrc.target import Target

T = TypeVar("T")
_ABSENT = object()


class Pattern:
    """The ops of one step pattern and their value edges; `steps`: the steps of the period
    that run it (ascending)."""

    def __init__(self, steps: Iterable[int] = (), g: nx.DiGraph | None = None) -> None:
        self.steps: tuple[int, ...] = tuple(steps)
        self.g = g if g is not None else nx.DiGraph()
        self._order: list[Op] | None = None
        self._rank: dict[str, int] = {}

    # ---- construction ---------------------------------------------------------------------

    def add(self, op: Op, inputs: Iterable[tuple[Op, Value]] = ()) -> Op:
        if op.id in self.g:
            raise GraphError(f"op {op.id} added twice to one step pattern")
        self.g.add_node(op.id, op=op)
        for src, value in inputs:
            self.connect(src, op, value)
        self._order = None
        return op

    def connect(self, src: Op, dst: Op, value: Value = ORDER) -> None:
        self.g.add_edge(src.id, dst.id, value=value)
        self._order = None

    def after(self, ops: Iterable[Op]) -> list[tuple[Op, Value]]:
        """Order-only inputs."""
        return [(o, ORDER) for o in ops]

    def remove(self, op: Op) -> None:
        self.g.remove_node(op.id)
        self._order = None

    def replace(self, old: Op, new: Op) -> None:
        """Swap an op's record, keeping its edges and their values."""
        ins = [(p, d["value"]) for p, _, d in self.g.in_edges(old.id, data=True)]
        outs = [(s, d["value"]) for _, s, d in self.g.out_edges(old.id, data=True)]
        self.g.remove_node(old.id)
        self.g.add_node(new.id, op=new)
        for p, v in ins:
            self.g.add_edge(p, new.id, value=v)
        for s, v in outs:
            self.g.add_edge(new.id, s, value=v)
        self._order = None

    def copy(self) -> Pattern:
        return Pattern(self.steps, self.g.copy())

    # ---- queries --------------------------------------------------------------------------

    def op(self, node_id: str) -> Op:
        return self.g.nodes[node_id]["op"]

    def ops(self) -> list[Op]:
        """The canonical order (cached until the pattern changes)."""
        if self._order is None:
            self._order = [self.op(n) for n in nx.lexicographical_topological_sort(self.g, key=self._key)]
            self._rank = {o.id: i for i, o in enumerate(self._order)}
        return self._order

    def rank(self, op: Op) -> int:
        """The op's position in the canonical order."""
        self.ops()
        return self._rank[op.id]

    def _key(self, nid: str) -> tuple[int, int, str]:
        op = self.op(nid)
        return (getattr(op, "phase", 0), op.rank, nid)

    def of_kind(self, cls: type[Op] | tuple[type[Op], ...]) -> list[Op]:
        return [op for op in self.ops() if isinstance(op, cls)]

    def inputs(self, op: Op) -> list[tuple[Op, Value]]:
        """(producer, value) for each in-edge, producers in canonical order."""
        ins = [(self.op(p), d["value"]) for p, _, d in self.g.in_edges(op.id, data=True)]
        return sorted(ins, key=lambda pv: self.rank(pv[0]))

    def outputs(self, op: Op) -> list[tuple[Op, Value]]:
        outs = [(self.op(s), d["value"]) for _, s, d in self.g.out_edges(op.id, data=True)]
        return sorted(outs, key=lambda sv: self.rank(sv[0]))

    def preds(self, op: Op) -> list[Op]:
        return [p for p, _ in self.inputs(op)]

    def succs(self, op: Op) -> list[Op]:
        return [s for s, _ in self.outputs(op)]

    def ancestors(self, op: Op) -> list[Op]:
        return [self.op(a) for a in nx.ancestors(self.g, op.id)]

    def descendants(self, op: Op) -> list[Op]:
        return [self.op(d) for d in nx.descendants(self.g, op.id)]

    def signature(self) -> tuple[Any, ...]:
        """Identity of the pattern's content (ops and edges), independent of its steps."""
        return (tuple(sorted((n, d["op"]) for n, d in self.g.nodes(data=True))),
                tuple(sorted((a, b, d["value"].kind, d["value"].partitions) for a, b, d in self.g.edges(data=True))))


@dataclass
class Stage:
    """One stage of a schedule: a period repeated for `length` (`steps` or `epochs`; None: the
    run's whole length). `pattern_of[s]` is the index of the pattern that step s of the period
    runs."""

    name: str
    period: int
    patterns: list[Pattern]
    pattern_of: tuple[int, ...]
    length: int | None = None
    unit: str = "steps"

    def at(self, step: int) -> Pattern:
        return self.patterns[self.pattern_of[step % self.period]]

    def copy(self) -> Stage:
        return Stage(self.name, self.period, [p.copy() for p in self.patterns], self.pattern_of,
                     self.length, self.unit)

    def reindex(self) -> None:
        """Merge patterns whose content became equal (after a pass) and drop unused ones."""
        seen: dict[tuple[Any, ...], int] = {}
        patterns: list[Pattern] = []
        remap: dict[int, int] = {}
        for i, p in enumerate(self.patterns):
            if not p.steps:
                continue
            sig = p.signature()
            if sig in seen:
                j = seen[sig]
                patterns[j].steps = tuple(sorted((*patterns[j].steps, *p.steps)))
            else:
                j = seen[sig] = len(patterns)
                patterns.append(p)
            remap[i] = j
        self.patterns = patterns
        self.pattern_of = tuple(remap[i] for i in self.pattern_of)


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """A partition as the graph knows it: its parameters (names in the model), size in
    elements, rate, drift, and — for a random-subset partition — its draw. An element-level
    partition lists in `partial` the tensors it holds only some elements of (their masks are
    the binding's, drawn once: `sample` says how, e.g. `0.5/tensor`)."""

    params: tuple[str, ...]
    numel: int
    every: int = 1
    drift: str = "none"
    random: str = ""
    fraction: float = 0.0
    per: str = ""
    partial: tuple[str, ...] = ()
    sample: str = ""

    def text(self) -> str:
        n = len(self.params)
        held = f"elements of {n} tensor{'s' if n != 1 else ''}" if self.partial else f"tensors={n}"
        out = f"{held} numel={self.numel} every={self.every}"
        if self.sample:
            out += f" sample={self.sample}"
        if self.drift != "none":
            out += f" drift={self.drift}"
        if self.random:
            out += f" random={self.random}"
        return out


@dataclass
class ScheduleGraph:
    """The whole schedule: its stages, the core tables every technique shares (partitions,
    layers, target, kernels, learning-rate schedule, notes, laps), and the tables
    techniques register (`tables`, by kind: mrc.ir.tables)."""

    stages: list[Stage]
    partitions: dict[str, PartitionInfo] = field(default_factory=dict)
    layers: tuple[str, ...] = ()
    target: Target = field(default_factory=Target)
    """The machine the schedule is compiled for (mrc/target.py): its device, precision, world…"""
    kernels: str = "auto"
    lr_schedule: Any = None  # Rule | None: the learning-rate schedule (name and arguments)
    notes: list[str] = field(default_factory=list)
    laps: int = 1
    """The stages run in order `laps` times (multi-lap module-wise training)."""
    cadence: tuple[Op, ...] = ()
    """Ops that run on a cadence of the run's global steps beside the stages' periods
    (evaluation, checkpoints: mrc/ir/cadence.py)."""
    tables: dict[TableKind[Any], Any] = field(default_factory=dict)
    """Each technique's tables (frozen values, replaced by `set_table`, never changed in place),
    in the registry's order (mrc/techniques)."""

    # ---- technique tables -------------------------------------------------------------------

    def table(self, kind: TableKind[T]) -> T:
        """The graph's table of `kind` (the kind's empty value where it has none)."""
        got = self.tables.get(kind, _ABSENT)
        return kind.empty() if got is _ABSENT else got

    def set_table(self, kind: TableKind[T], value: T) -> None:
        """Set (replace) the graph's table of `kind`."""
        self.tables[kind] = value

    # ---- shortcuts --------------------------------------------------------------------------

    @property
    def device(self) -> str:
        """The target's device (`cpu` or `cuda`)."""
        return self.target.device

    @property
    def precision(self) -> str:
        """`32`, `bf16` or `16-mixed` (the target's, from `train(precision)`): the precision pass
        writes it into the forwards (autocast) and backwards (loss scaling) that lowering reads."""
        return self.target.precision

    @property
    def stage(self) -> Stage:
        """The first (for today's specs, the only) stage."""
        return self.stages[0]

    @property
    def period(self) -> int:
        return self.stage.period

    def at(self, step: int) -> list[Op]:
        """The ops of step `step` of the first stage, in canonical order."""
        return self.stage.at(step).ops()

    def patterns(self) -> Iterator[Pattern]:
        for stage in self.stages:
            yield from stage.patterns

    def ops(self) -> Iterator[Op]:
        """Every op of every pattern once (patterns in order)."""
        for p in self.patterns():
            yield from p.ops()

    def copy(self) -> ScheduleGraph:
        """A copy whose stages and notes can change without touching this graph (the tables,
        being frozen, are shared)."""
        return ScheduleGraph([s.copy() for s in self.stages], dict(self.partitions), self.layers, self.target,
                             self.kernels, self.lr_schedule, list(self.notes), self.laps, self.cadence,
                             dict(self.tables))

    def reindex(self) -> None:
        for s in self.stages:
            s.reindex()

    # ---- invariants ---------------------------------------------------------------------

    def verify(self) -> None:
        """Check the invariants every pass must keep; raise GraphError naming the first broken."""
        if not self.stages:
            raise GraphError("the schedule has no stage")
        for stage in self.stages:
            if stage.period < 1:
                raise GraphError(f"stage {stage.name}: period must be ≥ 1, not {stage.period}")
            if len(stage.pattern_of) != stage.period:
                raise GraphError(f"stage {stage.name}: {len(stage.pattern_of)} steps mapped, period {stage.period}")
            for i, p in enumerate(stage.patterns):
                wrong = [s for s in p.steps if stage.pattern_of[s] != i]
                if wrong:
                    raise GraphError(f"stage {stage.name}: step {wrong[0]} listed by a pattern it does not run")
                if not nx.is_directed_acyclic_graph(p.g):
                    cycle = nx.find_cycle(p.g)
                    raise GraphError(f"the schedule has a cycle: {' → '.join(a for a, _ in cycle)}")
                updated: list[str] = []
                for op in p.ops():
                    unknown = [n for n in op.partitions_used() if n not in self.partitions]
                    if unknown:
                        raise GraphError(f"{op.id}: unknown partition `{unknown[0]}`")
                    op.verify(p)
                    parts = getattr(op, "partitions", None) or ((op.partition,) if op.kind == "update" else ())
                    for r in op.scope.replica or ("",):
                        updated += [f"{r}.{n}" for n in parts]
                dup = sorted({n for n in updated if updated.count(n) > 1})
                if dup:
                    raise GraphError(f"step {p.steps[0] if p.steps else '?'}: partition "
                                     f"{dup[0].lstrip('.')} is updated twice")

        from mrc.techniques import table_kinds

        for kind in table_kinds():
            if kind.verify is not None:
                kind.verify(self, self.table(kind))

    # ---- printing -----------------------------------------------------------------------

    def header(self) -> list[str]:
        lines = [f"schedule laps={self.laps} (the stages below run {self.laps} times in order)"] \
            if self.laps > 1 else []
        for stage in self.stages:
            length = "" if stage.length is None else f" length={stage.length} {stage.unit}"
            lines.append(f"schedule stage={stage.name} period={stage.period} patterns={len(stage.patterns)}{length}")
        lines += [f"  cadence: {op.text()}" for op in self.cadence]
        lines += [f"  note: {note}" for note in self.notes]
        for kind, value in self.tables.items():
            if kind.place == "top":
                lines += kind.header(value)
        for name, info in self.partitions.items():
            lines.append(f"  partition {name}: {info.text()}")
        if self.precision != "32":
            lines.append(f"  precision: {self.precision}")
        for kind, value in self.tables.items():
            if kind.place == "bottom":
                lines += kind.header(value)
        return lines

    def _listing(self, pattern: Pattern) -> list[str]:
        ops = pattern.ops()
        numbering = {op.id: i for i, op in enumerate(ops)}
        lines = []
        for op in ops:
            deps = [f"%{numbering[p.id]}" + (f":{v.kind}" if v.kind != "order" else "")
                    for p, v in pattern.inputs(op)]
            where = " ".join(t for t in (op.scope.text(), _phase(op)) if t)
            scope = f" @[{where}]" if where else ""
            after = f"  ← {', '.join(deps)}" if deps else ""
            text = op.named(self.layers) if isinstance(op, Forward) else op.text()
            lines.append(f"  %{numbering[op.id]} = {text}{scope}{after}")
        return lines

    def to_text(self, compact: bool = False) -> str:
        """The canonical listing: header, tables, then each step's ops (each input edge as
        `%n:value`). `compact`: each distinct step pattern once, with the steps that run it."""
        lines = self.header()
        for stage in self.stages:
            multi = len(self.stages) > 1
            if compact:
                for i, p in enumerate(stage.patterns):
                    lines.append(f"{stage.name + ' ' if multi else ''}pattern {i} (steps {_ranges(p.steps)}):")
                    lines += self._listing(p)
                continue
            listings = [self._listing(p) for p in stage.patterns]
            for step in range(stage.period):
                lines.append(f"{stage.name + ' ' if multi else ''}step {step}:")
                lines += listings[stage.pattern_of[step]]
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        """Graphviz DOT: one cluster per step pattern (labelled with its steps), scopes as
        sub-clusters, edges labelled with their values."""
        out = ["digraph schedule {", "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
        for si, stage in enumerate(self.stages):
            for pi, p in enumerate(stage.patterns):
                prefix = f"g{si}p{pi}"
                out.append(f"  subgraph cluster_{prefix} {{")
                out.append(f'    label="{_dot_escape(stage.name)} steps {_ranges(p.steps)}";')
                scopes: dict[str, list[Op]] = {}
                for op in p.ops():
                    scopes.setdefault(op.scope.key(), []).append(op)
                for skey, ops in scopes.items():
                    if skey:
                        label = _dot_escape(ops[0].scope.text())
                        out.append(f'    subgraph cluster_{prefix}_{_ident(skey)} {{ label="{label}";')
                    for op in ops:
                        out.append(f'    "{prefix}/{op.id}" [label="{_dot_escape(op.text())}"];')
                    if skey:
                        out.append("    }")
                out.append("  }")
                for a, b, d in sorted(p.g.edges(data=True), key=lambda e: (e[0], e[1])):
                    label = "" if d["value"].kind == "order" else f' [label="{_dot_escape(d["value"].text())}"]'
                    out.append(f'  "{prefix}/{a}" -> "{prefix}/{b}"{label};')
        out.append("}")
        return "\n".join(out) + "\n"

    def to_json(self) -> str:
        from dataclasses import asdict

        data = {
            "stages": [{"name": s.name, "period": s.period, "length": s.length, "unit": s.unit,
                        "pattern_of": list(s.pattern_of),
                        "patterns": [{"steps": list(p.steps),
                                      "ops": [dict(id=op.id, **op.attrs()) for op in p.ops()],
                                      "edges": [[a, b, d["value"].kind, list(d["value"].partitions)]
                                                for a, b, d in sorted(p.g.edges(data=True), key=lambda e: e[:2])]}
                                     for p in s.patterns]} for s in self.stages],
            "partitions": {n: _partition_json(asdict(i)) for n, i in self.partitions.items()},
            "layers": list(self.layers), "target": _target_json(self.target), "kernels": self.kernels,
            "lr_schedule": None if self.lr_schedule is None else self.lr_schedule.to_json(),
            "notes": list(self.notes),
        }
        if self.laps != 1:
            data["laps"] = self.laps
        if self.cadence:
            data["cadence"] = [dict(id=op.id, **op.attrs()) for op in self.cadence]
        for kind, value in self.tables.items():
            data.update(kind.encode(value))
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ScheduleGraph:
        """Read `to_json`'s form back. The op kinds and records it names must be registered:
        the techniques register theirs when imported (`mrc.techniques.load_all()`)."""
        data = json.loads(text)
        stages = []
        for s in data["stages"]:
            patterns = []
            for pd in s["patterns"]:
                p = Pattern(pd["steps"])
                ops = {}
                for od in pd["ops"]:
                    od = dict(od)
                    kind, nid = od.pop("kind"), od.pop("id")
                    ops[nid] = p.add(OP_KINDS[kind].from_attrs(od))
                for a, b, kind, parts in pd["edges"]:
                    p.connect(ops[a], ops[b], Value(kind, tuple(parts)))
                patterns.append(p)
            stages.append(Stage(s["name"], s["period"], patterns, tuple(s["pattern_of"]), s["length"], s["unit"]))
        sched = None if data.get("lr_schedule") is None else decode(data["lr_schedule"])
        from mrc.techniques import table_kinds

        tables = {}
        for kind in table_kinds():
            value = kind.decode(data)
            if value is not None:
                tables[kind] = value
        return cls(stages,
                   {n: PartitionInfo(**{**i, "params": tuple(i["params"]), "partial": tuple(i.get("partial", ()))})
                    for n, i in data["partitions"].items()},
                   tuple(data["layers"]), Target(**data["target"]), data["kernels"], sched, list(data["notes"]),
                   data.get("laps", 1),
                   tuple(OP_KINDS[od["kind"]].from_attrs({k: v for k, v in od.items() if k not in ("kind", "id")})
                         for od in data.get("cadence", ())),
                   tables)


def _target_json(target: Target) -> dict[str, Any]:
    """The target as the schedule every rank runs: without this process's own rank, so that every
    rank's graph (and its fingerprint, which checkpoints keep) is the same, and without whether
    Triton runs, which the schedule shows in its ops' kernels (a resume on a machine where it
    differs is refused only where a kernel does)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(target).items() if k not in ("rank", "local_rank", "triton")}


def _partition_json(info: dict[str, Any]) -> dict[str, Any]:
    """A partition's JSON: tuples as lists; the element-level fields only where set."""
    out = {**info, "params": list(info["params"]), "partial": list(info["partial"])}
    for key in ("partial", "sample"):
        if not out[key]:
            del out[key]
    return out


def _phase(op: Op) -> str:
    """`phase=j` for an op of a step's phase j > 0 (a pipeline's micro-batch j), else ''."""
    phase = getattr(op, "phase", 0)
    return f"phase={phase}" if phase else ""


def _ranges(steps: Iterable[int]) -> str:
    """`0, 2-4, 7` for the steps 0, 2, 3, 4, 7."""
    out: list[str] = []
    run: list[int] = []
    for s in steps:
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [s]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(out)


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("{", "\\{").replace("}", "\\}")


def _ident(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def lcm(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out


__all__ = ["PartitionInfo", "Pattern", "ScheduleGraph", "Stage", "TableKind", "lcm"]
