"""ODE-style residual network: a residual stack read as a forward-Euler ODE solve.

The stack propagates y_{n+1} = y_n + h F(W_n y_n + b_n) for n = 0..depth-1 (the layer-parallel
seed's ResNet), which is what MGRIT solves layer-parallel. `ResidualStack.step(n, y)` is one
Euler step Φ_n, so a solver can apply single layers, with a coarser step h on coarse levels.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mrc.models.resnet import require_image


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) if name == "tanh" else torch.relu(x)


class DenseStep(nn.Linear):
    """F_n(y) = σ(W_n y + b_n); a Linear subclass so its parameters are `…layers.n.weight/bias`.
    A leaf of the traced graph (one node per step: tracing stays cheap at depth thousands)."""

    mrc_leaf = True

    def __init__(self, width: int, activation: str) -> None:
        super().__init__(width, width)
        self.activation = activation

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return _act(self.activation, F.linear(y, self.weight, self.bias))


class ConvStep(nn.Conv2d):
    """F_n(y) = σ(K_n * y + b_n) with a 3×3 same-padded convolution (a leaf of the traced graph)."""

    mrc_leaf = True

    def __init__(self, width: int, activation: str) -> None:
        super().__init__(width, width, 3, padding=1)
        self.activation = activation

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return _act(self.activation, self._conv_forward(y, self.weight, self.bias))


class ResidualStack(nn.Module):
    """`depth` step functions F_n in `layers`, applied as y ← y + h F_n(y) (explicit Euler)."""

    is_residual_stack = True

    def __init__(self, layers: list[nn.Module], h: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.h = float(h)

    def __len__(self) -> int:
        return len(self.layers)

    def step(self, n: int, y: torch.Tensor, h: float | None = None) -> torch.Tensor:
        """One Euler step Φ_n(y) = y + h F_n(y); `h` defaults to the stack's own step."""
        return y + (self.h if h is None else h) * self.layers[n](y)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            y = y + self.h * layer(y)
        return y


class ODEResNet(nn.Module):
    """`stem` (opening layer + activation) → `stack` (ResidualStack) → dropout → `head`."""

    def __init__(self, in_shape: tuple[int, ...], classes: int, width: int, depth: int, h: float,
                 activation: str, variant: str, dropout: float) -> None:
        super().__init__()
        self.variant = variant
        act = nn.Tanh() if activation == "tanh" else nn.ReLU()
        if variant == "conv":
            c, _, _ = require_image("ode_resnet(variant = conv)", in_shape)
            self.stem = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), act)
            steps: list[nn.Module] = [ConvStep(width, activation) for _ in range(depth)]
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(1)
        else:
            self.stem = nn.Sequential(nn.Linear(math.prod(in_shape), width), act)
            steps = [DenseStep(width, activation) for _ in range(depth)]
            self.pool = nn.Identity()
        self.stack = ResidualStack(steps, h)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant == "dense":
            x = torch.flatten(x, 1)
        y = self.stack(self.stem(x))
        y = torch.flatten(self.pool(y), 1)
        return self.head(self.drop(y))


def build_ode_resnet(in_shape: tuple[int, ...], classes: int, width: int = 8, depth: int = 16,
                     h: float = 0.1, activation: str = "tanh", variant: str = "dense",
                     dropout: float = 0.0) -> nn.Module:
    """Build an ODE-ResNet: dense (any input, flattened) or conv ((C, H, W) input)."""
    return ODEResNet(tuple(in_shape), classes, width, depth, h, activation, variant, dropout)
