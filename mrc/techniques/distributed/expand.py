"""Expanding the schedule graph for a run of several processes (the `distribute` pass).

Each mode has a placer, `graph → graph`, named in the `place` of the technique it places
(mrc/techniques): `data` here; `brains`, `layers` and `pipeline` in their techniques' `place.py`
(compiler code, no runtime). A placer scopes the
ops it places on a rank (`Scope.rank`) and adds the collectives the placement needs, so the
graph says what every process runs and when they talk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mrc.ir.graph import Pattern, ScheduleGraph
from mrc.ir.ops import Op, Value
from mrc.techniques.base import Expansion
from mrc.techniques.distributed.ops import AllReduce, Shard
from mrc.techniques.distributed.tables import PLACEMENT

if TYPE_CHECKING:
    from mrc.binding import Bound
    from mrc.ir.tables import TableKind


def shard_batches(p: Pattern, world: int, batchnorm: str = "") -> None:
    """Put a `shard` between every batch op and what reads it."""
    for batch in [op for op in p.ops() if op.kind == "batch"]:
        readers = [(s, v) for s, v in p.outputs(batch)]
        shard = p.add(Shard(batch.scope, world, batchnorm), [(batch, Value("batch"))])
        for reader, value in readers:
            p.g.remove_edge(batch.id, reader.id)
            p.connect(shard, reader, value)


GradientOp = Callable[[Op, tuple[str, ...], float], tuple[Op, list[tuple[Op, Value]]] | None]
"""Given a backward, the partitions whose gradients are read after it and its clipping: the op
to stand between them (and its further inputs), or None for none."""


def between_backward_and_readers(p: Pattern, make: GradientOp) -> None:
    """Put the op `make` gives between every backward and the ops that read its gradients (an
    all-reduce, a stack's gradient sum): the readers take the gradients from it, and the
    backward's clipping moves onto it (it clips what it hands on)."""
    for back in [op for op in p.ops() if op.kind == "backward"]:
        readers = [(s, v) for s, v in p.outputs(back) if v.kind == "grads"]
        parts = tuple(n for n in back.wrt if any(n in v.partitions for _, v in readers))
        clip = getattr(back, "clip", 0.0)
        made = make(back, parts, clip) if parts else None
        if made is None:
            continue
        op, extra = made
        if clip:
            p.replace(back, dataclasses.replace(back, clip=0.0))
            back = p.op(back.id)
        between = p.add(op, [(back, Value("grads", parts)), *extra])
        for reader, value in readers:
            p.g.remove_edge(back.id, reader.id)
            p.connect(between, reader, value)


def place_data(graph: ScheduleGraph) -> ScheduleGraph:
    """Data parallelism: every rank runs every op on its shard of the batch; gradients are
    averaged where they are read."""
    placement = graph.table(PLACEMENT)
    assert placement is not None
    world = placement.world
    out = graph.copy()
    for p in out.patterns():
        shard_batches(p, world, placement.batchnorm)
        between_backward_and_readers(p, lambda back, parts, clip: (
            AllReduce(back.scope, parts, world, "mean", getattr(back, "phase", 0), clip), []))
    out.reindex()
    return out


def scoped(op: Op, rank: int) -> Op:
    """`op` placed on `rank`."""
    return dataclasses.replace(op, scope=dataclasses.replace(op.scope, rank=rank))


def tables(bound: Bound) -> Mapping[TableKind[Any], Any]:
    """The placement the binding made (none for one process)."""
    return {PLACEMENT: bound.parts.get("distributed")}


EXPANSION = Expansion(tables=tables)
