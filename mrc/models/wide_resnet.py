"""Wide ResNet (Zagoruyko & Komodakis 2016, "Wide Residual Networks") for image inputs (C, H, W).

WRN-depth-widen: depth = 6n + 4 (WRN-16 has n = 2 blocks per group), a 3×3 `stem` of 16
channels, three groups `layer1..layer3` of n pre-activation `WideBlock`s of widths 16·widen,
32·widen and 64·widen (strides 1, 2, 2), then BN-ReLU (`norm`), global average pooling and a
linear `head`. WRN-16-4 on CIFAR-10 has 2.75 M parameters; it is the network of the multirate
seed's patch experiment.

A block is x ↦ skip + branch(pre(x)) with pre = BN-ReLU (the pre-activation, shared with the
shortcut as in the authors' code) and branch = conv3×3-[dropout]-BN-ReLU-conv3×3; the skip is x
itself, or a strided 1×1 conv of pre(x) (`shortcut`) where the shape changes. Module-wise
training (TRGL) finds the residual branches r_m through `is_residual_block` and the add of the
`branch` output.
"""

from __future__ import annotations

import torch
from torch import nn

from mrc.models.resnet import require_image


class WideBlock(nn.Module):
    """Pre-activation basic block: skip + branch(BN-ReLU(x))."""

    is_residual_block = True

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU())
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.BatchNorm2d(out_ch), nn.ReLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)]
        self.branch = nn.Sequential(*layers)
        self.identity = stride == 1 and in_ch == out_ch
        self.shortcut: nn.Module = nn.Identity() if self.identity else \
            nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.pre(x)
        skip = x if self.identity else self.shortcut(o)
        return skip + self.branch(o)


class WideResNet(nn.Module):
    """`stem` → `layer1..layer3` (WideBlocks) → `norm` (BN-ReLU) → average pool → `head`."""

    def __init__(self, in_ch: int, classes: int, blocks_per_group: int, widen: int,
                 dropout: float) -> None:
        super().__init__()
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(in_ch, 16, 3, padding=1, bias=False)
        groups = []
        prev = 16
        for i, w in enumerate(widths):
            blocks = [WideBlock(prev if j == 0 else w, w, (1 if i == 0 else 2) if j == 0 else 1, dropout)
                      for j in range(blocks_per_group)]
            groups.append(nn.Sequential(*blocks))
            prev = w
        self.layer1, self.layer2, self.layer3 = groups
        self.norm = nn.Sequential(nn.BatchNorm2d(prev), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(prev, classes)
        for m in self.modules():  # the authors' initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(torch.flatten(self.pool(self.norm(x)), 1))


def build_wide_resnet(in_shape: tuple[int, ...], classes: int, depth: int = 16, widen: int = 4,
                      dropout: float = 0.0) -> nn.Module:
    """Build WRN-`depth`-`widen` (depth = 6n + 4) for (C, H, W) inputs."""
    if depth < 10 or (depth - 4) % 6 != 0:
        lower = max(10, (depth - 4) // 6 * 6 + 4)
        raise ValueError(
            f"wide_resnet depth must be 6n + 4 (10, 16, 22, 28, 40, …), not {depth}; "
            f"try depth = {lower} or {lower + 6}")
    c, _, _ = require_image("wide_resnet", in_shape)
    return WideResNet(c, classes, (depth - 4) // 6, widen, dropout)
