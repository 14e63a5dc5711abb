"""The placement table on the schedule graph: how a run's processes share the work."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mrc.ir.tables import TableKind


@dataclass(frozen=True, slots=True)
class PlacementInfo:
    """How the run's `world` processes share the work (mrc/techniques/distributed): `mode`
    (data | brains | layers | pipeline), the backend and collective timeout, and `ranks`: what
    each rank holds, as (name, rank) pairs (a brain, a module, or a stack's block of layers
    `STACK[a:b]`; empty for data parallelism, where every rank holds everything). A pipeline's
    micro-batches and buffers (sync | stale)."""

    mode: str
    world: int
    backend: str = "auto"
    timeout: float = 300.0
    ranks: tuple[tuple[str, int], ...] = ()
    micro_batches: int = 1
    buffers: str = "sync"
    batchnorm: str = ""
    """`global`: data parallelism of a model with batch norm, whose layers normalise over the
    global batch (mrc/techniques/distributed/batchnorm.py); "" otherwise."""

    def rank_of(self, name: str) -> int:
        """The rank that holds `name` (-1: every rank)."""
        for n, r in self.ranks:
            if n == name:
                return r
        return -1

    def text(self) -> str:
        extra = f" micro_batches={self.micro_batches} buffers={self.buffers}" if self.mode == "pipeline" else ""
        extra += f" batchnorm={self.batchnorm}" if self.batchnorm else ""
        return f"mode={self.mode} world={self.world} backend={self.backend} timeout={self.timeout:g}s{extra}"

    def held(self) -> list[str]:
        """One line per rank: what it holds."""
        out = []
        for r in range(self.world):
            mine = [n for n, rank in self.ranks if rank == r]
            out.append(f"rank {r}: {', '.join(mine) if mine else 'everything (a replica)'}")
        return out


def _encode(table: PlacementInfo | None) -> dict[str, Any]:
    if table is None:
        return {}
    return {"placement": {**asdict(table), "ranks": [list(x) for x in table.ranks]}}


def _decode(data: dict[str, Any]) -> PlacementInfo | None:
    placed = data.get("placement")
    if placed is None:
        return None
    return PlacementInfo(**{**placed, "ranks": tuple((str(n), int(r)) for n, r in placed["ranks"])})


def _header(table: PlacementInfo | None) -> list[str]:
    if table is None:
        return []
    return [f"  placement: {table.text()}", *(f"    {line}" for line in table.held())]


def _none() -> PlacementInfo | None:
    return None


PLACEMENT: TableKind[PlacementInfo | None] = TableKind("placement", _none, _encode, _decode, _header, place="bottom")
