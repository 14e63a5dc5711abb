"""Data for the `subsets` reproduction (specs/repro/subsets_*.mrs): a small, class-balanced
random subset of the Fashion-MNIST training images (small enough for a perceptron to overfit,
so a generalisation gap exists), with the full 10,000-image test set as the held-out split.

The subset is a pure function of `seed` and `size`, so the `data` statement and the `eval fit`
set (which evaluates the model on the training subset itself) see the same examples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mrc.data.disk import fashion_mnist


def fashion_subset(seed: int = 0, size: int = 2000, root: str | None = None) -> dict[str, Any]:
    """`size` training images (size/10 per class, drawn with `seed`) and the whole test set."""
    if size < 10 or size % 10:
        raise ValueError(f"size = {size}: give a positive multiple of 10 (the same number per class)")
    full = fashion_mnist(seed, root)
    y = np.asarray(full["y"])
    rng = np.random.default_rng(seed)
    chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), size // 10, replace=False)
                                     for c in range(10)]))
    return {"x": np.asarray(full["x"])[chosen], "y": y[chosen], "x_test": full["x_test"],
            "y_test": full["y_test"], "classes": 10}
