"""freeze-prefix: run the leading layers that nothing differentiates without autograd.

Requires: forwards whose `grad` set is final (run after prune-gradients); graph.meta["layers"]
(parameterised layers in traced order) and graph.meta["params"] (each partition's parameters).
Ensures: where the layers at the front of the model hold only parameters of partitions that are
not differentiated on a step — transfer learning's slow backbone on a fast step — that step's
forward becomes two: `model[:n]` without autograd (no activations kept) and `model[n:]` with it.
The runtime cuts the traced graph there with torch.fx's split_module, once per distinct n.

Example (backbone = 7 layers every 5 steps, head every step), step 1:
    before:  forward model [grad {head}]
    after:   forward model[:7] [no_grad];  forward model[7:] [grad {head}]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.graph import Forward, ScheduleGraph


def frozen_prefix(graph: ScheduleGraph, grad: tuple[str, ...]) -> int:
    """How many leading layers hold no parameter of the partitions in `grad`."""
    layers: list[str] = graph.meta.get("layers", [])
    params: dict[str, list[str]] = graph.meta.get("params", {})
    live = {name.rpartition(".")[0] for part in grad for name in params.get(part, ())}
    n = 0
    for layer in layers:
        if layer in live:
            break
        n += 1
    return n


@dataclass(frozen=True)
class FreezePrefix(Pass):
    name: ClassVar[str] = "freeze-prefix"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        n_layers = len(graph.meta.get("layers", []))
        for op in graph.ops():
            if not isinstance(op, Forward) or op.segment != "model" or not op.grad:
                continue
            n = frozen_prefix(graph, op.grad)
            if n == 0 or n >= n_layers:
                continue
            prefix = Forward(op.step, f"model[:{n}]", (), op.phase)
            suffix = replace(op, segment=f"model[{n}:]")
            preds, succs = out.preds(op), out.succs(op)
            out.remove(op)
            out.add(prefix, preds)
            out.add(suffix, [prefix])
            for s in succs:
                out.g.add_edge(suffix.id, s.id)
        return out
