"""Layer-parallel training in the schedule graph: the regions of MGRIT ops around a stack.

Run as the `mgrit-regions` pass, after the passes that decide what each step differentiates
(prune-gradients, freeze-prefix) and how its updates run: every forward whose segment holds a
stack gets the forward solve's ops after it (they run inside it), and a backward of the same
scope and gradient point that differentiates anything at or before the stack's last layer gets
the adjoint solve's ops after it (they run inside it; a step that differentiates only layers
after the stack — a fast head over a slow stack — needs no adjoint, and has none). Each solve
is `iters` iterations of `iteration_phases(levels)`, one op per phase, scoped by level and
iteration; order edges chain them between their forward (or backward) and what follows it, so
the listing is the order in which they run.

Convergence control adds the paths a step may take instead (mrc/techniques/mgrit/ops.py, WHEN):
with `check_every`, the iterations a check step doubles to (`when=check`; with `more_iterations`,
up to MORE_CAP times the spec's, `when=more`), and with `on_divergence = serial` the serial
propagation it falls back to (`mgrit_serial … when=serial`, the MGRIT iterations then `when=mgrit`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mrc.ir.graph import Pattern, ScheduleGraph
from mrc.ir.ops import Backward, Forward, GraphError, Op
from mrc.ir.tables import TableKind
from mrc.techniques.base import Expansion
from mrc.techniques.mgrit.grid import MORE_CAP
from mrc.techniques.mgrit.ops import PHASES, Relax, SerialStack, SolvePhase, SolveSettings, iteration_phases
from mrc.techniques.mgrit.tables import STACKS, StackInfo

if TYPE_CHECKING:
    from mrc.binding import Bound


def covers(fwd: Forward, info: StackInfo) -> bool:
    """Whether the forward's segment [start, stop) holds the whole stack; a segment that cuts
    through the stack is a GraphError (the solve stands in for all of it)."""
    stop = fwd.stop if fwd.stop is not None else 2**62
    if stop <= info.first or fwd.start > info.last:
        return False
    if fwd.start <= info.first and stop > info.last:
        return True
    raise GraphError(f"{fwd.id}: its segment cuts through an MGRIT stack (layers {info.first}–{info.last})")


def _through(graph: ScheduleGraph, wrt: tuple[str, ...], info: StackInfo, index: dict[str, int]) -> bool:
    """Whether differentiating `wrt` needs the gradient flowing back through the stack."""
    return any(index.get(p.rpartition(".")[0], 2**62) <= info.last
               for n in wrt for p in graph.partitions[n].params)


def _chain(p: Pattern, after: Op, ops: list[SolvePhase]) -> None:
    """Put `ops` between `after` and its successors (order edges)."""
    succs = [s for s in p.succs(after) if not isinstance(s, SolvePhase)]
    prev = after
    for op in ops:
        p.add(op, p.after([prev]))
        prev = op
    for s in succs:
        p.connect(prev, s)


def solve_ops(path: str, info: StackInfo, fwd: Op, solve: str) -> list[SolvePhase]:
    """The phase ops of one solve of the stack at `path`: its iterations of its levels' phases,
    each op carrying the solve's settings, then the paths its convergence control may take."""
    iters = info.forward_iters if solve == "forward" else info.backward_iters
    settings = SolveSettings(info.steps, info.h, info.kind, info.coarsening,
                             info.forward_tol if solve == "forward" else info.backward_tol, info.warm_start,
                             info.buffer, info.on_divergence, info.check_every)
    relax = info.relax
    policy, checked = info.on_divergence, info.check_every > 0
    extra = 0 if not checked else (MORE_CAP - 1) * iters if policy == "more_iterations" else iters
    first = "mgrit" if checked and policy == "serial" else ""
    later = "more" if policy == "more_iterations" else "check"
    out: list[SolvePhase] = []
    for i in range(iters + extra):
        when = first if i < iters else later
        for phase, level in iteration_phases(info.levels):
            scope = replace(fwd.scope, level=level, iteration=i)
            if phase == "relax":
                out.append(Relax(scope, path, solve, settings=settings, relax=relax[min(level, len(relax) - 1)],
                                 when=when))
            else:
                out.append(PHASES[phase](scope, path, solve, settings=settings, when=when))
    if checked and policy == "serial":
        out.append(SerialStack(fwd.scope, path, solve, settings=settings, when="serial"))
    return out


def add_regions(graph: ScheduleGraph) -> None:
    """Insert every stack's solve regions into every pattern of `graph` (in place)."""
    index = {layer: i for i, layer in enumerate(graph.layers)}
    for p in graph.patterns():
        for path, info in graph.table(STACKS).items():
            for fwd in [f for f in p.of_kind(Forward) if covers(f, info)]:
                _chain(p, fwd, solve_ops(path, info, fwd, "forward"))
                for bwd in p.of_kind(Backward):
                    if bwd.scope == fwd.scope and bwd.phase == fwd.phase and _through(graph, bwd.wrt, info, index):
                        _chain(p, bwd, solve_ops(path, info, fwd, "adjoint"))


def stack_table(bound: Bound) -> dict[str, StackInfo]:
    """The stacks solved by MGRIT, with where their layers lie in the graph's layer list."""
    index = {layer: i for i, layer in enumerate(bound.layers)}
    out = {}
    for st in bound.parts.get("mgrit", ()):
        spec = st.spec
        where = [i for layer, i in index.items() if layer.startswith(st.path + ".")]
        if not where:
            raise ValueError(f"the MGRIT stack `{st.path}` holds no parameterised layer")
        out[st.path] = StackInfo(min(where), max(where), st.steps, st.h, st.kind, st.first_node, st.last_node,
                                 spec.levels, tuple(spec.coarsening), tuple(spec.relax), spec.forward_iters,
                                 spec.backward_iters, spec.forward_tol, spec.backward_tol, spec.warm_start,
                                 spec.buffer, spec.on_divergence, spec.check_every)
    return out


def tables(bound: Bound) -> Mapping[TableKind[Any], Any]:
    """The stacks' table (empty without MGRIT)."""
    return {STACKS: stack_table(bound)}


EXPANSION = Expansion(tables=tables)
