"""freeze-prefix: run the leading layers that nothing differentiates without autograd.

Requires: forwards whose `grad` set is final (run after prune-gradients); the graph's `layers`
(parameterised layers in traced order) and each partition's `params`.
Ensures: where the layers at the front of the model hold only parameters of partitions that are
not differentiated on a step — transfer learning's slow backbone on a fast step — that step's
forward becomes two: `model[:n]` without autograd (no activations kept), whose activation flows
into `model[n:]` with autograd. Lowering cuts the traced graph there with torch.fx's
split_module, once per distinct n.

Example (backbone = 7 layers every 5 steps, head every step), step 1:
    before:  forward model [grad {head}]
    after:   forward model[:7] [no_grad];  forward model[7:] [grad {head}]  ← %0:activation
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.ir.graph import ScheduleGraph
from mrc.ir.ops import Forward, Value
from mrc.techniques.mgrit.tables import STACKS


def frozen_prefix(graph: ScheduleGraph, grad: tuple[str, ...]) -> int:
    """How many leading layers hold no parameter of the partitions in `grad`."""
    live = {name.rpartition(".")[0] for part in grad for name in graph.partitions[part].params}
    n = 0
    for layer in graph.layers:
        if layer in live:
            break
        n += 1
    return n


@dataclass(frozen=True)
class FreezePrefix(Pass):
    name: ClassVar[str] = "freeze-prefix"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        n_layers = len(graph.layers)
        for p in out.patterns():
            for op in list(p.ops()):
                if not isinstance(op, Forward) or (op.start, op.stop) != (0, None) or not op.grad \
                        or op.scope.module:  # a module's forward is its own segment already
                    continue
                n = frozen_prefix(graph, op.grad)
                for info in graph.table(STACKS).values():  # an MGRIT solve stands in for its whole stack
                    if info.first < n <= info.last:
                        n = info.first
                if n == 0 or n >= n_layers:
                    continue
                prefix = Forward(op.scope, 0, n, (), op.phase)
                suffix = replace(op, start=n)
                ins, outs = p.inputs(op), p.outputs(op)
                p.remove(op)
                p.add(prefix, ins)
                p.add(suffix, [(prefix, Value("activation"))])
                for s, v in outs:
                    p.connect(suffix, s, v)
        out.reindex()
        return out
