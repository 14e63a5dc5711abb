"""Fashion-MNIST average-pooled to size×size, for the MGRIT reproduction's conv ODE-ResNet.

A convolutional ODE-ResNet keeps its resolution through every layer (y ← y + h·σ(K_n * y + b_n)
has no striding), so its cost is depth × width² × pixels. Pooling the 28×28 images 2×2 to 14×14
makes each layer 4× cheaper, which is what lets serial and one-shot MGRIT training of a 16-layer
stack over three seeds fit the reproduction's CPU budget. The 60,000 training images are `x`, `y`
and the 10,000 t10k images the predefined validation split (`x_test`, `y_test`), as the built-in
`data fashion_mnist` gives them; inputs are float32 in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mrc.data.disk import find, idx_file
from mrc.data.files import read_idx


def _read(folder: Any, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = idx_file(folder, split, "images-idx3"), idx_file(folder, split, "labels-idx1")
    if images is None or labels is None:
        raise FileNotFoundError(f"{folder} has no {split} images or labels of Fashion-MNIST")
    x = read_idx(images).astype(np.float32) / 255.0
    k = 28 // size
    x = x.reshape(len(x), size, k, size, k).mean(axis=(2, 4))
    return x[:, None].astype(np.float32), read_idx(labels).astype(np.int64)


def pooled(size: int = 14, root: str | None = None) -> dict[str, Any]:
    """Fashion-MNIST at size×size (size divides 28: 28, 14, 7, 4, 2, 1), with its test split."""
    if size not in (1, 2, 4, 7, 14, 28):
        raise ValueError(f"size must divide 28 (1, 2, 4, 7, 14 or 28), got {size}")
    folder = find("fashion_mnist", root)
    x, y = _read(folder, "train", size)
    x_test, y_test = _read(folder, "t10k", size)
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test, "classes": 10}
