"""How much each module knows: the accuracy of every module's classifier F_k ∘ G_k (the seed's
per-module accuracy; the last module's classifier is the model itself), in one pass."""

from __future__ import annotations

import torch
from torch import fx, nn

from mrc.ir.graph import ScheduleGraph


def module_segments(gm: fx.GraphModule, graph: ScheduleGraph, taps: bool = False) -> list[fx.GraphModule]:
    """The model cut at the fx nodes where the graph's modules start."""
    from mrc.techniques.modules import fxsplit

    index = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    cuts = [fxsplit.Cut(index[info.start], info.start, info.path) for info in list(graph.modules.values())[1:]]
    return fxsplit.split_modules(gm, cuts, taps=taps)


def evaluate_modules(model: nn.Module, graph: ScheduleGraph, x: torch.Tensor, y: torch.Tensor,
                     batch: int = 1024) -> dict[str, dict[str, float]]:
    """Mean cross-entropy and accuracy of every module's classifier F_k ∘ G_k over a split, in one
    pass: each batch runs through the modules once, each module's head on the way (linear in K,
    where evaluating the K classifiers one by one would be quadratic)."""
    import math

    import torch.nn.functional as F

    if not isinstance(model, fx.GraphModule):
        raise TypeError("module classifiers are cut from the traced model")
    names = list(graph.modules)
    if len(x) == 0:
        return {n: {"loss": math.nan, "acc": math.nan} for n in names}
    segments = module_segments(model, graph)
    heads = [model.get_submodule(graph.modules[n].head) if i < len(names) - 1 else None
             for i, n in enumerate(names)]
    loss = [0.0] * len(names)
    correct = [0] * len(names)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            h, target = x[i:i + batch], y[i:i + batch]
            for k, (seg, head) in enumerate(zip(segments, heads, strict=True)):
                h = seg(h)[0]
                out = h if head is None else head(h)
                loss[k] += F.cross_entropy(out, target, reduction="sum").item()
                correct[k] += (out.argmax(1) == target).sum().item()
    model.train(was_training)
    return {n: {"loss": loss[k] / len(x), "acc": correct[k] / len(x)} for k, n in enumerate(names)}
