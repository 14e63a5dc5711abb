"""CIFAR-style ResNet (He et al. 2016, §4.2) for image inputs (C, H, W).

Depth follows the CIFAR rule depth = 6n + 2: a 3×3 stem, three stages `layer1..layer3` of n
`ResidualBlock`s each (widths w, 2w, 4w; stride 2 at the start of stages 2 and 3), global average
pooling and a linear `head`. Module-wise training (TRGL) regularizes the residual branches r_m of
the blocks; it finds them through `ResidualBlock.is_residual_block` and the `branch` submodule.
"""

from __future__ import annotations

import torch
from torch import nn


def require_image(model: str, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return (C, H, W) from `in_shape`, or raise a ValueError saying the model needs images."""
    if len(in_shape) != 3:
        shown = tuple(in_shape)
        raise ValueError(
            f"{model} needs image inputs of shape (C, H, W), but each example has shape {shown}; "
            f"give image-shaped data (e.g. digits without flattening) or use a model for flat "
            f"vectors such as `mlp`")
    c, h, w = (int(d) for d in in_shape)
    return c, h, w


class ResidualBlock(nn.Module):
    """Basic block x ↦ relu(shortcut(x) + branch(x)), branch = conv-bn-relu-conv-bn.

    `branch` is the residual function r_m whose squared norm is TRGL's transport cost.
    The shortcut is the identity, or a strided 1×1 conv + BN where the shape changes.
    """

    is_residual_block = True

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.shortcut(x) + self.branch(x))


class ResNet(nn.Module):
    """`stem` → `layer1..layer3` (ResidualBlocks) → average pool → dropout → `head`."""

    def __init__(self, in_ch: int, classes: int, blocks_per_stage: int, width: int,
                 dropout: float) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        widths = (width, 2 * width, 4 * width)
        stages = []
        prev = width
        for i, w in enumerate(widths):
            blocks = [ResidualBlock(prev, w, stride=1 if i == 0 else 2)]
            blocks += [ResidualBlock(w, w) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            prev = w
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(prev, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.drop(x))


def build_resnet(in_shape: tuple[int, ...], classes: int, depth: int = 8, width: int = 16,
                 dropout: float = 0.0) -> nn.Module:
    """Build a CIFAR ResNet-`depth` (depth = 6n + 2) for (C, H, W) inputs."""
    if depth < 8 or (depth - 2) % 6 != 0:
        lower = max(8, (depth - 2) // 6 * 6 + 2)
        raise ValueError(
            f"resnet depth must be 6n + 2 (8, 14, 20, 32, 44, 56, 110, …), not {depth}; "
            f"try depth = {lower} or {lower + 6}")
    c, _, _ = require_image("resnet", in_shape)
    return ResNet(c, classes, (depth - 2) // 6, width, dropout)
