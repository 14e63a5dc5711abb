"""The data sets read from disk (mrc/data/disk.py): MNIST and Fashion-MNIST from IDX files,
CIFAR-10/100 from their pickled batches, each against small files written here in the exact
on-disk format (IDX plain and gzipped, torchvision's folder layout, Python 2 pickles and Python 3
protocol-2 pickles with bytes keys); where mrc looks and what it says when nothing is there; and
the real Fashion-MNIST where Debian's package is installed."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from mrc.api import bind_spec
from mrc.data import DATASETS, DataError, disk, load_data
from mrc.diagnostics import CompileError

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ---- writing the on-disk formats ---------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """An IDX file: magic 00 00 08 NDIM, the sizes as big-endian uint32, then the bytes."""
    assert array.dtype == np.uint8
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)


def idx_set(folder: Path, seed: int, gz: bool, n: int = 12, m: int = 5,
            dotted: bool = False) -> dict[str, np.ndarray]:
    """The four MNIST files in `folder` with random images (n training, m test), returned."""
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
              "y": rng.integers(0, 10, n, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (m, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, m, dtype=np.uint8)}
    suffix = ".gz" if gz else ""
    kinds = {"x": "images.idx3" if dotted else "images-idx3",
             "y": "labels.idx1" if dotted else "labels-idx1"}
    for key, array in arrays.items():
        split = "t10k" if key.endswith("_test") else "train"
        write_idx(folder / f"{split}-{kinds[key[0]]}-ubyte{suffix}", array, gz)
    return arrays


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Writes what Python 2's cPickle wrote for the CIFAR batches: every `str` (and bytes) as a
    BINSTRING, numpy's reconstruction under its old module name `numpy.core.multiarray`."""

    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj: Any, name: str | None = None) -> None:
        name = name or obj.__qualname__
        module = "numpy" if name in ("ndarray", "dtype") else "numpy.core.multiarray"
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str
    dispatch[type] = save_global


def write_pickle(path: Path, record: dict[bytes, Any], python2: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if python2:
        buffer = io.BytesIO()
        Py2Pickler(buffer, protocol=2).dump(record)
        path.write_bytes(buffer.getvalue())
    else:
        path.write_bytes(pickle.dumps(record, protocol=2))


def cifar_batch(rng: np.random.Generator, n: int, label_keys: dict[str, int]) -> dict[bytes, Any]:
    record: dict[bytes, Any] = {b"batch_label": b"a batch", b"data":
                                rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    for key, classes in label_keys.items():
        record[key.encode()] = [int(v) for v in rng.integers(0, classes, n)]
    return record


def cifar10_folder(root: Path, python2: bool, n: int = 3) -> list[dict[bytes, Any]]:
    """cifar-10-batches-py under `root`: data_batch_1..5 and test_batch (n images each)."""
    rng = np.random.default_rng(7)
    folder = root / "cifar-10-batches-py"
    batches = []
    for name in (*disk.CIFAR10_TRAIN, "test_batch"):
        batches.append(cifar_batch(rng, n, {"labels": 10}))
        write_pickle(folder / name, batches[-1], python2)
    return batches


def cifar100_folder(root: Path, python2: bool) -> list[dict[bytes, Any]]:
    rng = np.random.default_rng(8)
    folder = root / "cifar-100-python"
    records = []
    for name, n in (("train", 7), ("test", 4)):
        records.append(cifar_batch(rng, n, {"fine_labels": 100, "coarse_labels": 20}))
        write_pickle(folder / name, records[-1], python2)
    return records


def images(data: np.ndarray) -> np.ndarray:
    """CIFAR rows (N, 3072) as the float32 images mrc must give: (N, 3, 32, 32) / 255."""
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255)


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A default search of one empty place, ./data under a fresh working directory."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv(disk.ENV_VAR, raising=False)
    monkeypatch.setattr(disk, "SEARCH", ("./data",))
    return work


# ---- MNIST and Fashion-MNIST -------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("dotted", [False, True], ids=["dashed", "dotted"])
def test_mnist_reads_a_folder_of_idx_files(tmp_path: Path, gz: bool, dotted: bool) -> None:
    written = idx_set(tmp_path / "digits", 0, gz, dotted=dotted)
    data = DATASETS.get("mnist").build(0, root=str(tmp_path / "digits"))
    assert data["classes"] == 10
    for key in ("x", "x_test"):
        assert data[key].dtype == np.float32 and data[key].shape == (len(written[key]), 1, 28, 28)
        np.testing.assert_array_equal(data[key][:, 0] * 255, written[key].astype(np.float32))
    for key in ("y", "y_test"):
        assert data[key].dtype == np.int64
        np.testing.assert_array_equal(data[key], written[key])


@pytest.mark.parametrize("given", ["ROOT", "ROOT/FashionMNIST", "ROOT/FashionMNIST/raw"])
def test_fashion_mnist_reads_torchvisions_layout(tmp_path: Path, given: str) -> None:
    written = idx_set(tmp_path / "FashionMNIST" / "raw", 1, gz=True)
    idx_set(tmp_path / "MNIST" / "raw", 2, gz=True)  # the other set beside it is not taken
    root = given.replace("ROOT", str(tmp_path))
    data = DATASETS.get("fashion_mnist").build(0, root=root)
    np.testing.assert_array_equal(data["y"], written["y"])
    np.testing.assert_array_equal(data["x_test"][:, 0] * 255, written["x_test"])
    digits = DATASETS.get("mnist").build(0, root=str(tmp_path))
    assert not np.array_equal(digits["y"], written["y"])


def test_the_test_split_becomes_validation(tmp_path: Path) -> None:
    written = idx_set(tmp_path / "fashion-mnist", 3, gz=True)
    bundle = load_data("fashion_mnist", {"root": str(tmp_path), "batch": 4, "val": 0.5}, 0)
    assert (bundle.train_size, bundle.val_size) == (12, 5)  # `val` is ignored
    assert bundle.in_shape == (1, 28, 28) and bundle.classes == 10
    np.testing.assert_array_equal(bundle.val_y.numpy(), written["y_test"])


def test_a_relative_root_is_taken_from_the_spec_directory(tmp_path: Path) -> None:
    written = idx_set(tmp_path / "specs" / "files", 4, gz=False)
    bundle = load_data("mnist", {"root": "files"}, 0, base_dir=tmp_path / "specs")
    np.testing.assert_array_equal(bundle.train_y.numpy(), written["y"])


def test_the_default_search_finds_a_set_in_mrc_data(tmp_path: Path, nowhere: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    written = idx_set(tmp_path / "second" / "FashionMNIST" / "raw", 5, gz=True)
    monkeypatch.setenv(disk.ENV_VAR, os.pathsep.join([str(tmp_path / "first"), str(tmp_path / "second")]))
    data = DATASETS.get("fashion_mnist").build(0)
    np.testing.assert_array_equal(data["y"], written["y"])
    idx_set(nowhere / "data" / "fashion-mnist", 6, gz=False)  # ./data comes after $MRC_DATA
    np.testing.assert_array_equal(DATASETS.get("fashion_mnist").build(0)["y"], written["y"])


def test_the_default_search_includes_debians_folder() -> None:
    assert Path("/usr/share/datasets/fashion-mnist") in disk.candidates(disk.FASHION, None)


def test_a_missing_set_says_where_mrc_looked_and_how_to_get_it(tmp_path: Path, nowhere: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setenv(disk.ENV_VAR, str(tmp_path / "mine"))
    with pytest.raises(DataError) as info:
        DATASETS.get("fashion_mnist").build(0)
    message = info.value.message
    assert "\n" not in message
    assert message.startswith("fashion_mnist: no Fashion-MNIST files found; looked in ")
    for folder in (tmp_path / "mine" / "fashion-mnist", tmp_path / "mine" / "FashionMNIST" / "raw",
                   nowhere / "data" / "fashion-mnist", nowhere / "data" / "fashion_mnist",
                   nowhere / "data" / "FashionMNIST" / "raw"):
        assert str(folder) in message
    assert "apt install dataset-fashion-mnist" in message and "torchvision" in message
    assert message.endswith("mrc downloads nothing")


def test_a_root_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"^cifar10: root {tmp_path / 'nope'} does not exist; "
                                        r"to get the data, run `torchvision\.datasets\.CIFAR10"):
        DATASETS.get("cifar10").build(0, root=str(tmp_path / "nope"))
    with pytest.raises(DataError) as info:
        DATASETS.get("mnist").build(0, root=str(tmp_path))
    for folder in (tmp_path, tmp_path / "raw", tmp_path / "mnist", tmp_path / "MNIST" / "raw"):
        assert f"{folder}," in info.value.message or f"{folder};" in info.value.message


def test_an_incomplete_idx_folder_names_the_missing_file(tmp_path: Path) -> None:
    idx_set(tmp_path, 0, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"holds train-images-idx3-ubyte but no "
                                        r"t10k-labels-idx1-ubyte\[\.gz\]$"):
        DATASETS.get("mnist").build(0, root=str(tmp_path))


def test_labels_that_do_not_match_the_images_are_refused(tmp_path: Path) -> None:
    idx_set(tmp_path, 0, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8), gz=False)
    with pytest.raises(DataError, match="one label for each of the 12 images"):
        DATASETS.get("mnist").build(0, root=str(tmp_path))


def test_check_explains_a_missing_data_root(tmp_path: Path) -> None:
    spec = tmp_path / "spec.mrs"
    spec.write_text("model mlp()\ndata cifar10(root=\"nothing here\", batch=32)\n"
                    "optimizer sgd(lr=0.1)\n")
    with pytest.raises(CompileError) as info:
        bind_spec(spec)  # what `mrc check` does
    (d,) = info.value.diagnostics
    assert d.message.startswith(f"cifar10: root {tmp_path / 'nothing here'} does not exist")
    assert d.span is not None and (d.span.line, d.span.col) == (2, 6)  # at `cifar10`


# ---- CIFAR ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("python2", [True, False], ids=["python2", "protocol2"])
@pytest.mark.parametrize("given", ["ROOT", "ROOT/cifar-10-batches-py"])
def test_cifar10_joins_the_five_batches(tmp_path: Path, python2: bool, given: str) -> None:
    batches = cifar10_folder(tmp_path, python2)
    data = DATASETS.get("cifar10").build(0, root=given.replace("ROOT", str(tmp_path)))
    assert data["classes"] == 10
    assert data["x"].dtype == np.float32 and data["x"].shape == (15, 3, 32, 32)
    np.testing.assert_array_equal(data["x"], images(np.concatenate([b[b"data"] for b in batches[:5]])))
    np.testing.assert_array_equal(data["y"], np.concatenate([b[b"labels"] for b in batches[:5]]))
    np.testing.assert_array_equal(data["x_test"], images(batches[5][b"data"]))
    np.testing.assert_array_equal(data["y_test"], batches[5][b"labels"])
    assert data["y"].dtype == np.int64


@pytest.mark.parametrize("python2", [True, False], ids=["python2", "protocol2"])
def test_cifar100_fine_and_coarse_labels(tmp_path: Path, python2: bool) -> None:
    train, test = cifar100_folder(tmp_path, python2)
    fine = DATASETS.get("cifar100").build(0, root=str(tmp_path))
    assert fine["classes"] == 100 and fine["x"].shape == (7, 3, 32, 32)
    np.testing.assert_array_equal(fine["x"], images(train[b"data"]))
    np.testing.assert_array_equal(fine["y"], train[b"fine_labels"])
    np.testing.assert_array_equal(fine["y_test"], test[b"fine_labels"])
    coarse = DATASETS.get("cifar100").build(0, root=str(tmp_path), labels="coarse")
    assert coarse["classes"] == 20
    np.testing.assert_array_equal(coarse["y"], train[b"coarse_labels"])
    bundle = load_data("cifar100", {"root": str(tmp_path), "labels": "coarse", "batch": 2}, 0)
    assert (bundle.train_size, bundle.val_size, bundle.classes) == (7, 4, 20)
    assert bundle.in_shape == (3, 32, 32)


def test_a_missing_cifar_batch_is_named(tmp_path: Path) -> None:
    cifar10_folder(tmp_path, python2=False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py: the batch file data_batch_4 is "
                                        r"missing$"):
        DATASETS.get("cifar10").build(0, root=str(tmp_path))


@pytest.mark.parametrize(("record", "message"), [
    ({b"labels": [1]}, r"has no `data` \(it has `labels`\)"),
    ({b"data": np.zeros((1, 3072), np.float32), b"labels": [1]},
     r"`data` must be unsigned bytes of shape \(N, 3072\), not float32 of shape \(1, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]},
     r"`labels` must be 2 integer labels, not int64 of shape \(1,\)"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [b"cat"]}, r"integer labels, not \|S3"),
    ([1, 2], "holds a list, not a dict of arrays"),
])
def test_a_malformed_cifar_batch_is_one_line(tmp_path: Path, record: Any, message: str) -> None:
    cifar10_folder(tmp_path, python2=False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(record, 2))
    with pytest.raises(DataError, match=message) as info:
        DATASETS.get("cifar10").build(0, root=str(tmp_path))
    assert info.value.message.startswith(str(tmp_path / "cifar-10-batches-py" / "data_batch_2"))


def test_a_truncated_pickle_is_one_line(tmp_path: Path) -> None:
    cifar10_folder(tmp_path, python2=True)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError, match=rf"^{batch}: cannot read as a pickle \("):
        DATASETS.get("cifar10").build(0, root=str(tmp_path))


# ---- the real Fashion-MNIST ------------------------------------------------------------------------

@pytest.mark.skipif(not REAL_FASHION.is_dir(),
                    reason="Fashion-MNIST is not installed (apt install dataset-fashion-mnist)")
def test_the_real_fashion_mnist(tmp_path: Path) -> None:
    spec = tmp_path / "fashion.mrs"
    spec.write_text("model mlp(hidden=[32])\ndata fashion_mnist(batch=128)\noptimizer sgd(lr=0.1)\n")
    bundle = bind_spec(spec).data
    assert (bundle.train_size, bundle.val_size) == (60000, 10000)
    assert bundle.in_shape == (1, 28, 28) and bundle.classes == 10
    assert bundle.train_x.dtype.is_floating_point
    assert float(bundle.train_x.min()) == 0.0 and float(bundle.train_x.max()) == 1.0
    # every class is equally frequent in both splits (6000 and 1000 each)
    assert bundle.train_y.bincount().tolist() == [6000] * 10
    assert bundle.val_y.bincount().tolist() == [1000] * 10
