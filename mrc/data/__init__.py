"""Data sets that need no download, user data files, and the deterministic batch loader.

`DATASETS` holds the built-ins (`digits`, `mnist1d`, `levelsets`, `peaks`, `spirals`,
`synthetic`, and read from disk `mnist`, `fashion_mnist`, `cifar10`, `cifar100`), each
`build(seed, **kwargs) -> dict` of arrays `x`, `y` and optionally `x_test`, `y_test` (a
predefined held-out split) and `classes` (the class count). `DATA_OPTIONS` are the
keywords every data set takes (batch, val, keep, shuffle, normalize, drop_last, limit, augment).
`load_data` turns a spec's `data` statement into a `DataBundle`: training and validation
tensors whose batches are a pure function of (seed, epoch). `AUGMENTS` are the data transforms
(the class patch), `EVAL_SOURCES` the built-in evaluation sets and `load_eval` loads one `eval`
statement's set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mrc.data import disk as _disk  # noqa: F401  (registers the data sets read from disk)
from mrc.data.augment import AUGMENTS, PaperPatches, Patches
from mrc.data.builtin import DATASETS
from mrc.data.evalsets import EVAL_SOURCES, load_eval
from mrc.data.files import DataError, read_idx, read_idx_pair, read_npz
from mrc.data.options import DATA_OPTIONS

if TYPE_CHECKING:
    from mrc.data.loader import DataBundle, is_factory_ref, load_data


def __getattr__(name: str) -> Any:
    """The loader's names, imported on first use (PEP 562): the tables above are read by the
    checker, which must not import torch."""
    if name in ("DataBundle", "is_factory_ref", "load_data"):
        from mrc.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "DATA_OPTIONS",
    "EVAL_SOURCES",
    "DataBundle",
    "DataError",
    "PaperPatches",
    "Patches",
    "is_factory_ref",
    "load_data",
    "load_eval",
    "read_idx",
    "read_idx_pair",
    "read_npz",
]
