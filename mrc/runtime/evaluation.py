"""Evaluation of a model on a whole split, in batches no larger than training's."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def evaluate(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> dict[str, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode, `batch` examples at a time."""
    if len(x) == 0:
        return {"loss": math.nan, "acc": math.nan}
    was_training = module.training
    module.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = module(x[i:i + batch])
            total += F.cross_entropy(out, y[i:i + batch], reduction="sum").item()
            correct += (out.argmax(1) == y[i:i + batch]).sum().item()
    module.train(was_training)
    return {"loss": total / len(x), "acc": correct / len(x)}
