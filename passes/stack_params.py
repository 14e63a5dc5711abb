"""stack-params: hold a residual stack's weights in one tensor [N, …] and its biases in another.

Requires: the `stacked` table's candidates (the graph builder lists each `ResidualStack` of
built-in blocks); final update kernels (after select-kernels), precision (after precision),
scopes, and the placement on the run's processes (after distribute: its reductions, which carry
the backward's clipping).
Ensures: each candidate's entry says how its parameters are held. Stacked: one tensor per run
of consecutive layers whose weights (biases) lie in one partition — a partition that splits
the stack by layer gets its own tensor per group, so it keeps its own rate — and lowering makes
each layer's parameter a view of it (state_dict keys, selectors and checkpoints unchanged), the
optimizer moves the stacked tensors, and serial training runs the stack from them (one gradient
per tensor). Otherwise per layer, with the reason, wherever stacking could change a number or a
technique holds the layers its own way:
  brains (each brain holds its own copy; `distributed brains` too), module-wise training (it cuts
  the model by module; `distributed pipeline` too), an all-reduce of the stack's gradients over
  more than 2 ranks (`distributed data` on 3 or more: each element's sum over the ranks
  associates in an order its place in the flat bucket sets, and the stacked bucket's layout is
  not the per-layer one's; over 2 ranks a sum is a + b either way), mixed
  precision, a forward that cuts the stack, a layer in no partition or in an element-level
  one, an update whose rule is not elementwise (LARS, LAMB: per-tensor norms; Langevin:
  per-tensor noise) or runs on a random subset's integrator, or on a fused flat buffer where the
  stack is split into several runs (the buffer holds the stacked tensors, and one run per kind
  keeps each one tensor in it), gradient clipping (a norm over one tensor sums in another order
  than over N; across ranks the clipping sits on the all-reduce or the gradient sum).
Several processes stack as one does: `distributed data` reduces the stacked tensors' gradients
(its bucket takes a partition's tensors deduplicated); `distributed layers` gives each rank the
gradient rows of its adjoint block in the stacked tensors (zeros elsewhere) and `mgrit_sum_grads`
sums those tensors, each element nonzero on one rank only, so the sum is exact in any order.

Example (ode_resnet depth 64, one partition `all`, adam on torch.optim):
    before:  stack stack: N=64 dense candidate
    after:   stack stack: N=64 dense stacked weight all[0:64] bias all[0:64]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.ir.graph import ScheduleGraph
from mrc.ir.ops import Backward, Forward, UpdateGroup
from mrc.optim.families import family
from mrc.techniques.core.tables import STACKED, Run, StackLayout


def _runs(owners: list[str]) -> tuple[Run, ...]:
    """Runs of consecutive layers with the same owning partition."""
    out: list[Run] = []
    for n, owner in enumerate(owners):
        if out and out[-1].partition == owner:
            out[-1] = replace(out[-1], stop=n + 1)
        else:
            out.append(Run(owner, n, n + 1))
    return tuple(out)


def why_not(graph: ScheduleGraph, layout: StackLayout) -> str | tuple[tuple[Run, ...], tuple[Run, ...]]:
    """Why the stack keeps per-layer parameters, or its weight and bias runs."""
    ops = list(graph.ops())
    if any(op.scope.replica for op in ops):
        return "brains hold their own copies"
    if any(op.scope.module for op in ops):
        return "module-wise training cuts the model"
    if any((isinstance(op, Forward) and op.autocast) or (isinstance(op, Backward) and op.scaled) for op in ops):
        return "mixed precision"
    names = [f"{layout.path}.layers.{n}" for n in range(layout.steps)]
    index = {name: i for i, name in enumerate(graph.layers)}
    if any(name not in index for name in names):
        return "its layers are not the graph's"
    first, last = index[names[0]], index[names[-1]]
    for op in ops:
        if isinstance(op, Forward):
            for cut in (op.start, op.stop):
                if cut is not None and first < cut <= last:
                    return f"a forward cuts it at layer {cut}"
    owner: dict[str, list[str]] = {}
    partial: set[str] = set()
    for pname, info in graph.partitions.items():
        for t in info.params:
            owner.setdefault(t, []).append(pname)
        partial.update(info.partial)
    runs = []
    for which in ("weight", "bias"):
        owners = []
        for n, layer in enumerate(names):
            t = f"{layer}.{which}"
            if t in partial:
                return f"layer {n}'s {which} is in an element-level partition"
            held = owner.get(t, [])
            if len(held) != 1:
                return f"layer {n}'s {which} is in {len(held)} partitions"
            owners.append(held[0])
        runs.append(_runs(owners))
    parts = {r.partition for rs in runs for r in rs}
    for op in ops:
        if isinstance(op, UpdateGroup) and parts & set(op.partitions):
            if not family(op.rule.name).elementwise:
                return f"rule {op.rule.name} is not elementwise"
            if op.kernel in ("torch", "triton") and (len(runs[0]) > 1 or len(runs[1]) > 1):
                return f"kernel {op.kernel}'s flat buffer takes one tensor per partition run, not several"
            if op.kernel not in ("torch.optim", "torch", "triton"):
                return f"its update runs on kernel {op.kernel}"
        if getattr(op, "clip", 0.0) > 0 and parts & set(op.partitions_used()):
            return "gradient clipping"  # a backward's, or one the placer moved onto a reduction
        if op.kind == "all_reduce" and graph.target.world > 2 and parts & set(op.partitions_used()):
            return f"an all-reduce over {graph.target.world} ranks sums each element in an order its place sets"
    return runs[0], runs[1]


@dataclass(frozen=True)
class StackParams(Pass):
    name: ClassVar[str] = "stack-params"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        table = {}
        for path, layout in graph.table(STACKED).items():
            got = why_not(graph, layout)
            if isinstance(got, str):
                table[path] = replace(layout, weights=(), biases=(), reason=got)
            else:
                table[path] = replace(layout, weights=got[0], biases=got[1], reason="")
        out.set_table(STACKED, table)
        return out
