"""Readers for user data files: NumPy `.npz` archives, IDX files (the MNIST format) and the
pickled batches of the CIFAR data sets.

The NPZ and IDX readers return the builder dict (`x`, `y`, optional `x_test`, `y_test`, and
for NPZ `classes`) as numpy arrays; `read_pickle` returns the plain containers of a pickle.
Every way a file can be wrong — missing, unreadable, corrupt, wrong keys — is a `DataError`
with a one-line message, so the CLI can show it as a diagnostic rather than a traceback.

No reader runs code from a file: `.npz` archives are read with allow_pickle=False and pickles
by `SafeUnpickler`, which admits only numpy's array reconstruction.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


class DataError(Exception):
    """Loading a data set failed; `message` is one line fit for a diagnostic."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---- NPZ --------------------------------------------------------------------------------------

NPZ_KEYS = ("x", "y", "x_test", "y_test", "classes")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays `x`, `y` (and `x_test`, `y_test` if both are present) of an `.npz` archive,
    and `classes` (a scalar: the class count) if present; without it the count is the largest
    label + 1.

    Other arrays in the archive are ignored; pickled objects are refused (allow_pickle=False),
    so a data file cannot run code.
    """
    _exists(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            missing = [k for k in ("x", "y") if k not in keys]
            if missing:
                found = ", ".join(f"`{k}`" for k in sorted(keys)) or "no arrays"
                raise DataError(f"{path}: an .npz data file needs arrays `x` and `y`, "
                                f"but has {found}")
            if ("x_test" in keys) != ("y_test" in keys):
                have, lack = ("x_test", "y_test") if "x_test" in keys else ("y_test", "x_test")
                raise DataError(f"{path}: has `{have}` but not `{lack}`; give both or neither")
            return {k: np.asarray(archive[k]) for k in NPZ_KEYS if k in keys}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read as an .npz archive ({_one_line(e)})") from e


# ---- IDX --------------------------------------------------------------------------------------

IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type codes (the third byte of the magic number) and their big-endian numpy types."""

_GZIP_MAGIC = b"\x1f\x8b"


def is_idx_path(path: str | Path) -> bool:
    """Whether a name looks like an IDX file: `*-ubyte`, `*.idx`, `*.idx3`… (or those + .gz)."""
    name = Path(path).name.lower().removesuffix(".gz")
    return name.endswith("-ubyte") or bool(re.search(r"\.idx\d?$", name))


def read_idx(path: Path) -> np.ndarray:
    """One IDX array: magic `00 00 TYPE NDIM`, NDIM big-endian uint32 sizes, then the data.

    Gzipped files are recognised by their content, not their name.
    """
    _exists(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({_one_line(e)})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        magic = raw[:4].hex(" ") if raw else "an empty file"
        raise DataError(f"{path}: not an IDX file (bad magic number: {magic})")
    dtype, ndim = IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header is truncated")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX data has {len(raw) - header} bytes but its dimensions "
                        f"{'×'.join(map(str, dims))} need {expected}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def labels_path(images: Path) -> Path:
    """The labels file of an images file by the MNIST convention: images→labels, idx3→idx1."""
    name = images.name.replace("images", "labels").replace("idx3", "idx1")
    if name == images.name:
        raise DataError(f"{images}: cannot tell where its labels are: the name should contain "
                        f"`images` (or `idx3`) so that `labels` (`idx1`) names the labels file")
    return images.with_name(name)


def held_out_images(images: Path) -> Path | None:
    """The held-out images beside a training file (`train`→`t10k` or `test`), if they exist."""
    if "train" not in images.name:
        return None
    for other in ("t10k", "test"):
        candidate = images.with_name(images.name.replace("train", other))
        if candidate.is_file():
            return candidate
    return None


def read_idx_pair(images: Path) -> dict[str, np.ndarray]:
    """Images and labels of an IDX pair, plus the conventional test pair if there is one.

    3-D images (N, H, W) get a channel axis, (N, 1, H, W); unsigned bytes are scaled to [0, 1].
    """
    out = _idx_split(images)
    test = held_out_images(images)
    if test is not None:
        held_out = _idx_split(test)
        out["x_test"], out["y_test"] = held_out["x"], held_out["y"]
    return out


def _idx_split(images: Path) -> dict[str, np.ndarray]:
    x = read_idx(images)
    labels = labels_path(images)
    if not labels.is_file():
        raise DataError(f"{images}: labels file {labels.name} not found next to it")
    y = read_idx(labels)
    if y.ndim != 1:
        raise DataError(f"{labels}: labels must be one-dimensional, not of shape {y.shape}")
    scaled = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if scaled.ndim == 3:
        scaled = scaled[:, None]
    return {"x": scaled, "y": y}


# ---- pickles (the CIFAR batches) --------------------------------------------------------------

def _latin1(text: Any, encoding: str) -> bytes:
    """`_codecs.encode(text, "latin1")`, as Python 3 pickles bytes at protocol 2; nothing else."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _pickle_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct

    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1.x (and Python 2)
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy ≥ 2
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1,
    }


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a Python global that `SafeUnpickler` does not admit."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds plain containers, numbers, strings, bytes and numpy arrays only.

    Dicts, lists, tuples and scalars need no global; the one thing a pickle must import to be
    a data file is numpy's array reconstruction (`_reconstruct`, `ndarray`, `dtype`), plus
    `_codecs.encode(…, "latin1")`, which is how Python 3 writes bytes at protocol 2. Every other
    global — `os.system`, `builtins.eval`, any class — is refused before it is looked up, so a
    planted file runs no code. Persistent ids are refused by `pickle.Unpickler` itself.
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._admitted = _pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._admitted.get((module, name))
        if found is None:
            raise RefusedGlobal(module, name)
        return found


def read_pickle(path: Path) -> Any:
    """The object pickled in `path`, read by `SafeUnpickler` (Python 2 pickles included).

    Python 2's `str` arrives as `bytes` (encoding="bytes"), so dict keys may be bytes: callers
    use `pickle_key`. A pickle that asks for anything but numpy arrays is refused in one line
    naming the file and the global it tried to load.
    """
    _exists(path)
    try:
        with path.open("rb") as f:
            return SafeUnpickler(f, encoding="bytes").load()
    except RefusedGlobal as e:
        raise DataError(f"{path}: refused: the pickle would load the Python global "
                        f"`{e.qualname}`; a data file may hold only containers, numbers, bytes and "
                        f"numpy arrays, so nothing in it was run") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({_one_line(e)})") from None
    except Exception as e:  # a damaged pickle: any error of the unpickler or of numpy's setstate
        raise DataError(f"{path}: cannot read as a pickle ({_one_line(e)})") from None


def pickle_key(record: Any, key: str, path: Path) -> Any:
    """`record[key]` of an unpickled dict whose keys are str or (Python 2) bytes."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: holds a {type(record).__name__}, not a dict of arrays")
    for k in (key, key.encode("latin1")):
        if k in record:
            return record[k]
    found = ", ".join(f"`{_text(k)}`" for k in record) or "nothing"
    raise DataError(f"{path}: has no `{key}` (it has {found})")


def _text(key: Any) -> str:
    return key.decode("latin1") if isinstance(key, bytes) else str(key)


def _exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"data file {path} not found")
    if not path.is_file():
        raise DataError(f"{path} is not a file")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
