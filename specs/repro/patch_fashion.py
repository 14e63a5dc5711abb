"""Fashion-MNIST with a smaller held-out split, for the patch reproduction (specs/repro/patch_*.mrs).

mrc's built-in `fashion_mnist` always evaluates on the whole 10,000-image test split. The patch
experiment evaluates three sets after every epoch (the patched validation split, `clean` and
`patch_only`, each as large as the held-out split), which at 10,000 images each would cost the
CPU budget five times the training itself. This factory returns the training split whole (the
spec's `limit` picks a seeded random subset of it) and the first `test` images of the test split
(the test split is stored shuffled; the same images for every seed and every contender).
"""

from __future__ import annotations

from typing import Any

from mrc.data.disk import fashion_mnist


def fashion(test: int = 2000, root: str | None = None) -> dict[str, Any]:
    """Fashion-MNIST (1×28×28 in [0, 1]) with its test split cut to its first `test` images."""
    data = fashion_mnist(0, root)
    if not 0 < test <= len(data["y_test"]):
        raise ValueError(f"`test` must be between 1 and {len(data['y_test'])}, not {test}")
    return {**data, "x_test": data["x_test"][:test], "y_test": data["y_test"][:test]}
