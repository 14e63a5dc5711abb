"""Auxiliary classifiers of module-wise training: the local heads that give each module its loss.

`build_head(kind, kwargs, in_shape, classes)` makes one head for features of shape `in_shape`
(one example, no batch dimension). Image features are (C, H, W); any other shape is flattened.

- `linear`: images are average-pooled to 1×1 first (so the head sees C features, whatever the
  resolution: a linear probe of the channels), then flatten → Linear(·, classes).
- `mlp` (hidden = 128): images are average-pooled to a 2×2 grid first, then flatten →
  Linear(·, hidden) → ReLU → Linear(hidden, classes).
- `conv` (width = 32): the small CNN head of the DGL/TRGL authors, for images only: 3×3 conv
  C → width (padding 1) → ReLU → adaptive average pool to 2×2 → BatchNorm2d(width) → flatten →
  Linear(4·width, classes).

Each head is a plain nn.Sequential of standard layers, so torch.fx traces it.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from mrc.registry import did_you_mean

HEADS: dict[str, dict[str, int]] = {"linear": {}, "mlp": {"hidden": 128}, "conv": {"width": 32}}
"""Head kinds and their keyword arguments with defaults."""


def _options(kind: str, kwargs: dict[str, Any]) -> dict[str, int]:
    """The head's keywords, defaults filled in; a ValueError names an unknown or bad one."""
    if kind not in HEADS:
        close = did_you_mean(kind, list(HEADS))
        tip = f"; did you mean `{close}`?" if close else ""
        raise ValueError(f"unknown head `{kind}`{tip} (heads: {', '.join(HEADS)})")
    options = dict(HEADS[kind])
    for key, value in (kwargs or {}).items():
        if key not in options:
            close = did_you_mean(key, list(options))
            tip = f"; did you mean `{close}`?" if close else ""
            known = ", ".join(options) or "none"
            raise ValueError(f"head `{kind}` has no parameter `{key}`{tip} (parameters: {known})")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"head `{kind}`: `{key}` must be a positive integer, not {value!r}")
        options[key] = value
    return options


def build_head(kind: str, kwargs: dict[str, Any], in_shape: tuple[int, ...], classes: int) -> nn.Module:
    """An auxiliary classifier `kind` mapping features (B, *in_shape) to logits (B, classes).

    Raises ValueError (one line) for an unknown kind or keyword, or a `conv` head on features
    that are not images (C, H, W).
    """
    options = _options(kind, kwargs)
    shape = tuple(int(d) for d in in_shape)
    image = len(shape) == 3
    if kind == "conv":
        if not image:
            raise ValueError(f"a `conv` head needs image features (C, H, W), but the module's "
                             f"output has shape {shape}; use a `linear` or `mlp` head")
        width = options["width"]
        return nn.Sequential(
            nn.Conv2d(shape[0], width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.BatchNorm2d(width), nn.Flatten(), nn.Linear(4 * width, classes))
    if kind == "linear":
        if image:
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(shape[0], classes))
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), classes))
    hidden = options["hidden"]
    if image:
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        features = 4 * shape[0]
    else:
        layers, features = [nn.Flatten()], math.prod(shape)
    return nn.Sequential(*layers, nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))
