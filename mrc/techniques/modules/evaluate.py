"""How much each module knows: the loss and accuracy of every module's classifier F_k ∘ G_k (the seed's
per-module accuracy; the last module's classifier is the model itself), in one pass; and what
module-wise training adds to a run's end through the Plan's hooks: the `modules` entry of
summary.json and the auxiliary heads, written to `aux.pt` rather than `final.pt`."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from mrc.ir.graph import ScheduleGraph
from mrc.losses import CLASSIFICATION, Scoring
from mrc.lower.plan import Finished, Lowering
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


def register(ctx: Lowering) -> None:
    """Module-wise training's end of run: its summary entry and its heads' file (once)."""
    graph = ctx.graph
    ctx.hooks.summaries.setdefault("modules", lambda done: summary(done, graph))
    if heads not in ctx.hooks.artifacts:
        ctx.hooks.artifacts.append(heads)


def summary(done: Finished, graph: ScheduleGraph) -> dict[str, Any] | None:
    """Each module's classifier F_k ∘ G_k on the training and validation data (the last
    module's is the model itself), with its table row; None where the data is streamed."""
    splits = done.splits()
    if splits is None:
        return None
    (tx, ty), (vx, vy) = splits
    train = evaluate_modules(done.model, graph, tx, ty, done.batch, done.scoring)
    val = evaluate_modules(done.model, graph, vx, vy, done.batch, done.scoring)
    out = {}
    for name, info in graph.table(MODULES).items():
        tr, va = train[name], val[name]
        acc = {"train_acc": tr["acc"], "val_acc": va["acc"]} if "acc" in tr else {}
        out[name] = {**acc, "val_loss": va["loss"],
                     "params": info.params, "activation_bytes_estimate": info.bytes,
                     "residuals": info.residuals, "tau": info.tau}
    return out


def heads(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The auxiliary heads, taken out of the final model's state: `aux.pt` (without `aux.`)."""
    from mrc.techniques.modules.bind import AUX

    prefix = AUX + "."
    taken = {k[len(prefix):]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
    return {"aux.pt": taken}
