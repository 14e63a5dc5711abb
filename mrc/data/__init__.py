"""Data sets that need no download, user data files, and the deterministic batch loader.

`DATASETS` holds the built-ins (`digits`, `mnist1d`, `levelsets`, `peaks`, `spirals`,
`synthetic`), each `build(seed, **kwargs) -> dict` of arrays `x`, `y` and optionally `x_test`,
`y_test` (a predefined held-out split) and `classes` (the class count). `DATA_OPTIONS` are the
keywords every data set takes (batch, val, keep, shuffle, normalize, drop_last, limit).
`load_data` turns a spec's `data` statement into a `DataBundle`: training and validation
tensors whose batches are a pure function of (seed, epoch).
"""

from __future__ import annotations

from mrc.data.builtin import DATASETS
from mrc.data.files import DataError, read_idx, read_idx_pair, read_npz
from mrc.data.loader import DATA_OPTIONS, DataBundle, is_factory_ref, load_data

__all__ = [
    "DATASETS",
    "DATA_OPTIONS",
    "DataBundle",
    "DataError",
    "is_factory_ref",
    "load_data",
    "read_idx",
    "read_idx_pair",
    "read_npz",
]
