"""Data transforms a spec asks for with `data …(augment = NAME(…))`; today the class patch.

Patch augmentation follows Li, Wei & Ma (NeurIPS 2019), the data of the multirate seed's "latent
multiple time scales" experiment: every class gets a fixed pattern (its *patch*), and each
example of a split is one of three kinds, in fixed proportions —

- *free*: the image alone (no patch), a fraction `free` of the examples (default 20 %);
- *only*: the class patch on a blank image (zeros elsewhere), a fraction `only` (default 16 %);
- *both*: the image with the class patch pasted over it, the rest (default 64 %).

The patch is a `size`×`size` square of 0/1 values on every channel, pasted `margin` pixels from
the top and left border. Patterns are distinct and not all zero; they and the kinds are drawn
from the run's seed only, so a run is reproducible and the clean and patch-only evaluation sets
are the same for every spec with that seed.

`AUGMENTS` lists the transforms; a spec's `augment` value reaches the loader as a plain dict
(`{"kind": "patch", "size": 3, …}`), which `make_augment` turns into a `Patches`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mrc.data.files import DataError
from mrc.registry import Param, Registry

AUGMENTS = Registry("data transform")
"""Built-in data transforms: `augment = NAME(…)` in a `data` statement names one of these."""

KIND_FREE, KIND_ONLY, KIND_BOTH = 0, 1, 2
"""The kind of each augmented example: no patch, the patch alone, image and patch."""

_PATTERN_STREAM = 7_001
"""Random streams of the patch transform (beside the loader's split and limit streams)."""

_MAX_REDRAWS = 1000


class AugmentError(DataError):
    """A data transform does not fit the data (reported at the spec's `augment` value)."""


def _stream(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**63, stream])


@dataclass(frozen=True, slots=True)
class Patches:
    """The class patches of one run and how they are placed and mixed into a split.

    patterns: (classes, C, size, size) float32 of 0/1; margin: offset from the top-left border;
    free / only: the fractions of patch-free and patch-only examples (the rest has both).
    """

    patterns: torch.Tensor
    margin: int
    free: float
    only: float
    seed: int

    @property
    def size(self) -> int:
        return int(self.patterns.shape[-1])

    def kinds(self, n: int, stream: int) -> torch.Tensor:
        """The kind of each of `n` examples: exactly round(free·n) free, round(only·n) only,
        the rest both, in a seeded random order (`stream` tells the splits apart)."""
        n_free = round(self.free * n)
        n_only = min(n - n_free, round(self.only * n))
        kinds = np.full(n, KIND_BOTH, dtype=np.int64)
        kinds[:n_free] = KIND_FREE
        kinds[n_free:n_free + n_only] = KIND_ONLY
        return torch.from_numpy(_stream(self.seed, _PATTERN_STREAM + 1 + stream).permutation(kinds))

    def paste(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """`x` with each example's class patch pasted over it (a copy)."""
        out = x.clone()
        m, s = self.margin, self.size
        out[:, :, m:m + s, m:m + s] = self.patterns[y]
        return out

    def only_patch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Blank images of `x`'s shape carrying only each example's class patch."""
        return self.paste(torch.zeros_like(x), y)

    def apply(self, x: torch.Tensor, y: torch.Tensor, stream: int) -> torch.Tensor:
        """A split augmented in the fixed proportions (see the module docstring)."""
        kinds = self.kinds(len(y), stream)
        out = x.clone()
        both, only = kinds == KIND_BOTH, kinds == KIND_ONLY
        out[both] = self.paste(x[both], y[both])
        out[only] = self.only_patch(x[only], y[only])
        return out


def class_patterns(seed: int, classes: int, channels: int, size: int) -> torch.Tensor:
    """`classes` distinct, non-zero 0/1 patterns of shape (channels, size, size) from `seed`."""
    bits = channels * size * size
    if bits < 64 and 2**bits - 1 < classes:
        raise AugmentError(f"a {size}×{size} patch on {channels} channel(s) has only {2**bits - 1} "
                        f"distinct patterns, fewer than the {classes} classes; make `size` larger")
    rng = _stream(seed, _PATTERN_STREAM)
    rows: list[tuple[int, ...]] = []
    for _ in range(_MAX_REDRAWS * classes):
        if len(rows) == classes:
            break
        row = tuple(int(b) for b in rng.integers(0, 2, size=bits))
        if any(row) and row not in rows:
            rows.append(row)
    else:  # pragma: no cover - only with a few more classes than patterns
        raise AugmentError(f"could not draw {classes} distinct patches of size {size}")
    return torch.tensor(rows, dtype=torch.float32).reshape(classes, channels, size, size)


PATCH_PARAMS = (
    Param("size", "int", 3, doc="side of the square patch, in pixels", lo=1),
    Param("margin", "int", 1, doc="pixels between the patch and the top and left border", lo=0),
    Param("free", "float", 0.2, doc="fraction of examples without the patch", lo=0.0, hi=1.0),
    Param("only", "float", 0.16, doc="fraction of examples with the patch and no image content",
          lo=0.0, hi=1.0),
)


@AUGMENTS.register("patch", *PATCH_PARAMS,
                   doc="a class-dependent patch (Li, Wei & Ma 2019): free / only / both examples")
def patch(seed: int, classes: int, in_shape: tuple[int, ...], size: int = 3, margin: int = 1,
          free: float = 0.2, only: float = 0.16) -> Patches:
    """The class patches of a run: checks that the data are images and that the patch fits."""
    if len(in_shape) != 3:
        raise AugmentError(f"`patch` needs image data of shape (C, H, W), but examples have shape "
                        f"{tuple(in_shape)}" + (" (use `shape=image`)" if len(in_shape) == 1 else ""))
    channels, height, width = in_shape
    if margin + size > min(height, width):
        raise AugmentError(f"a {size}×{size} patch {margin} pixel(s) from the border does not fit in "
                        f"{height}×{width} images")
    if free + only > 1.0 + 1e-12:
        raise AugmentError(f"`free` + `only` = {free + only:g} is more than 1")
    return Patches(class_patterns(seed, classes, channels, size), margin, free, only, seed)


def make_augment(spec: Mapping[str, Any] | None, seed: int, classes: int,
                 in_shape: tuple[int, ...]) -> Patches | None:
    """The transform a `data` statement's `augment` value describes (None: no augmentation)."""
    if not spec:
        return None
    settings = dict(spec)
    kind = settings.pop("kind", None)
    entry = AUGMENTS.get(str(kind))
    if entry is None:
        raise AugmentError(f"unknown data transform `{kind}`; transforms are "
                        f"{', '.join(AUGMENTS.names())}")
    args = {**entry.defaults(), **settings}
    return entry.build(seed, classes, in_shape, **args)
