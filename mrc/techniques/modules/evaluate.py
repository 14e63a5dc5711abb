"""Each module's classifier F_k ∘ G_k as a model of its own, to evaluate how much each module knows
(the seed's per-module accuracy; the last module's classifier is the model itself)."""

from __future__ import annotations

import torch
from torch import fx, nn

from mrc.ir.graph import ScheduleGraph


class ModuleClassifier(nn.Module):
    """Modules 0…k of the model followed by module k's classifier (`head`; None: the last
    module's segment ends in the model's own head)."""

    def __init__(self, segments: list[nn.Module], head: nn.Module | None) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for seg in self.segments:
            x = seg(x)[0]
        return x if self.head is None else self.head(x)


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


def module_classifiers(model: nn.Module, graph: ScheduleGraph) -> dict[str, nn.Module]:
    """F_k ∘ G_k for every module k of `model` (a traced model holding the auxiliary heads)."""
    if not isinstance(model, fx.GraphModule):
        raise TypeError("module classifiers are cut from the traced model")
    segments = module_segments(model, graph)
    names = list(graph.modules)
    out: dict[str, nn.Module] = {}
    for i, name in enumerate(names):
        info = graph.modules[name]
        head = model.get_submodule(info.head) if i < len(names) - 1 else None
        out[name] = ModuleClassifier(segments[:i + 1], head)
    return out
