"""Evaluation of a model on a whole split, in batches no larger than training's.

`evaluate_batches` scores any iterable of (inputs, targets) batches — an in-memory split cut into
slices, or a streamed DataLoader — and `evaluate` is its in-memory form.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


def slices(x: torch.Tensor, y: torch.Tensor, batch: int) -> Iterator[Batch]:
    """An in-memory split in order, `batch` examples at a time."""
    for i in range(0, len(x), batch):
        yield x[i:i + batch], y[i:i + batch]


def evaluate_batches(module: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
    """Mean cross-entropy and accuracy over every batch of a split, in eval mode."""
    was_training = module.training
    module.eval()
    total, correct, count = 0.0, 0, 0
    try:
        with torch.no_grad():
            for x, y in batches:
                out = module(x)
                total += F.cross_entropy(out, y, reduction="sum").item()
                correct += (out.argmax(1) == y).sum().item()
                count += len(y)
    finally:
        module.train(was_training)
    if count == 0:
        return {"loss": math.nan, "acc": math.nan}
    return {"loss": total / count, "acc": correct / count}


def evaluate(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> dict[str, float]:
    """Mean cross-entropy and accuracy over a whole in-memory split, `batch` examples at a time."""
    return evaluate_batches(module, slices(x, y, batch))
