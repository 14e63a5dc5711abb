"""Built-in data sets, NPZ/IDX files, user factories, and the deterministic batch loader."""

from __future__ import annotations

import gzip
import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mrc.data import DATA_OPTIONS, DATASETS, DataBundle, DataError, load_data, read_idx
from mrc.data.builtin import level_thresholds, peaks_function, wavy_bowl

# ---- helpers ----------------------------------------------------------------------------------

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """A minimal IDX writer, independent of the reader under test."""
    a = np.asarray(array)
    header = bytes([0, 0, IDX_CODES[a.dtype], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    raw = header + a.astype(a.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def load(target: str, seed: int = 0, base: Path | str = ".", **kwargs) -> DataBundle:
    return load_data(target, kwargs, seed, Path(base))


def error(target: str, base: Path | str = ".", **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load(target, base=base, **kwargs)
    message = info.value.message
    assert "\n" not in message and message == str(info.value)
    return message


def labelled_points(n: int, classes: int) -> dict[str, np.ndarray]:
    """Examples whose single feature is their own label, so relabelling can be checked."""
    y = np.arange(n) % classes
    return {"x": y[:, None].astype(np.float32), "y": y}


# ---- registry and options ---------------------------------------------------------------------

def test_registry_names_and_options_do_not_clash():
    assert DATASETS.names() == ["cifar10", "cifar100", "digits", "fashion_mnist", "image_folder",
                                "levelsets", "linear", "mnist", "mnist1d", "peaks", "spirals", "surface",
                                "synthetic"]
    options = {p.name for p in DATA_OPTIONS}
    assert options == {"batch", "val", "keep", "shuffle", "normalize", "drop_last", "limit",
                       "val_limit", "augment", "stream", "workers", "pin_memory", "persistent_workers",
                       "prefetch"}
    for entry in DATASETS:
        # the checker merges a set's own params with DATA_OPTIONS: a shared name would be ambiguous
        assert not options & {p.name for p in entry.params}, entry.name
        assert entry.doc
        for p in entry.params:
            assert p.doc
            if entry.name == "image_folder":  # a folder and an image size have no default
                continue
            assert not p.required and p.validate(p.default)[1] is None, (entry.name, p.name)
    for p in DATA_OPTIONS:
        assert p.validate(p.default)[1] is None, p.name


# ---- built-ins --------------------------------------------------------------------------------

GENERATED = [
    ("levelsets", {"samples": 300}, (2,), 5),
    ("levelsets", {"samples": 300, "classes": 3}, (2,), 3),
    ("peaks", {"samples": 300}, (2,), 5),
    ("spirals", {"samples": 300, "classes": 4, "noise": 0.05}, (2,), 4),
    ("synthetic", {"shape": [2, 5], "classes": 3, "samples": 40}, (2, 5), 3),
]


@pytest.mark.parametrize(("name", "kwargs", "shape", "classes"), GENERATED)
def test_generated_sets_shapes_dtypes_and_determinism(name, kwargs, shape, classes):
    build = DATASETS.get(name).build
    a, b, other = build(1, **kwargs), build(1, **kwargs), build(2, **kwargs)
    n = kwargs["samples"]
    assert a["x"].shape == (n, *shape) and a["x"].dtype == np.float32
    assert a["y"].shape == (n,) and a["y"].dtype == np.int64
    assert a["y"].min() >= 0 and a["y"].max() == classes - 1
    assert "x_test" not in a
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["y"], b["y"])
    assert not np.array_equal(a["x"], other["x"])


def test_spirals_balanced_arms():
    data = DATASETS.get("spirals").build(0, samples=2000, classes=8)
    assert np.bincount(data["y"]).tolist() == [250] * 8


def test_levelsets_is_the_seed_problem():
    bundle = load("levelsets", val=0.0)
    x, y = bundle.train_x, bundle.train_y
    assert bundle.train_size == 5000 and bundle.classes == 5 and bundle.in_shape == (2,)
    assert float(x.min()) >= -3.0 and float(x.max()) <= 3.0
    assert float(x.min()) < -2.9 and float(x.max()) > 2.9  # fills the square
    counts = torch.bincount(y, minlength=5)
    assert int(counts.min()) > 0.17 * 5000 and int(counts.max()) < 0.23 * 5000


@pytest.mark.parametrize(("name", "field"), [("levelsets", wavy_bowl), ("peaks", peaks_function)])
def test_labels_are_level_sets_of_the_documented_function(name, field):
    data = DATASETS.get(name).build(3, samples=2000, classes=4)
    f = field(data["x"][:, 0].astype(np.float64), data["x"][:, 1].astype(np.float64))
    for k in range(3):  # class k lies wholly below class k+1
        assert f[data["y"] == k].max() <= f[data["y"] == k + 1].min() + 1e-5
    # the thresholds are fixed by the function, not by the sample
    cuts = level_thresholds(field, 4)
    assert len(cuts) == 3 and np.all(np.diff(cuts) > 0)
    np.testing.assert_array_equal(np.searchsorted(cuts, f, side="right")[:50], data["y"][:50])


def test_digits_flat_and_image():
    flat = DATASETS.get("digits").build(0)
    image = DATASETS.get("digits").build(0, shape="image")
    assert flat["x"].shape == (1797, 64) and image["x"].shape == (1797, 1, 8, 8)
    assert flat["x"].dtype == np.float32 and flat["x"].min() == 0.0 and flat["x"].max() == 1.0
    assert set(np.unique(flat["y"]).tolist()) == set(range(10))
    np.testing.assert_array_equal(flat["x"], image["x"].reshape(1797, 64))
    bundle = load("digits", shape="image", seed=5)
    assert bundle.in_shape == (1, 8, 8) and bundle.classes == 10
    assert (bundle.train_size, bundle.val_size) == (1438, 359)


def test_mnist1d_is_generated_locally_with_its_test_split():
    np.random.seed(123)
    random.seed(123)
    before = (np.random.random(), random.random())
    np.random.seed(123)
    random.seed(123)
    a = DATASETS.get("mnist1d").build(7, samples=200)
    assert (np.random.random(), random.random()) == before  # global generators untouched
    b = DATASETS.get("mnist1d").build(7, samples=200)
    c = DATASETS.get("mnist1d").build(8, samples=200)
    assert a["x"].shape == (160, 40) and a["x_test"].shape == (40, 40)
    assert a["x"].dtype == np.float32 and a["y"].dtype == np.int64
    assert set(np.unique(a["y"]).tolist()) <= set(range(10))
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], c["x"])


# ---- validation split, class subsets, limit, normalisation ------------------------------------

def test_random_validation_split_sizes_and_disjointness():
    for val, n_val in [(0.2, 20), (0.0, 0), (0.35, 35)]:
        bundle = load("levelsets", samples=100, val=val, seed=4)
        assert (bundle.train_size, bundle.val_size) == (100 - n_val, n_val)
        together = torch.cat([bundle.train_x, bundle.val_x])
        assert torch.unique(together, dim=0).shape[0] == 100  # a partition of the 100 points
    a, b = load("levelsets", samples=100, seed=4), load("levelsets", samples=100, seed=4)
    assert torch.equal(a.val_x, b.val_x)


def test_predefined_test_split_is_the_validation_set(tmp_path):
    rng = np.random.default_rng(0)
    path = write_npz(tmp_path / "d.npz", x=rng.random((30, 3)), y=np.arange(30) % 3,
                     x_test=rng.random((7, 3)), y_test=np.arange(7) % 3)
    bundle = load("d.npz", base=tmp_path, val=0.5)  # `val` is ignored: the test split is used
    assert (bundle.train_size, bundle.val_size) == (30, 7)
    with np.load(path) as raw:
        assert torch.equal(bundle.val_x, torch.tensor(raw["x_test"], dtype=torch.float32))


def test_keep_relabels_in_the_given_order(tmp_path):
    write_npz(tmp_path / "d.npz", **labelled_points(60, 6))
    bundle = load("d.npz", base=tmp_path, keep=[4, 1, 2], val=0.25)
    assert bundle.classes == 3
    for x, y in [(bundle.train_x, bundle.train_y), (bundle.val_x, bundle.val_y)]:
        original = torch.tensor([4.0, 1.0, 2.0])[y]
        assert torch.equal(x[:, 0], original)
    assert bundle.train_size + bundle.val_size == 30


def test_keep_applies_to_the_test_split_and_builtins(tmp_path):
    write_npz(tmp_path / "d.npz", **labelled_points(40, 4),
              x_test=np.array([[0.0], [3.0], [2.0]], dtype=np.float32), y_test=np.array([0, 3, 2]))
    bundle = load("d.npz", base=tmp_path, keep=[3, 0])
    assert bundle.val_y.tolist() == [1, 0] and bundle.val_x[:, 0].tolist() == [0.0, 3.0]
    digits = load("digits", keep=[9, 8], val=0.0)
    assert digits.classes == 2 and set(digits.train_y.tolist()) == {0, 1}
    assert digits.train_size == int((DATASETS.get("digits").build(0)["y"] >= 8).sum())


def test_limit_keeps_a_seeded_subset_and_leaves_validation_alone():
    full = load("levelsets", samples=200, seed=3)
    small = load("levelsets", samples=200, seed=3, limit=25)
    assert small.train_size == 25 and torch.equal(small.val_x, full.val_x)
    rows = {tuple(r) for r in full.train_x.tolist()}
    assert all(tuple(r) in rows for r in small.train_x.tolist())
    assert load("levelsets", samples=200, seed=3, limit=10_000).train_size == full.train_size


def test_val_limit_keeps_the_same_validation_subset_for_every_seed(tmp_path):
    rng = np.random.default_rng(0)
    x, x_test = rng.normal(size=(40, 3)).astype(np.float32), rng.normal(size=(30, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 3, x_test=x_test, y_test=np.arange(30) % 3)
    full = load("d.npz", base=tmp_path)
    a = load("d.npz", base=tmp_path, seed=1, val_limit=12)
    b = load("d.npz", base=tmp_path, seed=2, val_limit=12)
    assert a.val_size == 12 and torch.equal(a.val_x, b.val_x) and torch.equal(a.val_y, b.val_y)
    assert torch.equal(a.train_x, full.train_x)  # training is untouched
    rows = {tuple(r) for r in full.val_x.tolist()}
    assert all(tuple(r) in rows for r in a.val_x.tolist())
    assert load("d.npz", base=tmp_path, val_limit=100).val_size == 30


def test_normalize_uses_training_statistics_only(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 3.0, size=(50, 2, 3)).astype(np.float32)
    x[:, 1, 2] = 7.0  # a constant feature is left centred, not divided by zero
    x_test = rng.normal(-20.0, 0.5, size=(10, 2, 3)).astype(np.float32)
    write_npz(tmp_path / "d.npz", x=x, y=np.arange(50) % 2, x_test=x_test, y_test=np.zeros(10))
    bundle = load("d.npz", base=tmp_path, normalize=True)
    mean = torch.tensor(x).mean(0)
    std = torch.tensor(x).std(0, unbiased=False)
    std[1, 2] = 1.0
    torch.testing.assert_close(bundle.mean, mean)
    torch.testing.assert_close(bundle.train_x.mean(0), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(bundle.val_x, (torch.tensor(x_test) - mean) / std)
    assert torch.isfinite(bundle.train_x).all()
    plain = load("d.npz", base=tmp_path)
    assert plain.mean is None and torch.equal(plain.train_x, torch.tensor(x))


# ---- batching ---------------------------------------------------------------------------------

def test_batch_indices_cover_every_index_once_per_epoch():
    bundle = load("levelsets", samples=250, val=0.0, batch=32, seed=9)
    assert bundle.steps_per_epoch() == 8
    first = bundle.batch_indices(0)
    assert [len(b) for b in first] == [32] * 7 + [26]
    assert sorted(torch.cat(first).tolist()) == list(range(250))
    assert all(torch.equal(a, b) for a, b in zip(first, bundle.batch_indices(0), strict=True))
    second = bundle.batch_indices(1)
    assert sorted(torch.cat(second).tolist()) == list(range(250))
    assert not torch.equal(torch.cat(first), torch.cat(second))
    other_seed = load("levelsets", samples=250, val=0.0, batch=32, seed=10)
    assert not torch.equal(torch.cat(other_seed.batch_indices(0)), torch.cat(first))


def test_batches_are_a_pure_function_of_seed_and_epoch():
    """A resumed run (a fresh bundle, started mid-epoch) sees what an uninterrupted run saw."""
    run = load("levelsets", samples=100, batch=16, seed=2)
    seen = [run.batch(e, i) for e in range(3) for i in range(run.steps_per_epoch())]
    resumed = load("levelsets", samples=100, batch=16, seed=2)
    tail = list(resumed.epoch_batches(1, start=2)) + list(resumed.epoch_batches(2))
    assert len(tail) == len(seen) - run.steps_per_epoch() - 2
    for (xa, ya), (xb, yb) in zip(seen[run.steps_per_epoch() + 2:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x, y = run.batch(2, 1)
    index = run.batch_indices(2)[1]
    assert torch.equal(x, run.train_x[index]) and torch.equal(y, run.train_y[index])
    with pytest.raises(IndexError):
        run.batch(0, run.steps_per_epoch())


def test_drop_last_and_no_shuffle():
    bundle = load("levelsets", samples=100, val=0.0, batch=30, drop_last=True)
    assert bundle.steps_per_epoch() == 3
    assert [len(b) for b in bundle.batch_indices(4)] == [30, 30, 30]
    ordered = load("levelsets", samples=100, val=0.0, batch=30, shuffle=False)
    assert ordered.steps_per_epoch() == 4
    assert torch.equal(torch.cat(ordered.batch_indices(3)), torch.arange(100))


def test_val_batches_and_to_device():
    bundle = load("levelsets", samples=100, val=0.3, batch=8)
    chunks = list(bundle.val_batches(7))
    assert [len(y) for _, y in chunks] == [7, 7, 7, 7, 2]
    assert torch.equal(torch.cat([x for x, _ in chunks]), bundle.val_x)
    assert len(list(bundle.val_batches())) == 4
    moved = bundle.to("meta")
    assert moved.device.type == "meta" and moved.train_x.shape == bundle.train_x.shape
    assert bundle.device.type == "cpu"
    assert [t.tolist() for t in moved.batch_indices(1)] == \
        [t.tolist() for t in bundle.batch_indices(1)]
    for t in (bundle.train_x, bundle.train_y, bundle.val_x, bundle.val_y):
        assert t.is_contiguous()
    assert bundle.train_x.dtype == torch.float32 and bundle.train_y.dtype == torch.int64


# ---- files ------------------------------------------------------------------------------------

def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.random((20, 4)), rng.integers(0, 3, 20).astype(np.int32)
    write_npz(tmp_path / "d.npz", x=x, y=y, extra=np.zeros(2))  # extra arrays are ignored
    bundle = load(str(tmp_path / "d.npz"), val=0.0, shuffle=False)  # an absolute path
    assert torch.equal(bundle.train_x, torch.tensor(x, dtype=torch.float32))
    assert torch.equal(bundle.train_y, torch.tensor(y, dtype=torch.int64))
    assert bundle.name == str(tmp_path / "d.npz") and bundle.classes == int(y.max()) + 1


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(12, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=12, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    bundle = load(f"train-images-idx3-ubyte{suffix}", base=tmp_path, val=0.0, shuffle=False)
    assert bundle.in_shape == (1, 5, 4)
    expected = torch.tensor(images, dtype=torch.float32)[:, None] / 255.0
    assert torch.equal(bundle.train_x, expected)
    assert torch.equal(bundle.train_y, torch.tensor(labels, dtype=torch.int64))


def test_idx_test_pair_and_other_types(tmp_path):
    feats = np.arange(24, dtype=np.float32).reshape(6, 4) - 3.5
    write_idx(tmp_path / "train.images.idx", feats)
    write_idx(tmp_path / "train.labels.idx", np.array([0, 1, 2, 0, 1, 2], dtype=np.int32))
    write_idx(tmp_path / "t10k.images.idx", feats[:2] * 2)
    write_idx(tmp_path / "t10k.labels.idx", np.array([2, 2], dtype=np.int32))
    bundle = load("train.images.idx", base=tmp_path)
    assert (bundle.train_size, bundle.val_size) == (6, 2)  # t10k files are the validation set
    assert torch.equal(bundle.val_x, torch.tensor(feats[:2] * 2))
    for dtype in (np.int8, np.int16, np.float64):
        arr = (np.arange(10) - 5).astype(dtype).reshape(2, 5)
        np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.idx", arr)), arr)


# ---- user factories ---------------------------------------------------------------------------

def test_factory_from_file_gets_kwargs_and_seed(tmp_path):
    (tmp_path / "make.py").write_text(
        "import numpy as np\n"
        "def points(n=10, seed=None):\n"
        "    rng = np.random.default_rng(seed)\n"
        "    return {'x': rng.random((n, 3)), 'y': np.arange(n) % 2}\n"
        "def pair(n=4):\n"
        "    return np.ones((n, 2)), [0, 1] * (n // 2)\n")
    a = load("make.py:points", base=tmp_path, seed=1, n=20, val=0.25)
    b = load("make.py:points", base=tmp_path, seed=1, n=20, val=0.25)
    c = load("make.py:points", base=tmp_path, seed=2, n=20, val=0.25)
    assert (a.train_size, a.val_size, a.in_shape, a.classes) == (15, 5, (3,), 2)
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, c.train_x)
    pair = load("make.py:pair", base=tmp_path, n=6, val=0.0)
    assert pair.train_size == 6 and pair.name == "make.py:pair"


def test_factory_from_module(tmp_path, monkeypatch):
    package = tmp_path / "mrc_test_datapkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sets.py").write_text(
        "import torch\n"
        "def make():\n"
        "    return {'x': torch.zeros(8, 2), 'y': torch.arange(8) % 4, 'classes': 5}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    bundle = load("mrc_test_datapkg.sets:make", val=0.0)
    assert bundle.train_size == 8 and bundle.classes == 5
    sys.modules.pop("mrc_test_datapkg.sets", None)
    sys.modules.pop("mrc_test_datapkg", None)


# ---- errors -----------------------------------------------------------------------------------

def test_missing_files(tmp_path):
    assert "not found" in error("nope.npz", base=tmp_path)
    assert "not found" in error("nope-images-idx3-ubyte", base=tmp_path)
    assert "not found" in error("missing/file.csv", base=tmp_path)
    assert "did you mean `digits`" in error("digts")
    assert "not found" in error("nofile.py:make", base=tmp_path)


def test_corrupt_files(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"this is not a zip archive")
    assert "cannot read" in error("bad.npz", base=tmp_path)
    (tmp_path / "bad-images-idx3-ubyte").write_bytes(b"\x08\x03\x00\x00garbage")
    (tmp_path / "bad-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    assert "bad magic number" in error("bad-images-idx3-ubyte", base=tmp_path)
    write_idx(tmp_path / "short-images-idx3-ubyte", np.zeros((4, 2, 2), dtype=np.uint8))
    raw = (tmp_path / "short-images-idx3-ubyte").read_bytes()
    (tmp_path / "short-images-idx3-ubyte").write_bytes(raw[:-3])
    write_idx(tmp_path / "short-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    assert "need 16" in error("short-images-idx3-ubyte", base=tmp_path)
    (tmp_path / "gz-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 20)
    assert "cannot read" in error("gz-images-idx3-ubyte.gz", base=tmp_path)
    (tmp_path / "data.csv").write_text("1,2\n")
    assert "unknown data file type" in error("data.csv", base=tmp_path)


def test_idx_labels_missing_or_unnamed(tmp_path):
    write_idx(tmp_path / "lone-images-idx3-ubyte", np.zeros((4, 2, 2), dtype=np.uint8))
    assert "lone-labels-idx1-ubyte not found" in error("lone-images-idx3-ubyte", base=tmp_path)
    write_idx(tmp_path / "pictures.idx", np.zeros((4, 2, 2), dtype=np.uint8))
    assert "cannot tell where its labels are" in error("pictures.idx", base=tmp_path)


def test_wrong_keys_and_lengths(tmp_path):
    write_npz(tmp_path / "keys.npz", inputs=np.zeros((3, 2)), y=np.zeros(3))
    assert "needs arrays `x` and `y`" in error("keys.npz", base=tmp_path)
    write_npz(tmp_path / "half.npz", x=np.zeros((3, 2)), y=np.zeros(3), x_test=np.zeros((1, 2)))
    assert "`x_test` but not `y_test`" in error("half.npz", base=tmp_path)
    write_npz(tmp_path / "len.npz", x=np.zeros((3, 2)), y=np.zeros(4))
    assert "3 examples but `y` has 4" in error("len.npz", base=tmp_path)
    write_npz(tmp_path / "tlen.npz", x=np.zeros((3, 2)), y=np.zeros(3), x_test=np.zeros((2, 2)),
              y_test=np.zeros(1))
    assert "`x_test` has 2 examples" in error("tlen.npz", base=tmp_path)
    write_npz(tmp_path / "shape.npz", x=np.zeros((3, 2)), y=np.zeros(3), x_test=np.zeros((2, 5)),
              y_test=np.zeros(2))
    assert "shape (5,)" in error("shape.npz", base=tmp_path)
    write_npz(tmp_path / "neg.npz", x=np.zeros((3, 2)), y=np.array([0, -1, 1]))
    assert "negative label" in error("neg.npz", base=tmp_path)
    write_npz(tmp_path / "frac.npz", x=np.zeros((3, 2)), y=np.array([0.0, 0.5, 1.0]))
    assert "integer class labels" in error("frac.npz", base=tmp_path)
    write_npz(tmp_path / "ok.npz", x=np.zeros((3, 2)), y=np.zeros(3))
    assert "takes only the data options" in error("ok.npz", base=tmp_path, samples=3)
    assert "no parameter `sample`; did you mean `samples`" in error("levelsets", sample=3)


def test_class_subset_errors(tmp_path):
    write_npz(tmp_path / "d.npz", **labelled_points(20, 4))
    assert "classes 7, 9 not present" in error("d.npz", base=tmp_path, keep=[1, 7, 9])
    assert "labels are 0..3" in error("d.npz", base=tmp_path, keep=[7])
    assert "more than once" in error("d.npz", base=tmp_path, keep=[1, 2, 1])
    assert "`keep` is empty" in error("d.npz", base=tmp_path, keep=[])


def test_empty_training_set_errors(tmp_path):
    write_npz(tmp_path / "one.npz", x=np.zeros((1, 2)), y=np.zeros(1))
    assert "no training examples" in error("one.npz", base=tmp_path, val=0.9)
    write_npz(tmp_path / "empty.npz", x=np.zeros((0, 2)), y=np.zeros(0, dtype=np.int64))
    assert "no training examples" in error("empty.npz", base=tmp_path)
    assert "leaves no batch" in error("levelsets", samples=10, val=0.0, batch=64,
                                      drop_last=True)


def test_factory_errors(tmp_path):
    (tmp_path / "bad.py").write_text(
        "def boom():\n    raise RuntimeError('no data today')\n"
        "def scalar():\n    return 3\n"
        "def short():\n    return {'x': [[1.0], [2.0]]}\n")
    assert "RuntimeError: no data today" in error("bad.py:boom", base=tmp_path)
    assert "returned a int" in error("bad.py:scalar", base=tmp_path)
    assert "needs `x` and `y`" in error("bad.py:short", base=tmp_path)
    assert "no attribute `nothing`" in error("bad.py:nothing", base=tmp_path)


# ---- bad values: caught when the data is built, named by array and first index ----------------

def test_non_finite_inputs_name_the_file_array_and_index(tmp_path):
    x = np.zeros((6, 3), dtype=np.float32)
    x[4, 2] = np.nan
    write_npz(tmp_path / "nan.npz", x=x, y=np.zeros(6, dtype=np.int64))
    message = error("nan.npz", base=tmp_path)
    assert message.startswith("nan.npz: `x` has a non-finite value (nan) at index [4, 2]"), message
    x[4, 2], x[1, 0] = 0.0, -np.inf
    write_npz(tmp_path / "inf.npz", x=np.zeros((2, 3)), y=np.zeros(2), x_test=x,
              y_test=np.zeros(6))
    assert "`x_test` has a non-finite value (-inf) at index [1, 0]" in error("inf.npz", base=tmp_path)
    big = np.zeros((3, 2))
    big[2, 1] = 1e300  # finite in float64, inf once stored as float32
    write_npz(tmp_path / "big.npz", x=big, y=np.zeros(3))
    assert "the value 1e+300, beyond float32's range, at index [2, 1]" in error("big.npz", base=tmp_path)


def test_non_finite_inputs_in_idx_files_and_factories(tmp_path):
    feats = np.ones((4, 2, 2), dtype=np.float32)
    feats[3, 1, 0] = np.nan
    write_idx(tmp_path / "train-images-idx3-ubyte", feats)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    assert "`x` has a non-finite value (nan) at index [3, 0, 1, 0]" in error(
        "train-images-idx3-ubyte", base=tmp_path)  # 3-D images get a channel axis
    (tmp_path / "make.py").write_text(
        "import torch\n"
        "def make():\n"
        "    x = torch.zeros(5, 2)\n"
        "    x[2, 1] = float('nan')\n"
        "    return x, torch.zeros(5, dtype=torch.int64)\n")
    assert error("make.py:make", base=tmp_path).startswith(
        "make.py:make: `x` has a non-finite value (nan) at index [2, 1]")


def test_labels_name_the_bad_label_and_its_index(tmp_path):
    y = np.zeros(5, dtype=np.int64)
    y[3] = 10**12
    write_npz(tmp_path / "huge.npz", x=np.zeros((5, 2)), y=y)
    message = error("huge.npz", base=tmp_path)
    assert "`y` has label 1000000000000 at index 3, which would make 1000000000001 classes" in message
    write_npz(tmp_path / "huge_test.npz", x=np.zeros((2, 2)), y=np.zeros(2), x_test=np.zeros((5, 2)),
              y_test=y)
    assert "`y_test` has label 1000000000000 at index 3" in error("huge_test.npz", base=tmp_path)
    write_npz(tmp_path / "neg.npz", x=np.zeros((3, 2)), y=np.array([0, 1, -2]))
    assert "negative label -2 at index 2" in error("neg.npz", base=tmp_path)
    write_npz(tmp_path / "frac.npz", x=np.zeros((3, 2)), y=np.array([0.0, 1.0, 1.5]))
    assert "integer class labels, but has 1.5 at index 2" in error("frac.npz", base=tmp_path)
    write_npz(tmp_path / "nan.npz", x=np.zeros((3, 2)), y=np.array([0.0, np.nan, 1.0]))
    assert "integer class labels, but has nan at index 1" in error("nan.npz", base=tmp_path)
    write_npz(tmp_path / "float_huge.npz", x=np.zeros((2, 2)), y=np.array([0.0, 1e20]))
    assert "but has 1e+20 at index 1" in error("float_huge.npz", base=tmp_path)  # not int64 garbage
    write_npz(tmp_path / "u64.npz", x=np.zeros((2, 2)), y=np.array([0, 2**64 - 1], dtype=np.uint64))
    assert "beyond int64's range" in error("u64.npz", base=tmp_path)  # not a "negative" label


def test_a_stated_class_count_allows_many_classes_and_bounds_the_labels(tmp_path):
    y = np.array([0, 1, 200_000])
    write_npz(tmp_path / "many.npz", x=np.zeros((3, 2)), y=y, classes=np.array(300_000))
    assert load("many.npz", base=tmp_path).classes == 300_000
    write_npz(tmp_path / "few.npz", x=np.zeros((3, 2)), y=y, classes=np.array(10))
    assert "`y` has label 200000 at index 2, out of range for 10 classes" in error(
        "few.npz", base=tmp_path)
    write_npz(tmp_path / "zero.npz", x=np.zeros((3, 2)), y=np.zeros(3), classes=np.array(0))
    assert "`classes` must be a positive whole number, not 0" in error("zero.npz", base=tmp_path)
    write_npz(tmp_path / "plenty.npz", x=np.zeros((3, 2)), y=np.array([0, 1, 99_999]))
    assert load("plenty.npz", base=tmp_path).classes == 100_000  # the inferred limit itself


def test_idx_labels_and_factory_labels_are_validated(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 2_000_000, 1], dtype=np.int32))
    assert "`y` has label 2000000 at index 1, which would make" in error(
        "train-images-idx3-ubyte", base=tmp_path)
    (tmp_path / "make.py").write_text(
        "import numpy as np\n"
        "def huge():\n"
        "    return np.zeros((4, 2)), np.array([0, 1, 10**12, 2])\n"
        "def stated():\n"
        "    return {'x': np.zeros((4, 2)), 'y': np.array([0, 1, 5, 2]), 'classes': 3}\n")
    assert "`y` has label 1000000000000 at index 2" in error("make.py:huge", base=tmp_path)
    assert "`y` has label 5 at index 2, out of range for 3 classes" in error(
        "make.py:stated", base=tmp_path)
