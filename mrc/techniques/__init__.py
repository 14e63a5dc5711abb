"""Techniques as units: the one ordered registry every stage of the compiler iterates.

Each technique folder exports one `Technique` record (mrc/techniques/base.py) from its
`__init__.py`: its statements' checks, its binding, its graph tables and expansion, its passes
and placers, its op kinds and their lowerings. `techniques()` lists them in composition order:
the built-ins in `BUILTIN`'s order, then the techniques of installed packages, found through
the entry-point group `mrc.techniques` (each entry point names a `Technique`; one with `after`
comes right after the techniques it names, the others after every built-in, by entry-point
name). Order is explicit, never import order: the checker's deferred checks, binding, the
graph's tables, the pass pipeline and the choice among lowering variants all follow it.

`core` is plain training (model, data, optimizer, schedule, train settings); `multirate` is
partitions with rates and linear drift (its partitions are the graph's core table: every
update names one); `random_subsets` and `langevin` are the seed's regularisation and
integrator; `brains` is multirate across networks (a replica scope); `modules` is module-wise
training (a module scope, and stages for its regimes); `mgrit` is layer-parallel training;
`sweep` checks the hyper-parameter search that `mrc.sweep` runs; `distributed` places a run on
several processes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mrc.diagnostics import CompileError, Diagnostic
from mrc.techniques.base import Technique, resolve

if TYPE_CHECKING:
    from mrc.ir.tables import TableKind

BUILTIN = ("core", "multirate", "random_subsets", "langevin", "brains", "modules", "mgrit", "sweep",
           "distributed")
"""The built-in techniques (folders of this package), in composition order."""

GROUP = "mrc.techniques"
"""The entry-point group external techniques register under."""


class TechniqueError(CompileError):
    """A technique plugin cannot be loaded or its record is wrong (one line naming its entry point)."""

    def __init__(self, message: str) -> None:
        super().__init__([Diagnostic(message, None)])


_REGISTRY: tuple[Technique, ...] | None = None


def techniques() -> tuple[Technique, ...]:
    """Every technique, in composition order (plugins loaded once, on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        builtin = [importlib.import_module(f"{__name__}.{name}").TECHNIQUE for name in BUILTIN]
        _REGISTRY = tuple(compose(builtin, plugins()))
    return _REGISTRY


def technique(name: str) -> Technique | None:
    """The technique called `name` (None: no such technique)."""
    return next((t for t in techniques() if t.name == name), None)


def plugins() -> list[tuple[str, Technique]]:
    """(entry point name, record) of every installed technique plugin, by entry-point name; a
    plugin that does not import, is not a `Technique` or names code that does not exist is a
    `TechniqueError` naming the entry point."""
    from importlib.metadata import entry_points

    out = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        where = f"the technique plugin `{ep.name} = {ep.value}` (entry point group {GROUP})"
        try:
            record = ep.load()
        except Exception as err:  # a plugin's import may raise anything: one line, no traceback
            raise TechniqueError(f"{where} cannot be loaded: {type(err).__name__}: {err}") from None
        if not isinstance(record, Technique):
            raise TechniqueError(f"{where} is a {type(record).__name__}, not an "
                                 "mrc.techniques.base.Technique record")
        for ref in record.refs():
            try:
                resolve(ref)
            except Exception as err:
                raise TechniqueError(f"{where} names `{ref}`, which cannot be loaded: "
                                     f"{type(err).__name__}: {err}") from None
        out.append((ep.name, record))
    return out


def compose(builtin: list[Technique], extra: list[tuple[str, Technique]]) -> list[Technique]:
    """The registry's order: the built-ins, then each plugin right after the last technique its
    `after` names (after every earlier plugin placed there), or at the end."""
    order = list(builtin)
    for ep, t in extra:
        names = [x.name for x in order]
        if t.name in names:
            raise TechniqueError(f"the technique plugin `{ep}` is called `{t.name}`, as a technique already is")
        unknown = [a for a in t.after if a not in names]
        if unknown:
            raise TechniqueError(f"the technique plugin `{ep}` comes after `{unknown[0]}`, which is no technique "
                                 f"(techniques are {', '.join(names)})")
        at = max((names.index(a) for a in t.after), default=len(order) - 1) + 1
        while at < len(order) and set(t.after) & set(order[at].after):
            at += 1  # an earlier plugin after the same technique stays first
        order.insert(at, t)
    return order


def table_kinds() -> list[TableKind[Any]]:
    """Every technique's table kinds, in registry order."""
    return [resolve(ref) for t in techniques() for ref in t.tables]


def load_all() -> None:
    """Import every technique's op kinds and lowerings, so the registries know them all (to
    read JSON, to lower)."""
    for t in techniques():
        for ref in t.ops:
            resolve(ref)


_RANKS: dict[str, int] = {}


def module_rank(module: str) -> int:
    """The registry position of the technique whose `ops` name `module` (after every technique
    for a module none names): the order in which lowering tries their variants."""
    if not _RANKS:
        _RANKS.update({ref.partition(":")[0]: i for i, t in enumerate(techniques()) for ref in t.ops})
    return _RANKS.get(module, len(techniques()))


__all__ = ["BUILTIN", "GROUP", "Technique", "TechniqueError", "compose", "load_all", "module_rank", "plugins",
           "table_kinds", "technique", "techniques"]
