"""Passes over the schedule graph, one per file; `PASSES` maps each name to its class.

A pass is a frozen dataclass with a kebab-case `name` and `apply(graph) -> graph`; its docstring
says what it requires and ensures, with a small before/after example. Passes work on each step
pattern of each stage and share data only through the graph's typed fields. The pass manager
(mrc.passmanager) runs a pipeline of them, verifying the graph after each.
"""

from __future__ import annotations

from mrc.passes.base import Pass
from mrc.passes.batch_brains import BatchBrains
from mrc.passes.distribute import Distribute
from mrc.passes.freeze_prefix import FreezePrefix
from mrc.passes.fuse_drift import FuseDrift
from mrc.passes.group_updates import GroupUpdates
from mrc.passes.mgrit_regions import MgritRegions
from mrc.passes.precision import Precision
from mrc.passes.prune_gradients import PruneGradients
from mrc.passes.select_kernels import SelectKernels

PASSES: dict[str, type[Pass]] = {p.name: p for p in (PruneGradients, FreezePrefix, GroupUpdates,
                                                     SelectKernels, FuseDrift, BatchBrains, MgritRegions,
                                                     Distribute, Precision)}
DEFAULT_PIPELINE: tuple[str, ...] = ("prune-gradients", "freeze-prefix", "group-updates", "mgrit-regions",
                                     "select-kernels", "fuse-drift", "batch-brains",
                                     "distribute", "precision")

__all__ = ["DEFAULT_PIPELINE", "PASSES", "BatchBrains", "Distribute",
           "FreezePrefix", "FuseDrift", "GroupUpdates", "MgritRegions",
           "Pass", "Precision",
           "PruneGradients", "SelectKernels"]
