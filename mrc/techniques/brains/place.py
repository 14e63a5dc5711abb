"""Placing brains on ranks (`distributed brains`): the `brains` placer of the distribute pass.

Placement (the graph's placement table, mrc/techniques/distributed/bind.py): brain → rank in
contiguous blocks, one or more brains per rank. Every op of a brain (its batch, forward, loss,
backward, updates, drift; a stacked op of the brains of one rank — the batch-brains pass stacks
per rank) is scoped to the rank that holds it. Ops of no brain run on every rank. A merge whose
brains all live on one rank runs there as in one process (except `ema`, whose running average
is one for the whole run); any other merge becomes a collective of every rank: `all_reduce`
(mean, weighted, ema) or `all_gather` (best: the metrics gathered, the winner broadcast). The
runtime side is mrc/techniques/brains/ranks.py.

Example (brains a, b, c every 1, 1, 2 on 2 ranks: a, b on rank 0, c on rank 1), step 1:
    before:  batch @[brain=a] …; update_group … @[brains=a,b]; merge {a, b, c} mean
    after:   batch @[brain=a rank=0] …; update_group … @[brains=a,b rank=0];
             merge {a, b, c} mean all_reduce sum over 2 ranks
"""

from __future__ import annotations

import dataclasses

from mrc.ir.graph import ScheduleGraph
from mrc.ir.ops import GraphError, Op
from mrc.techniques.brains.ops import Merge
from mrc.techniques.distributed.expand import scoped
from mrc.techniques.distributed.tables import PLACEMENT


def place_brains(graph: ScheduleGraph) -> ScheduleGraph:
    """Each brain's ops on the rank that holds it; merges local to a rank, or collectives."""
    placement = graph.table(PLACEMENT)
    assert placement is not None
    world = placement.world
    owner = dict(placement.ranks)
    out = graph.copy()
    for p in out.patterns():
        for op in list(p.ops()):
            p.replace(op, _placed(op, owner, world))
    out.notes.append(f"brains on {world} ranks: each rank steps its own; merges across ranks are collectives")
    out.reindex()
    return out


def _placed(op: Op, owner: dict[str, int], world: int) -> Op:
    if op.scope.replica:
        ranks = sorted({owner[b] for b in op.scope.replica})
        if len(ranks) > 1:
            raise GraphError(f"{op.id}: one op for brains of ranks {ranks} (batch-brains stacks per rank)")
        return scoped(op, ranks[0])
    if isinstance(op, Merge):
        ranks = sorted({owner[b] for b in op.brains})
        if len(ranks) == 1 and op.merge.rule != "ema":
            return scoped(op, ranks[0])
        collective = "all_gather" if op.merge.rule == "best" else "all_reduce"
        return dataclasses.replace(op, collective=collective, world=world)
    return op
