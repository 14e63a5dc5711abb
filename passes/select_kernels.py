"""select-kernels: choose how each update group runs.

Requires: update groups (run after group-updates); graph.meta["device"] (`cpu` or `cuda`).
Ensures: every update group's `kernel` is `triton` (SGD-family rules on a CUDA device: one fused
Triton launch per rule and step over a flat buffer; Adam/AdamW rules without drift: one launch per
updating partition, each with its own step count), `torch` (the same fused update as whole-buffer
torch operations), `subset` (random-subset partitions, their own integrator) or `torch.optim`
(every other integrator). All groups of one rule get the same kernel, since the rule's partitions
share one flat buffer. On the CPU the fused torch update is chosen only for rules with a drifting
partition, where it folds the drift into the update pass; elsewhere torch.optim's foreach SGD is
as fast and needs no pass to zero the flat gradient buffer. `MRC_KERNELS=torch|triton` forces
the fused path (tests, benchmarks).

Example (an sgd rule with a drifting partition, CPU):
    before:  update_group head {head} sgd(lr=0.1) lr×1 kernel=torch.optim
    after:   update_group head {head} sgd(lr=0.1) lr×1 kernel=torch        (cuda: kernel=triton)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.graph import ScheduleGraph, UpdateGroup

FUSED_RULES = ("sgd", "momentum", "nesterov")
ADAM_RULES = ("adam", "adamw")


def kernel_for(rule: str, random: bool, device: str, drifts: bool) -> str:
    """The kernel of one rule's update groups (see the module docstring)."""
    if random:
        return "subset"
    name = rule.partition("(")[0]
    adam = name in ADAM_RULES and "amsgrad=true" not in rule and not drifts
    if name not in FUSED_RULES and not adam:
        return "torch.optim"
    if adam and device != "cuda" and not os.environ.get("MRC_KERNELS"):
        return "torch.optim"  # one Adam call per partition: on the CPU torch.optim is as fast
    forced = os.environ.get("MRC_KERNELS", "").strip().lower()
    if forced in ("torch", "triton"):
        from mrc.kernels import pick_kernel

        return pick_kernel(device)
    if device == "cuda":
        from mrc.kernels import triton_available

        return "triton" if triton_available() else "torch"
    return "torch" if drifts else "torch.optim"


@dataclass(frozen=True)
class SelectKernels(Pass):
    name: ClassVar[str] = "select-kernels"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        device = graph.meta.get("device", "cpu")
        brains = graph.meta.get("brains", False)
        drifting_rules = {info.get("rule") for info in graph.partitions.values() if "drift" in info}
        for op in graph.ops():
            if not isinstance(op, UpdateGroup):
                continue
            random = any("random" in graph.partitions.get(p, {}) for p in op.partitions)
            kernel = "torch.optim" if brains else kernel_for(op.rule, random, device,
                                                            op.rule in drifting_rules)
            if kernel != op.kernel:
                out.replace(op, replace(op, kernel=kernel))
        return out
