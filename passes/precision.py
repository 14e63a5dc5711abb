"""precision: write the run's precision into the ops that compute in it.

Requires: the graph's `precision` (`train(precision)`: `32`, `bf16` or `16-mixed`); run last,
after every pass that adds or rebuilds forwards and backwards (freeze-prefix, batch-brains).
Ensures: with `bf16`, every op that runs layers of the model (a forward, a module's auxiliary
head: each op kind with an `autocast` field) computes under torch.autocast in bfloat16; with
`16-mixed`, in float16, and every autograd backward is `scaled` (its loss multiplied by the loss
scale, its gradients unscaled and checked before any update reads them). Losses, backwards and
updates keep float32; so do the parameters and the optimizer state. With `32` the graph is left
as it is: nothing is printed and nothing is wrapped.

Example (`train(precision = 16-mixed)`), step 0:
    before:  forward model [grad {all}];  loss cross_entropy;  backward wrt {all}
    after:   forward model [grad {all}] autocast=fp16;  loss cross_entropy;  backward wrt {all} scaled
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.ir.graph import ScheduleGraph
from mrc.ir.ops import Backward

AUTOCAST = {"32": "", "bf16": "bf16", "16-mixed": "fp16"}
"""The autocast dtype of each precision (empty: none)."""


@dataclass(frozen=True)
class Precision(Pass):
    name: ClassVar[str] = "precision"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        cast = AUTOCAST.get(graph.precision)
        if cast is None:
            raise ValueError(f"unknown precision `{graph.precision}`")
        if not cast:
            return graph
        scaled = graph.precision == "16-mixed"
        out = graph.copy()
        for p in out.patterns():
            for op in list(p.ops()):
                if getattr(op, "autocast", cast) != cast:  # an op kind that runs the model's layers
                    p.replace(op, replace(op, autocast=cast))  # type: ignore[arg-type]
                elif scaled and isinstance(op, Backward) and op.method == "autograd" and not op.scaled:
                    p.replace(op, replace(op, scaled=True))
        out.reindex()
        return out
