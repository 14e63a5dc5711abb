"""The small float64 residual stacks the MGRIT propagator tests share (tests/unit/test_mgrit_propagate.py,
test_mgrit_relax.py): the built-in ode_resnet's stack, dense (width 8) or conv (3 channels), DEPTH layers, with
biases of both signs and a larger spread so that relu's kinks are exercised; its per-interval state; seeded
float64 noise."""

from __future__ import annotations

import torch
from torch import nn

from mrc.models import build_model

DEPTH = 12
CASES = [("dense", "tanh"), ("dense", "relu"), ("conv", "tanh"), ("conv", "relu")]
IDS = [f"{v}-{a}" for v, a in CASES]


def stack(variant: str, activation: str, seed: int = 0) -> nn.Module:
    """A float64 ResidualStack of the built-in ode_resnet (dense width 8, conv 3 channels), h = 0.25."""
    torch.manual_seed(seed)
    in_shape = (6,) if variant == "dense" else (2, 5, 4)
    width = 8 if variant == "dense" else 3
    model = build_model("ode_resnet", in_shape, 3, {"width": width, "depth": DEPTH, "variant": variant,
                                                    "activation": activation, "h": 0.25})
    with torch.no_grad():
        for layer in model.stack.layers:
            layer.bias.normal_(0.0, 0.5)
    return model.double().stack


def state(variant: str) -> tuple[int, ...]:
    """One interval's state: [batch 5, width 8] (dense) or [batch 2, 3 channels, 5, 4] (conv)."""
    return (5, 8) if variant == "dense" else (2, 3, 5, 4)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
