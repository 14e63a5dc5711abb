"""Multi-layer perceptron: the simplest built-in, for flat features (digits, mnist1d, points)."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn


def activation_module(name: str) -> nn.Module:
    """The activation module for an activation name."""
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}[name]()


class MLP(nn.Module):
    """Flatten → [Linear → activation → dropout]* → Linear head.

    Hidden linear layers are `layers.i` (parameters `layers.0.weight`, …) and the output layer is
    `head`, so "backbone vs head" partitions are easy to select.
    """

    def __init__(self, in_features: int, classes: int, hidden: list[int], activation: str,
                 dropout: float) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.act = activation_module(activation)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(sizes[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for layer in self.layers:
            x = self.drop(self.act(layer(x)))
        return self.head(x)


def build_mlp(in_shape: tuple[int, ...], classes: int, hidden: list[int] | int = (128,),
              activation: str = "relu", dropout: float = 0.0) -> nn.Module:
    """Build an MLP for inputs of any shape (each example is flattened)."""
    widths = [hidden] if isinstance(hidden, int) else list(hidden)
    return MLP(math.prod(in_shape), classes, widths, activation, dropout)
