"""The placement of a run of several processes: what each rank holds.

Known once the world's size is (the launcher's WORLD_SIZE, or `mrc graph --nproc N`): a
one-process run has no placement, and several processes without a `distributed` statement are
data-parallel. A mode that cannot give every rank its share (fewer brains, modules or coarse
intervals than ranks, a batch smaller than the world) is a diagnostic at the statement.
"""

from __future__ import annotations

from typing import Any

from mrc.diagnostics import Reporter, Span
from mrc.program import Program
from mrc.techniques.distributed.tables import PlacementInfo


def blocks(n: int, world: int) -> list[tuple[int, int]]:
    """`n` items in `world` contiguous blocks, as even as can be (the first blocks one longer)."""
    base, extra = divmod(n, world)
    out, start = [], 0
    for r in range(world):
        size = base + (1 if r < extra else 0)
        out.append((start, start + size))
        start += size
    return out


def bind(bound: Any, r: Reporter) -> PlacementInfo | None:
    """The technique's binding: the placement of the bound run's world (None: one process)."""
    return bind_placement(bound.program, bound.world, bound, r)


def bind_placement(program: Program, world: int, bound: Any, r: Reporter) -> PlacementInfo | None:
    """The placement of `world` processes (None for one process); problems go to `r`."""
    if world <= 1:
        return None
    d = program.distributed
    mode = d.mode if d is not None else "data"
    span: Span | None = d.mode_span if d is not None else None
    backend, timeout = (d.backend, d.timeout) if d is not None else ("auto", 300.0)
    ranks: list[tuple[str, int]] = []
    batchnorm = ""
    if mode == "data":
        batch = bound.data.batch_size
        if batch < world:
            r.error(f"a batch of {batch} cannot be split across {world} processes", span or program.data.span,
                    hint="use a batch at least as large as the number of processes")
            return None
        if _has_batchnorm(bound.model) and not program.brains:
            batchnorm = "global"
    elif mode == "brains":
        names = [b.name for b in program.brains]
        if len(names) < world:
            r.error(f"{len(names)} brains cannot fill {world} ranks (each rank holds one or more)", span)
            return None
        for rank, (a, b) in enumerate(blocks(len(names), world)):
            ranks += [(n, rank) for n in names[a:b]]
    elif mode == "pipeline":
        names = list(bound.parts["modules"].names)
        if len(names) < world:
            r.error(f"{len(names)} modules cannot fill {world} ranks (each rank runs one or more)", span)
            return None
        micro = d.micro_batches if d is not None else 1
        if bound.data.batch_size < micro:
            r.error(f"a batch of {bound.data.batch_size} cannot be split into {micro} micro-batches",
                    d.spans.get("micro_batches", span) if d is not None else span,
                    hint="use a batch at least as large as the number of micro-batches")
            return None
        for rank, (a, b) in enumerate(blocks(len(names), world)):
            ranks += [(n, rank) for n in names[a:b]]
    elif mode == "layers":
        from mrc.techniques.mgrit.grid import Settings, layer_blocks

        for st in bound.parts.get("mgrit", ()):
            spec = st.spec
            split = layer_blocks(st.steps, Settings(spec.levels, tuple(spec.coarsening), tuple(spec.relax)),
                                 world)
            if isinstance(split, str):
                r.error(f"the stack `{st.path}` cannot be split across {world} ranks: {split}", span)
                return None
            ranks += [(f"{st.path}[{a}:{b}]", rank) for rank, (a, b) in enumerate(split)]
    if d is not None and mode == "pipeline":
        return PlacementInfo(mode, world, backend, timeout, tuple(ranks), d.micro_batches, d.buffers)
    return PlacementInfo(mode, world, backend, timeout, tuple(ranks), batchnorm=batchnorm)


def _has_batchnorm(module: Any) -> bool:
    """Whether the model holds a batch-norm layer (its statistics are then made global over the
    ranks: mrc/techniques/distributed/batchnorm.py)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return any(isinstance(m, _BatchNorm) for m in module.modules())
