"""distribute: place the schedule on the run's processes.

Requires: a verified graph whose placement table says the mode and the world (set at binding
from the launcher's WORLD_SIZE or `mrc graph --nproc N`); with no placement (one process) the
pass changes nothing.
Ensures: the placer of the mode (named in the `place` of a technique's record: `data` by
mrc/techniques/distributed, the others by the techniques they place) has scoped the ops it
places on a rank and added the collectives: for `data`, a `shard` after each batch and an
`all_reduce` of exactly the partitions that update between each backward and its updates; so
the collectives of each step pattern are those of the steps that run it.

Example, transfer learning (head every step, backbone every 5th) on 2 processes:
    before (step 1):  batch; forward; loss; backward wrt {head}; update_group head
    after  (step 1):  batch; shard batch 1/2 per rank; forward; loss; backward wrt {head};
                      all_reduce grads {head} mean over 2 ranks; update_group head
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.ir.graph import ScheduleGraph
from mrc.techniques import techniques
from mrc.techniques.base import resolve
from mrc.techniques.distributed.tables import PLACEMENT

Placer = Callable[[ScheduleGraph], ScheduleGraph]


def load_placers() -> dict[str, Placer]:
    """Every technique's placers, by the `distributed` mode they place (registry order)."""
    out: dict[str, Placer] = {}
    for t in techniques():
        for mode, ref in t.place.items():
            if mode in out:
                raise ValueError(f"distributed mode `{mode}` has two placers (technique {t.name})")
            out[mode] = resolve(ref)
    return out


@dataclass(frozen=True)
class Distribute(Pass):
    name: ClassVar[str] = "distribute"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        placement = graph.table(PLACEMENT)
        if placement is None:
            return graph
        place = load_placers().get(placement.mode)
        if place is None:
            raise ValueError(f"distributed mode `{placement.mode}` has no placer yet")
        return place(graph)
