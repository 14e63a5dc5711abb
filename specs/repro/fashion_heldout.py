"""Fashion-MNIST with a validation split held out of the *training* set, and the test set apart.

mrc's built-in `data fashion_mnist` makes the 10,000-image test split its validation set. The
reproductions that *select* on the validation metric (a `best` merge of brains, the best
learning rate of a sweep) must not select on the test set, so their specs read the data through
this factory instead: `split` holds `held` training images out (a fixed draw, the same for every
run seed, so runs differ only by their own seed) and `test` is the t10k split, evaluated as an
`eval` set. Inputs are float32 in [0, 1] with shape (1, 28, 28), as the built-in gives them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mrc.data.disk import find, idx_file
from mrc.data.files import read_idx

SPLIT_SEED = 12345  # the held-out draw: fixed, independent of the run's seed


def _read(split: str, root: str | None) -> tuple[np.ndarray, np.ndarray]:
    folder = find("fashion_mnist", root)
    images, labels = idx_file(folder, split, "images-idx3"), idx_file(folder, split, "labels-idx1")
    if images is None or labels is None:
        raise FileNotFoundError(f"{folder} has no {split} images or labels of Fashion-MNIST")
    x = read_idx(images).astype(np.float32)[:, None] / 255.0
    return x, read_idx(labels).astype(np.int64)


def split(held: int = 2000, root: str | None = None) -> dict[str, Any]:
    """The 60,000 training images less `held` held out (`x`, `y`), and those `held` as the
    validation split (`x_test`, `y_test`: mrc's name for a predefined held-out split)."""
    if not 0 < held < 60000:
        raise ValueError(f"held must be between 1 and 59,999 images, got {held}")
    x, y = _read("train", root)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    held, kept = np.sort(order[:held]), np.sort(order[held:])
    return {"x": x[kept], "y": y[kept], "x_test": x[held], "y_test": y[held]}


def test(root: str | None = None) -> dict[str, Any]:
    """The 10,000-image t10k split, for `eval test = "fashion_heldout.py:test"`."""
    x, y = _read("t10k", root)
    return {"x": x, "y": y}
