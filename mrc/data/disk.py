"""Data sets read from disk: MNIST and Fashion-MNIST (IDX files), CIFAR-10 and CIFAR-100 (the
pickled batches of the Python version).

Nothing is downloaded. Each set is looked for in `root=` when the spec gives one, else in a
fixed list of places (`search_places`): the folders of `$MRC_DATA` (os.pathsep-separated),
`./data`, `~/data`, `~/.cache/mrc` and `/usr/share/datasets` (where Debian's
`dataset-fashion-mnist` installs Fashion-MNIST), each under the names the set's common
distributions use (`fashion-mnist`, torchvision's `FashionMNIST/raw`, `cifar-10-batches-py`…).
A set that is not found is a `DataError` of one line naming every folder tried and how to get
the data.

Every builder returns the builder dict of `mrc.data.builtin`: `x` float32 (N, C, H, W) in
[0, 1], `y` int64, the predefined test split as `x_test`/`y_test` (the loader makes it the
validation set) and `classes`. The IDX files are read with numpy in one piece; the CIFAR
pickles by `mrc.data.files.read_pickle`, which admits numpy arrays and nothing else.

`image_folder` (images in one folder per class, streamed) is declared here too; its builder is
in `mrc.data.images`, imported when it is built (it needs torch, the table does not).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrc.data.builtin import DATASETS, Arrays
from mrc.data.files import DataError, pickle_key, read_idx, read_pickle
from mrc.lazy import Lazy
from mrc.registry import Entry, Param

ENV_VAR = "MRC_DATA"
"""An environment variable naming folders (os.pathsep-separated) searched before the others."""

SEARCH = ("./data", "~/data", "~/.cache/mrc", "/usr/share/datasets")
"""Folders searched for a data set whose `root` is not given, after those of `$MRC_DATA`."""

_ROOT_DOC = ("folder holding the files (or a folder above it, as torchvision lays it out); "
             f"none searches ${ENV_VAR}, " + ", ".join(SEARCH))


@dataclass(frozen=True, slots=True)
class DiskSet:
    """Where one data set may lie and how a user gets it.

    folders: the names of the set's folder under a search place or a given root (a root may
    also be that folder itself). get: how to obtain the files, one clause for the error.
    """

    title: str
    folders: tuple[str, ...]
    get: str


FASHION = DiskSet(
    "Fashion-MNIST", ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    "install Debian's package (`apt install dataset-fashion-mnist`, which puts the IDX .gz files "
    "in /usr/share/datasets/fashion-mnist), or run `torchvision.datasets.FashionMNIST(ROOT, "
    "download=True)` on a machine with internet access and copy ROOT here (the files are in "
    "ROOT/FashionMNIST/raw)")
MNIST = DiskSet(
    "MNIST", ("mnist", "MNIST/raw"),
    "run `torchvision.datasets.MNIST(ROOT, download=True)` on a machine with internet access and "
    "copy ROOT here (the files are in ROOT/MNIST/raw), or put train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in one "
    "folder and give it as `root`")
CIFAR10 = DiskSet(
    "CIFAR-10", ("cifar-10-batches-py",),
    "run `torchvision.datasets.CIFAR10(ROOT, download=True)` on a machine with internet access "
    "and copy ROOT here (it leaves ROOT/cifar-10-batches-py with data_batch_1..5 and test_batch)")
CIFAR100 = DiskSet(
    "CIFAR-100", ("cifar-100-python",),
    "run `torchvision.datasets.CIFAR100(ROOT, download=True)` on a machine with internet access "
    "and copy ROOT here (it leaves ROOT/cifar-100-python with train and test)")


def search_places() -> list[Path]:
    """The folders searched when `root` is not given, in order: `$MRC_DATA`'s, then `SEARCH`."""
    env = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return [Path(p).expanduser().absolute() for p in (*env, *SEARCH)]


def candidates(spec: DiskSet, root: str | None, extra: Iterable[str] = ()) -> list[Path]:
    """The folders that may hold `spec`'s files, in the order they are tried.

    A given root is tried itself, then each of the set's folder names (and `extra`, e.g.
    torchvision's `raw`) below it; without a root, the set's folder names below every
    search place.
    """
    if root is not None:
        base = Path(root).expanduser().absolute()
        found = [base, *(base / e for e in extra), *(base / f for f in spec.folders)]
    else:
        found = [place / f for place in search_places() for f in spec.folders]
    return list(dict.fromkeys(found))


def locate(spec: DiskSet, name: str, root: str | None, holds: Callable[[Path], bool],
           extra: Iterable[str] = ()) -> Path:
    """The first candidate folder that `holds` the set; else a DataError naming every one tried."""
    tried = candidates(spec, root, extra)
    for folder in tried:
        if holds(folder):
            return folder
    if root is not None and not Path(root).expanduser().exists():
        where = f"root {Path(root).expanduser().absolute()} does not exist"
        looked = ""
    else:
        where = f"no {spec.title} files found"
        looked = "; looked in " + ", ".join(map(str, tried))
    unset = f" (give `root=`, or set ${ENV_VAR})" if root is None else ""
    raise DataError(f"{name}: {where}{looked}{unset}; to get the data, {spec.get}; "
                    f"mrc downloads nothing")


# ---- MNIST and Fashion-MNIST: IDX files -------------------------------------------------------

def idx_file(folder: Path, split: str, kind: str) -> Path | None:
    """The IDX file of `split` (`train`, `t10k`) and `kind` (`images-idx3`, `labels-idx1`) in
    `folder`: `train-images-idx3-ubyte` or the `train-images.idx3-ubyte` spelling, gzipped or not."""
    dotted = kind.replace("-", ".")
    for stem in (f"{split}-{kind}-ubyte", f"{split}-{dotted}-ubyte"):
        for name in (stem, f"{stem}.gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def read_idx_set(folder: Path, name: str) -> Arrays:
    """The four IDX files of an MNIST-format folder as the builder dict (10 classes)."""
    out: Arrays = {"classes": 10}
    for split, keys in (("train", ("x", "y")), ("t10k", ("x_test", "y_test"))):
        images, labels = idx_file(folder, split, "images-idx3"), idx_file(folder, split, "labels-idx1")
        if images is None or labels is None:
            lacking = f"{split}-{'images-idx3' if images is None else 'labels-idx1'}-ubyte[.gz]"
            raise DataError(f"{name}: {folder} holds train-images-idx3-ubyte but no {lacking}")
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DataError(f"{images}: images must be unsigned bytes of shape (N, H, W), not "
                            f"{x.dtype} of shape {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{labels}: must hold one label for each of the {len(x)} images of "
                            f"{images.name}, not an array of shape {y.shape}")
        out[keys[0]] = np.divide(x[:, None], np.float32(255), dtype=np.float32)
        out[keys[1]] = y.astype(np.int64)
    return out


def _idx_folder(spec: DiskSet, name: str, root: str | None) -> Path:
    return locate(spec, name, root, lambda f: idx_file(f, "train", "images-idx3") is not None,
                  extra=("raw",))


def _idx_set(spec: DiskSet, name: str, root: str | None) -> Arrays:
    return read_idx_set(_idx_folder(spec, name, root), name)


@DATASETS.register(
    "fashion_mnist",
    Param("root", "str", None, doc=_ROOT_DOC, nullable=True),
    doc="Fashion-MNIST from its IDX files (60,000 training and 10,000 test images, 1×28×28, "
        "10 classes; the test split is the validation set)",
)
def fashion_mnist(seed: int, root: str | None = None) -> Arrays:
    """Zalando's Fashion-MNIST, e.g. Debian's `dataset-fashion-mnist`; the seed is unused."""
    return _idx_set(FASHION, "fashion_mnist", root)


@DATASETS.register(
    "mnist",
    Param("root", "str", None, doc=_ROOT_DOC, nullable=True),
    doc="MNIST from its IDX files (60,000 training and 10,000 test digits, 1×28×28, 10 classes; "
        "the test split is the validation set)",
)
def mnist(seed: int, root: str | None = None) -> Arrays:
    """LeCun's handwritten digits, in the layout of the original files or torchvision's."""
    return _idx_set(MNIST, "mnist", root)


# ---- CIFAR-10 and CIFAR-100: pickled batches --------------------------------------------------

CIFAR_SHAPE = (3, 32, 32)


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one pickled CIFAR batch."""
    record = read_pickle(path)
    data, labels = pickle_key(record, "data", path), pickle_key(record, label_key, path)
    size = int(np.prod(CIFAR_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != size:
        what = (f"{data.dtype} of shape {data.shape}" if isinstance(data, np.ndarray)
                else f"a {type(data).__name__}")
        raise DataError(f"{path}: `data` must be unsigned bytes of shape (N, {size}), not {what}")
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError) as e:  # ragged or odd contents
        raise DataError(f"{path}: `{label_key}` is not a list of labels ({e})") from None
    if y.dtype.kind not in "iu" or y.shape != (len(data),):
        raise DataError(f"{path}: `{label_key}` must be {len(data)} integer labels, not "
                        f"{y.dtype} of shape {y.shape}")
    return data.reshape(-1, *CIFAR_SHAPE), y.astype(np.int64)


def read_cifar(folder: Path, train: Iterable[str], test: str, label_key: str,
               classes: int) -> Arrays:
    """The builder dict of a CIFAR folder: the `train` batches joined, `test` held out."""
    missing = [name for name in (*train, test) if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: the batch file{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)} {'are' if len(missing) > 1 else 'is'} missing")
    parts = [read_cifar_batch(folder / name, label_key) for name in train]
    x_test, y_test = read_cifar_batch(folder / test, label_key)
    x = np.concatenate([p[0] for p in parts])
    return {"x": np.divide(x, np.float32(255), dtype=np.float32),
            "y": np.concatenate([p[1] for p in parts]),
            "x_test": np.divide(x_test, np.float32(255), dtype=np.float32), "y_test": y_test,
            "classes": classes}


CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


@DATASETS.register(
    "cifar10",
    Param("root", "str", None, doc=_ROOT_DOC, nullable=True),
    doc="CIFAR-10 from torchvision's `cifar-10-batches-py` (50,000 training and 10,000 test "
        "images, 3×32×32, 10 classes; the test split is the validation set)",
)
def cifar10(seed: int, root: str | None = None) -> Arrays:
    """Krizhevsky's CIFAR-10, the Python version's pickled batches; the seed is unused."""
    folder = find("cifar10", root)
    return read_cifar(folder, CIFAR10_TRAIN, "test_batch", "labels", 10)


@DATASETS.register(
    "cifar100",
    Param("root", "str", None, doc=_ROOT_DOC, nullable=True),
    Param("labels", "choice", "fine", doc="`fine` gives the 100 classes, `coarse` the 20 "
          "superclasses", choices=("fine", "coarse")),
    doc="CIFAR-100 from torchvision's `cifar-100-python` (50,000 training and 10,000 test "
        "images, 3×32×32, 100 classes or 20 superclasses; the test split is the validation set)",
)
def cifar100(seed: int, root: str | None = None, labels: str = "fine") -> Arrays:
    """Krizhevsky's CIFAR-100, the Python version's pickles; the seed is unused."""
    folder = find("cifar100", root)
    return read_cifar(folder, ("train",), "test", f"{labels}_labels",
                      100 if labels == "fine" else 20)


# ---- where a set lies, without reading it ------------------------------------------------------

FINDERS: dict[str, Callable[[str | None], Path]] = {
    "fashion_mnist": lambda root: _idx_folder(FASHION, "fashion_mnist", root),
    "mnist": lambda root: _idx_folder(MNIST, "mnist", root),
    "cifar10": lambda root: locate(CIFAR10, "cifar10", root,
                                   lambda f: (f / CIFAR10_TRAIN[0]).is_file()),
    "cifar100": lambda root: locate(CIFAR100, "cifar100", root, lambda f: (f / "train").is_file()),
}
"""The data sets read from disk, each with how its folder is found."""


def find(name: str, root: str | None = None) -> Path:
    """The folder holding the files of disk data set `name` (cheap: nothing is read), or a
    DataError naming every folder tried. Tools and tests use it to tell whether a set is here."""
    return FINDERS[name](root)


DATASETS.add(Entry(
    "image_folder", Lazy("mrc.data.images:image_folder"),
    (Param("root", "str", doc="the folder with one subfolder of images per class (a relative "
           "path is taken from the spec's folder)"),
     Param("size", "ints", doc="the side of the square images (or [height, width]) after resizing "
           "the shorter side and cutting the centre", lo=1),
     Param("mode", "choice", "rgb", doc="`rgb` gives 3 channels, `gray` 1", choices=("rgb", "gray"))),
    "images in one folder per class (sorted names are the labels), decoded with Pillow; "
    "a `val/` or `test/` folder beside `train/` is the held-out split",
))
