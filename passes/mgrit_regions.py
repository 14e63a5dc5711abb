"""mgrit-regions: the MGRIT solve of each residual stack as ops, around the forward and the
backward that run through it.

Requires: the graph's `stacks` table (empty: nothing to do); forwards and backwards final
(after prune-gradients and freeze-prefix).
Ensures: after each forward holding a stack, its forward solve's phases (relax, restrict,
coarse_solve, correct per level, for every iteration); after each backward that differentiates
at or before the stack, its adjoint solve's; chained by order edges (mrc/techniques/mgrit/expand.py).

Example (levels = 2, one forward iteration), step 0:
    before:  forward model [grad {all}];  loss …
    after:   forward model [grad {all}];  mgrit_relax FCF stack (forward) @[level=0 iteration=0];
             mgrit_restrict … @[level=0 …];  mgrit_coarse_solve … @[level=1 …];  mgrit_correct … @[level=0 …];  loss …
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.ir.graph import ScheduleGraph
from mrc.techniques.mgrit.expand import add_regions
from mrc.techniques.mgrit.tables import STACKS


@dataclass(frozen=True)
class MgritRegions(Pass):
    name: ClassVar[str] = "mgrit-regions"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        if out.table(STACKS):
            add_regions(out)
        return out
