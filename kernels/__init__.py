"""mrc.kernels: fused, memory-bound update kernels over flat parameter buffers.

One module per kernel family, each with a plain-torch reference (`<name>_torch`, also the CPU
path) and a Triton kernel (`<name>_triton`) of the same function:

* `flat`      FlatGroup: parameters re-pointed into one buffer, flat gradients and state;
* `sgd`       torch.optim.SGD, and the fused multirate (fast/slow, linear drift) update;
* `adam`      Adam and AdamW, and the multirate update (segments at their own step counts);
* `subset`    random-subset zero/restore and its seeded mask;
* `langevin`  the underdamped Langevin O-step (counter-based noise) and a BAOAB step;
* `configs`   the Triton import guard and every autotune config.

Importing this package does not import Triton; `triton_available()` and `pick_kernel()` decide
which path a device uses. `MRC_KERNELS=torch|triton` overrides the choice (e.g. to run the
Triton kernels under the CPU interpreter, or to force the torch path on a GPU).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import torch

__all__ = ["pick_kernel", "triton_available"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_available() -> bool:
    """True when Triton is importable AND can run here: a CUDA device, or TRITON_INTERPRET=1."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or _interpreting()


def pick_kernel(device: torch.device | str) -> Literal["triton", "torch"]:
    """Which implementation to use for buffers on `device`.

    CUDA devices use Triton when it is available; the CPU uses the torch path (the
    interpreter is for tests, far too slow for training). `MRC_KERNELS=torch` or `=triton`
    overrides; forcing Triton where it cannot run raises.
    """
    device = torch.device(device)
    forced = os.environ.get("MRC_KERNELS", "").strip().lower()
    if forced == "torch":
        return "torch"
    if forced == "triton":
        if device.type == "cuda" and triton_available():
            return "triton"
        if device.type == "cpu" and importlib.util.find_spec("triton") and _interpreting():
            return "triton"
        raise RuntimeError(f"MRC_KERNELS=triton, but Triton cannot run on {device} here "
                           "(needs CUDA, or TRITON_INTERPRET=1 for the CPU)")
    if forced:
        raise ValueError(f"MRC_KERNELS must be 'torch' or 'triton', not {forced!r}")
    return "triton" if device.type == "cuda" and triton_available() else "torch"
