"""The message a `send` hands its `recv` (mrc/techniques/distributed/p2p.py): a small header
(the payload's dtype and shape, the rows of the whole batch it is a part of, the targets' dtype
or none), the activation, and — in a stale pipeline — the targets it goes with.
"""

from __future__ import annotations

from typing import Any

import torch

DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                   torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
MAX_DIMS = 8
HEADER = 4 + MAX_DIMS
"""[payload dtype, ndim, total rows of the batch, targets dtype (−1: none), shape (padded)]."""


def rows_of(value: tuple[Any, ...]) -> tuple[float, int]:
    """(share, total rows) of a batch-like value: a batch (x, y) is all of itself; a micro-batch
    or a received message (x, y, share, total) says."""
    if len(value) >= 4:
        return float(value[2]), int(value[3])
    return 1.0, len(value[1])


def header(x: torch.Tensor, total: int, labels: torch.Tensor | None) -> torch.Tensor:
    """The header of a message of `x` (rows of a batch of `total`), with `labels` or without."""
    if x.dim() > MAX_DIMS:
        raise ValueError(f"a message of {x.dim()} dimensions (at most {MAX_DIMS})")
    h = [DTYPES.index(x.dtype), x.dim(), total, -1 if labels is None else DTYPES.index(labels.dtype)]
    h += list(x.shape) + [0] * (MAX_DIMS - x.dim())
    return torch.tensor(h, dtype=torch.int64, device=x.device)


__all__ = ["DTYPES", "HEADER", "header", "rows_of"]
