"""select-kernels: choose how each update group and each MGRIT solve runs.

Requires: update groups (run after group-updates) and the MGRIT phase ops (after
mgrit-regions); the graph's target (mrc/target.py: its device, and whether Triton runs there)
and `kernels` setting (`train(kernels=auto|torch|triton|torch.optim)`). It asks nothing of the
machine itself: the target was decided once, by the CLI or the API.
Ensures: every update group's `kernel` is one of
  `triton`       SGD-family rules on a CUDA device: one fused Triton launch per group over a flat
                 buffer; Adam/AdamW rules without drift likewise; Langevin's O-step on CUDA;
  `torch`        the same fused update as whole-buffer torch operations;
  `subset.torch` / `subset.triton`  random-subset partitions, their own integrator;
  `torch.optim`  every other integrator.
All groups of one rule and scope get the same kernel, since the rule's partitions share one flat
buffer. A rule with element-level partitions (parts of tensors) takes a fused kernel only when
it is SGD-like and every partition sharing one of its tensors has the same rule and scope (a
tensor lives in one flat buffer); otherwise it runs through torch.optim. With `kernels = auto`,
the CPU takes the fused torch update only for rules with a drifting partition, where it folds
the drift into the update pass; elsewhere torch.optim's
foreach SGD is as fast and needs no pass to zero the flat gradient buffer. `kernels = torch` or
`triton` forces the fused path where the rule has one; `torch.optim` never fuses.
An op that runs a technique's own kernels says which it takes (`kernel_for(triton, setting)`,
given whether Triton runs on a CUDA target and the `kernels` setting): an MGRIT phase op takes
`triton` (the fused dense step and FAS correction of kernels/mgrit.py) for a dense stack where
Triton runs, unless `kernels` is `torch` or `torch.optim`; else `torch`.

Example (an sgd rule with a drifting partition, CPU):
    before:  update_group head {head} sgd() lr=[0.1] kernel=torch.optim
    after:   update_group head {head} sgd() lr=[0.1] kernel=torch        (cuda: kernel=triton)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.ir.graph import ScheduleGraph
from mrc.ir.ops import Rule, UpdateGroup
from mrc.optim.families import family
from mrc.target import Target


def _triton_here(target: Target) -> bool:
    return target.device == "cuda" and target.triton


def kernel_for(rule: Rule, random: bool, target: Target, drifts: bool, setting: str = "auto") -> str:
    """The kernel of one rule's update groups (see the module docstring)."""
    device = target.device
    fused = "triton" if _triton_here(target) else "torch"
    if setting == "triton":
        fused = "triton"
    if random:
        return f"subset.{'triton' if fused == 'triton' and setting != 'torch' else 'torch'}"
    fam = family(rule.name)
    if setting == "torch.optim":
        return "torch.optim"
    if fam.name == "langevin":
        return "triton" if fused == "triton" and setting != "torch" else "torch.optim"
    adam = fam.adam_like and not rule.kwargs.get("amsgrad", False) and not drifts
    if not fam.sgd_like and not adam:
        return "torch.optim"
    if setting in ("torch", "triton"):
        return "torch" if setting == "torch" else "triton"
    if device == "cuda":
        return fused
    if adam:
        return "torch.optim"  # one Adam call per partition: on the CPU torch.optim is as fast
    return "torch" if drifts else "torch.optim"


@dataclass(frozen=True)
class SelectKernels(Pass):
    name: ClassVar[str] = "select-kernels"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        drifting_rules = {(op.scope, op.rule) for op in graph.ops() if isinstance(op, UpdateGroup) and op.held}
        unfusable = _unfusable(graph)
        for p in out.patterns():
            for op in list(p.ops()):
                if hasattr(op, "kernel_for"):  # an op that runs a technique's own kernels (MGRIT's solves)
                    kernel = op.kernel_for(_triton_here(graph.target), graph.kernels)
                    if kernel != op.kernel:
                        p.replace(op, replace(op, kernel=kernel))
                    continue
                if not isinstance(op, UpdateGroup) or op.kernel == "stacked":
                    continue
                random = any(graph.partitions[n].random for n in op.partitions)
                kernel = kernel_for(op.rule, random, graph.target, (op.scope, op.rule) in drifting_rules,
                                    graph.kernels)
                if (op.scope, op.rule) in unfusable and kernel in ("torch", "triton") \
                        and family(op.rule.name).name != "langevin":
                    kernel = "torch.optim"
                if kernel != op.kernel:
                    p.replace(op, replace(op, kernel=kernel))
        out.reindex()
        return out


def _unfusable(graph: ScheduleGraph) -> set[tuple[object, Rule]]:
    """The (scope, rule) pairs with element-level partitions that no flat buffer can hold: a
    rule without a masked fused kernel (not SGD-like), or one sharing a tensor with another."""
    rule_of: dict[tuple[object, str], Rule] = {}
    scopes: dict[str, set[object]] = {}
    for op in graph.ops():
        if isinstance(op, UpdateGroup):
            for n in op.partitions:
                rule_of[(op.scope, n)] = op.rule
                scopes.setdefault(n, set()).add(op.scope)
    holders: dict[str, list[str]] = {}
    for n, info in graph.partitions.items():
        for t in info.partial:
            holders.setdefault(t, []).append(n)
    out: set[tuple[object, Rule]] = set()
    for names in holders.values():
        pairs = {(sc, rule_of[(sc, n)]) for n in names for sc in scopes.get(n, ())}
        if len(pairs) > 1 or any(not family(r.name).sgd_like for _, r in pairs):
            out |= pairs
    return out
