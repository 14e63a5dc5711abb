"""How much each module knows: the loss and accuracy of every module's classifier F_k ∘ G_k (the seed's
per-module accuracy; the last module's classifier is the model itself), in one pass."""

from __future__ import annotations

import torch
from torch import fx, nn

from mrc.ir.graph import ScheduleGraph
from mrc.losses import CLASSIFICATION, Scoring
from mrc.techniques.modules.tables import MODULES


def module_segments(gm: fx.GraphModule, graph: ScheduleGraph, taps: bool = False) -> list[fx.GraphModule]:
    """The model cut at the fx nodes where the graph's modules start."""
    from mrc.techniques.modules import fxsplit

    index = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    cuts = [fxsplit.Cut(index[info.start], info.start, info.path) for info in list(graph.table(MODULES).values())[1:]]
    return fxsplit.split_modules(gm, cuts, taps=taps)


def evaluate_modules(model: nn.Module, graph: ScheduleGraph, x: torch.Tensor, y: torch.Tensor,
                     batch: int = 1024, scoring: Scoring = CLASSIFICATION) -> dict[str, dict[str, float]]:
    """The mean loss and metrics (`scoring`: the run's loss and its task's metrics, cross-entropy
    and accuracy by default) of every module's classifier F_k ∘ G_k over a split, in one pass:
    each batch runs through the modules once, each module's head on the way (linear in K, where
    evaluating the K classifiers one by one would be quadratic)."""
    if not isinstance(model, fx.GraphModule):
        raise TypeError("module classifiers are cut from the traced model")
    names = list(graph.table(MODULES))
    if len(x) == 0:
        return {n: scoring.empty() for n in names}
    segments = module_segments(model, graph)
    heads = [model.get_submodule(graph.table(MODULES)[n].head) if i < len(names) - 1 else None
             for i, n in enumerate(names)]
    sums = scoring.sums
    totals = [[0.0] * len(sums) for _ in names]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            h, target = x[i:i + batch], y[i:i + batch]
            for k, (seg, head) in enumerate(zip(segments, heads, strict=True)):
                h = seg(h)[0]
                out = h if head is None else head(h)
                for j, (_, fn) in enumerate(sums):
                    totals[k][j] += float(fn(out, target))
    model.train(was_training)
    return {n: {m: totals[k][j] / len(x) for j, (m, _) in enumerate(sums)} for k, n in enumerate(names)}
