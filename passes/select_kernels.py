"""select-kernels: choose how each update group runs.

Requires: update groups (run after group-updates); graph.meta["device"] (`cpu` or `cuda`).
Ensures: every update group's `kernel` is `triton` (SGD-family rules on a CUDA device: one fused
Triton launch per rule and step over a flat buffer), `torch` (the same fused update as whole-buffer
torch operations: SGD-family rules elsewhere), `subset` (random-subset partitions, their own
integrator) or `torch.optim` (every other integrator). All groups of one rule get the same kernel,
since the rule's partitions share one flat buffer.

Example (sgd rule, CPU):
    before:  update_group head {head} sgd(lr=0.1) lr×1 kernel=torch.optim
    after:   update_group head {head} sgd(lr=0.1) lr×1 kernel=torch        (cuda: kernel=triton)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.graph import ScheduleGraph, UpdateGroup

FUSED_RULES = ("sgd", "momentum", "nesterov")


def kernel_for(rule: str, random: bool, device: str) -> str:
    if random:
        return "subset"
    if rule.partition("(")[0] not in FUSED_RULES:
        return "torch.optim"
    if device == "cuda":
        from mrc.kernels import triton_available

        return "triton" if triton_available() else "torch"
    return "torch"


@dataclass(frozen=True)
class SelectKernels(Pass):
    name: ClassVar[str] = "select-kernels"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        device = graph.meta.get("device", "cpu")
        brains = graph.meta.get("brains", False)
        for op in graph.ops():
            if not isinstance(op, UpdateGroup):
                continue
            random = any("random" in graph.partitions.get(p, {}) for p in op.partitions)
            kernel = "torch.optim" if brains else kernel_for(op.rule, random, device)
            if kernel != op.kernel:
                out.replace(op, replace(op, kernel=kernel))
        return out
