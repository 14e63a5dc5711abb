"""The `layers` placer: an MGRIT-solved stack's layers in one contiguous block per rank.

`distributed layers` runs every op on every rank — the layers around the stack on the full
batch, identically, so their gradients need no reduction — and splits each stack's solves: the
placer writes into every phase op the layer block each rank solves (`SolvePhase.blocks`; the
forward solve's blocks are whole coarsest intervals, `grid.layer_blocks`, the adjoint's the same
counted from N, `grid.adjoint_blocks`), and puts a `mgrit_sum_grads` between each backward that
differentiates stack layers and the updates that read its gradients: each rank's adjoint gave the
gradients of its own block's layers only, and the sum gives every rank the whole stack's, so the
replicated parameters move identically everywhere.

Example (16 layers, coarsening 4, 2 ranks), step 0:
    before:  … mgrit_relax FCF stack (forward) @[level=0 iteration=0] …; backward wrt {all};
             … mgrit_correct stack (adjoint) @[level=0 iteration=0]; update_group all ← backward:grads
    after:   … mgrit_relax FCF stack (forward) on ranks 0..1 blocks [0:8] [8:16] @[…] …;
             backward wrt {all}; … (adjoint) on ranks 0..1 blocks [0:8] [8:16] …;
             mgrit_sum_grads stack layers of {all} over 2 ranks ← backward:grads;
             update_group all ← mgrit_sum_grads:grads
"""

from __future__ import annotations

import dataclasses

from mrc.ir.graph import Pattern, ScheduleGraph
from mrc.ir.ops import ORDER, Backward, GraphError, Op, Value
from mrc.techniques.distributed.expand import between_backward_and_readers
from mrc.techniques.distributed.tables import PLACEMENT
from mrc.techniques.mgrit.grid import Blocks, Settings, adjoint_blocks, layer_blocks
from mrc.techniques.mgrit.ops import SolvePhase, SumStackGrads
from mrc.techniques.mgrit.tables import STACKS, StackInfo


def stack_blocks(info: StackInfo, world: int) -> tuple[Blocks, Blocks]:
    """The forward and the adjoint solve's layer blocks of `world` ranks."""
    if info.buffer or info.warm_start in ("coarse", "cache"):
        what = f"`buffer = {info.buffer}`" if info.buffer else f"`warm_start = {info.warm_start}`"
        raise GraphError(f"{what} is not supported across ranks (`distributed layers`) yet")
    settings = Settings(info.levels, info.coarsening, info.relax, info.forward_iters)
    forward = layer_blocks(info.steps, settings, world)
    if isinstance(forward, str):
        raise GraphError(f"a stack of {info.steps} layers cannot be split across {world} ranks: {forward}")
    return forward, adjoint_blocks(info.steps, settings, forward)


def _stack_partitions(graph: ScheduleGraph, path: str, wrt: tuple[str, ...]) -> bool:
    return any(t.startswith(path + ".") for n in wrt for t in graph.partitions[n].params)


def _adjoint_end(p: Pattern, back: Backward, path: str) -> SolvePhase | None:
    """The last op of the adjoint solve chained after `back` (mrc/techniques/mgrit/expand.py)."""
    end: SolvePhase | None = None
    at: Op = back
    while True:
        nxt = [s for s in p.succs(at) if isinstance(s, SolvePhase) and s.stack == path and s.solve == "adjoint"]
        if not nxt:
            return end
        at = end = nxt[0]


def sum_stack_grads(graph: ScheduleGraph, p: Pattern, path: str, world: int) -> None:
    """Put a `mgrit_sum_grads` of the stack at `path` between every backward that differentiates its
    layers and the ops that read its gradients (the backward's clipping moves after the sum)."""

    def make(back: Op, parts: tuple[str, ...], clip: float) -> tuple[Op, list[tuple[Op, Value]]] | None:
        if not _stack_partitions(graph, path, parts):
            return None
        last = _adjoint_end(p, back, path)  # listed (and run) after the adjoint solve that gave them
        return (SumStackGrads(back.scope, path, parts, world, getattr(back, "phase", 0), clip),
                [(last, ORDER)] if last is not None else [])

    between_backward_and_readers(p, make)


def place_layers(graph: ScheduleGraph) -> ScheduleGraph:
    """Each stack's solves split into rank blocks; its layers' gradients summed over the ranks."""
    placement = graph.table(PLACEMENT)
    assert placement is not None
    world = placement.world
    out = graph.copy()
    for path, info in out.table(STACKS).items():
        forward, adjoint = stack_blocks(info, world)
        for p in out.patterns():
            for op in [o for o in p.of_kind(SolvePhase) if o.stack == path]:
                p.replace(op, dataclasses.replace(op, blocks=forward if op.solve == "forward" else adjoint))
            sum_stack_grads(out, p, path, world)
    out.reindex()
    return out
