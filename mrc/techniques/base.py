"""The `Technique` record: everything a technique adds to the compiler, in one value.

A technique folder (or an external package, through the entry-point group `mrc.techniques`)
exports one `Technique`; the registry (mrc/techniques/__init__.py) orders them and every stage
of the compiler iterates it: the checker imports each `check` module, binding runs each `bind`,
the graph builder asks each `expand` for its rates, stages, replicas and tables, the pass
pipeline takes each technique's `passes` at their positions, the `distribute` pass finds each
`place`r, JSON reads each `tables` kind, and lowering imports each `ops` module (op kinds and
their lowerings), a lowering variant of an earlier technique winning over a later one's.

Code is named by reference, `"package.module:attribute"` (or `"package.module"` for a module
imported for what it registers), as entry points name it: the record itself imports nothing, so
`mrc check` loads only the check modules it needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mrc.binding import Bound
    from mrc.ir.graph import Pattern
    from mrc.ir.ops import Batch, Op, Rule, Scope
    from mrc.ir.tables import TableKind

Rules = dict[str, tuple["Rule", float]]
"""Each partition's integrator rule and learning rate, for one replica."""

ReplicaStep = Callable[["Pattern", "Scope", int, "Batch", Rules], list["Op"]]
"""One step of one replica added to a pattern: (pattern, scope, the replica's own step n, its
batch op, its rules) → the ops the step ends with."""

StepExpander = Callable[["Pattern", "Bound", "Scope", int, "Batch", Rules], list["Op"]]
"""A stage's step expansion: a `ReplicaStep` that also receives the bound program."""

StepTail = Callable[["Pattern", "Bound", "Scope", int, list["Op"]], list["Op"]]
"""Ops added at the end of one replica's step: (pattern, bound, scope, the replica's own step n,
the ops the step ends with) → the ops it now ends with."""


@dataclass(frozen=True, slots=True)
class StagePlan:
    """A stage to build: its name, its length (epochs; None: the run's whole length) and the
    step expansion it uses (None: the plain step, mrc/techniques/multirate/expand.py)."""

    name: str
    length: int | None = None
    step: StepExpander | None = None


class Replication(Protocol):
    """How a technique runs several replicas of the model in one schedule (brains): the period
    its rates make of the replicas' own period, what distinguishes a global step, and the ops of
    a global step (each replica's step, and what joins them)."""

    def period(self, inner: int) -> int: ...

    def signature(self, t: int, step: Callable[[int], Hashable]) -> Hashable: ...

    def expand(self, pattern: Pattern, t: int, step: ReplicaStep) -> None: ...


@dataclass(frozen=True, slots=True)
class Expansion:
    """A technique's hooks into the graph builder (mrc/schedule.py); each is optional.

    rates: the rates of its own clocks — the period is the lcm of every technique's rates, and
    the steps on which they start distinguish the step patterns. stages: the stages (and laps)
    it splits the run into (None where the spec does not use it; one technique at most).
    replicas: its `Replication` (None where unused; one technique at most). after_step: the
    ops it adds at the end of each replica's step, after those of earlier techniques. tables:
    the values of its table kinds for this bound program.
    """

    rates: Callable[[Bound], Iterable[int]] | None = None
    stages: Callable[[Bound], tuple[list[StagePlan], int] | None] | None = None
    replicas: Callable[[Bound], Replication | None] | None = None
    after_step: StepTail | None = None
    tables: Callable[[Bound], Mapping[TableKind[Any], Any]] | None = None


@dataclass(frozen=True, slots=True)
class PassAt:
    """A pass a technique adds to the default pipeline: its name (kebab-case, as `mrc graph
    --after` names it), the pass class by reference, and the pass it runs right after ("" for
    the start of the pipeline; None: the end) — or, with `before`, the pass it runs right before
    (a pass whose results an earlier technique's pass reads: MGRIT's phase ops exist before
    select-kernels picks their kernel)."""

    name: str
    ref: str
    after: str | None = None
    before: str = ""


@dataclass(frozen=True, slots=True)
class Technique:
    """One technique (see the module docstring; each reference may be left empty).

    name: the technique's name (unique). check: the module whose import registers its
    statements, selectors and whole-spec checks (mrc.check.registry). ops: modules whose import
    registers its op kinds and their lowerings (mrc.ir.ops, mrc.lower.plan). bind: a function
    (bound, reporter) → its part of the binding (`Bound.parts[name]`; None where unused), run
    on the traced model before the partitions are resolved. split: a function (bound,
    partitions, reporter) → the partitions it splits them into (module-wise training: one per
    module). tables: its `TableKind`s. expand: its `Expansion`. passes: its passes, each at
    its position. place: distributed mode → the placer of that mode (`graph → graph`). draw:
    its `Drawing` (mrc.ir.draw: how its ops and tables are drawn). artifacts: the files and
    folders its runs leave in the run directory beside the core's (`--overwrite` removes them;
    the lowering writes them through the Plan's artifact hooks). after:
    the techniques it must come after in the registry (built-ins are in a fixed order; a
    plugin without `after` comes after them all).
    """

    name: str
    check: str = ""
    ops: tuple[str, ...] = ()
    bind: str = ""
    split: str = ""
    tables: tuple[str, ...] = ()
    expand: str = ""
    passes: tuple[PassAt, ...] = ()
    place: Mapping[str, str] = field(default_factory=dict)
    draw: str = ""
    artifacts: tuple[str, ...] = ()
    after: tuple[str, ...] = ()

    def refs(self) -> list[str]:
        """Every reference the record holds (a test resolves them all)."""
        return [r for r in (self.check, *self.ops, self.bind, self.split, *self.tables, self.expand,
                            *(p.ref for p in self.passes), *self.place.values(), self.draw) if r]


_RESOLVED: dict[str, Any] = {}


def resolve(ref: str) -> Any:
    """What `"package.module:attribute"` names (the module itself without `:attribute`),
    imported on first use and remembered."""
    got = _RESOLVED.get(ref)
    if got is None:
        module, _, attr = ref.partition(":")
        got = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            got = getattr(got, part)
        _RESOLVED[ref] = got
    return got


__all__ = ["Expansion", "PassAt", "ReplicaStep", "Replication", "Rules", "StagePlan", "StepExpander", "StepTail",
           "Technique", "resolve"]
