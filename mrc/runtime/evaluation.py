"""Evaluation of a model on a whole split, in batches no larger than training's.

`evaluate_batches` scores any iterable of (inputs, targets) batches — an in-memory split cut into
slices, or a streamed DataLoader — and `evaluate` is its in-memory form. What is measured is the
run's `Scoring` (mrc/losses.py): the mean loss, the metrics its task defines (accuracy for
classification, element-wise accuracy and exact match for multi-label, none for regression) and
the user's metrics; by default cross-entropy and accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from mrc.losses import CLASSIFICATION, Scoring

Batch = tuple[torch.Tensor, torch.Tensor]


def slices(x: torch.Tensor, y: torch.Tensor, batch: int) -> Iterator[Batch]:
    """An in-memory split in order, `batch` examples at a time."""
    for i in range(0, len(x), batch):
        yield x[i:i + batch], y[i:i + batch]


def evaluate_batches(module: nn.Module, batches: Iterable[Batch],
                     scoring: Scoring = CLASSIFICATION) -> dict[str, float]:
    """The mean over every example of a split of each of `scoring`'s measures (`loss`, then the
    task's metrics and the user's), in eval mode; NaN for each on an empty split."""
    was_training = module.training
    module.eval()
    sums = scoring.sums
    totals = [0.0] * len(sums)
    count = 0
    try:
        with torch.no_grad():
            for x, y in batches:
                out = module(x)
                for i, (_, fn) in enumerate(sums):
                    totals[i] += float(fn(out, y))
                count += len(y)
    finally:
        module.train(was_training)
    if count == 0:
        return scoring.empty()
    return {name: total / count for (name, _), total in zip(sums, totals, strict=True)}


def evaluate(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024,
             scoring: Scoring = CLASSIFICATION) -> dict[str, float]:
    """`evaluate_batches` over a whole in-memory split, `batch` examples at a time."""
    return evaluate_batches(module, slices(x, y, batch), scoring)


__all__ = ["evaluate", "evaluate_batches", "slices"]
