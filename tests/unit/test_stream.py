"""Streaming (issue 21, deliverables 1–2): the batch sampler yields the in-memory order; a
DataLoader with workers gives the batches the device-tensor path gives; factories may return
Datasets, a (train, val) pair or DataLoaders; `image_folder` reads a folder of PNGs; a failure in
a user Dataset is one line naming the user's file:line; bad options are refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mrc.data import DataError, load_data
from mrc.data.stream import (
    EpochBatches,
    MemorySource,
    StreamError,
    StreamSource,
    feed,
)

CPU = torch.device("cpu")
AUGMENT = [{"kind": "random_crop", "size": 8, "padding": 1}, {"kind": "hflip", "p": 0.5},
           {"kind": "cutout", "size": 3}, {"kind": "normalize", "mean": [0.3], "std": [0.4]}]


def test_the_batch_sampler_yields_the_in_memory_order_from_the_resume_point() -> None:
    data = load_data("digits", {"batch": 50}, seed=4)
    sampler = EpochBatches(data.batch_indices)
    sampler.epoch, sampler.start = 2, 0
    got = list(sampler)
    assert [[i for _, i in b] for b in got] == [b.tolist() for b in data.batch_indices(2)]
    assert all(e == 2 for b in got for e, _ in b)
    sampler.start = 5
    assert len(sampler) == len(got) - 5 and list(sampler) == got[5:]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("augment", [None, AUGMENT], ids=["plain", "augmented"])
def test_streamed_batches_equal_the_in_memory_ones(workers: int, augment: list | None) -> None:
    options = {"shape": "image", "batch": 64, "augment": augment}
    memory = load_data("digits", options, seed=1)
    streamed = load_data("digits", {**options, "stream": True, "workers": workers}, seed=1)
    assert memory.stream is None and streamed.stream is not None
    mem = MemorySource(memory, memory.train_x, memory.train_y)
    src = StreamSource(streamed, CPU, torch.float32)
    for epoch, start in ((0, 0), (1, 17)):
        a, b = list(mem.epoch(epoch, start)), list(src.epoch(epoch, start))
        assert len(a) == len(b) == memory.steps_per_epoch() - start
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    src.close()


def test_starting_a_loader_leaves_torchs_generator_alone() -> None:
    data = load_data("digits", {"stream": True, "workers": 0}, seed=1)
    before = torch.get_rng_state()
    run = feed(data, CPU, torch.float32, 128)
    next(iter(run.train.epoch(0)))
    list(run.val_batches())
    assert torch.equal(before, torch.get_rng_state())


# ---- factories -------------------------------------------------------------------------------------

FACTORIES = '''
import torch
from torch.utils.data import DataLoader, Dataset


class Blobs(Dataset):
    def __init__(self, n, seed, bad=-1, classes=True):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.x = torch.randn(n, 1, 6, 6, generator=g) + self.y.view(-1, 1, 1, 1).float()
        self.bad = bad
        if classes:
            self.classes = ["a", "b", "c"]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if i == self.bad:
            raise ValueError(f"cannot read example {i}")
        return self.x[i], int(self.y[i])


class Nameless(Blobs):
    def __init__(self, n, seed):
        super().__init__(n, seed, classes=False)


def one(seed=0):
    return Blobs(100, seed)


def pair(seed=0):
    return Blobs(100, seed), Blobs(30, seed + 1)


def counted():
    return {"train": Nameless(100, 0), "val": Nameless(30, 1), "classes": 5}


def nameless():
    return Nameless(100, 0)


def broken():
    return Blobs(100, 0, bad=7)


def first_bad():
    return Blobs(100, 0, bad=0), Blobs(10, 1)


def loaders():
    return DataLoader(Blobs(100, 0), batch_size=16, shuffle=True), DataLoader(Blobs(30, 1), batch_size=16)
'''


@pytest.fixture()
def factories(tmp_path: Path) -> Path:
    (tmp_path / "sets.py").write_text(FACTORIES)
    return tmp_path


def test_a_factory_dataset_streams_with_the_usual_split(factories: Path) -> None:
    data = load_data("sets.py:one", {"val": 0.2, "batch": 16}, seed=3, base_dir=factories)
    assert data.streamed and data.train_x is None
    assert (data.train_size, data.val_size, data.in_shape, data.classes) == (80, 20, (1, 6, 6), 3)
    again = load_data("sets.py:one", {"val": 0.2, "batch": 16, "stream": False}, seed=3,
                      base_dir=factories)  # read into memory once: the same split
    assert not again.streamed and again.train_x is not None
    run = feed(data, CPU, torch.float32, 16)
    xs = torch.cat([x for x, _ in run.train.epoch(0)])
    assert torch.equal(xs, torch.cat([x for x, _ in again.epoch_batches(0)]))


def test_a_factory_pair_and_dict_give_train_and_validation(factories: Path) -> None:
    data = load_data("sets.py:pair", {}, seed=0, base_dir=factories)
    assert (data.train_size, data.val_size, data.classes) == (100, 30, 3)
    data = load_data("sets.py:counted", {}, seed=0, base_dir=factories)
    assert (data.train_size, data.val_size, data.classes) == (100, 30, 5)
    with pytest.raises(DataError, match="cannot tell the number of classes"):
        load_data("sets.py:nameless", {}, seed=0, base_dir=factories)


def test_factory_dataloaders_are_used_as_given(factories: Path) -> None:
    data = load_data("sets.py:loaders", {}, seed=0, base_dir=factories)
    assert data.loaders is not None and data.steps_per_epoch() == 7
    assert (data.in_shape, data.classes, data.batch_size) == ((1, 6, 6), 3, 16)
    run = feed(data, CPU, torch.float32, 16)
    assert len(list(run.train.epoch(0, 5))) == 2  # a resume skips the epoch's first batches
    assert sum(len(y) for _, y in run.val_batches()) == 30
    with pytest.raises(DataError, match="used as given"):
        load_data("sets.py:loaders", {"augment": [{"kind": "hflip", "p": 0.5}]}, seed=0,
                  base_dir=factories)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_error_in_a_user_dataset_is_one_line_at_the_users_line(factories: Path, workers: int) -> None:
    data = load_data("sets.py:broken", {"val": 0.0, "batch": 100, "workers": workers}, seed=0,
                     base_dir=factories)
    run = feed(data, CPU, torch.float32, 100)
    with pytest.raises(StreamError) as err:
        list(run.train.epoch(0))
    line = FACTORIES.splitlines().index('            raise ValueError(f"cannot read example {i}")') + 1
    assert str(err.value) == (f"sets.py:broken: example 7: {factories / 'sets.py'}:{line}: "
                              f"ValueError: cannot read example 7")
    run.close()


def test_a_dataset_that_fails_at_once_is_a_diagnostic_at_the_data_statement(factories: Path) -> None:
    from mrc.api import CompileError, compile_spec

    spec = factories / "s.mrs"
    spec.write_text('model mlp()\ndata "sets.py:first_bad"(batch=8)\noptimizer sgd(lr=0.1)\n')
    with pytest.raises(CompileError) as err:
        compile_spec(spec)
    [diag] = err.value.diagnostics
    assert diag.span.line == 2
    assert diag.message.startswith("sets.py:first_bad: example 0: ")
    line = FACTORIES.splitlines().index('            raise ValueError(f"cannot read example {i}")') + 1
    assert diag.message.endswith(f"sets.py:{line}: ValueError: cannot read example 0")


def test_loader_options_that_do_not_fit_are_refused_in_one_line() -> None:
    with pytest.raises(DataError, match="add `stream = true`"):
        load_data("digits", {"workers": 2}, seed=0)
    with pytest.raises(DataError, match="`persistent_workers` needs worker processes"):
        load_data("digits", {"stream": True, "persistent_workers": True}, seed=0)
    data = load_data("digits", {"stream": True, "workers": 2, "persistent_workers": True,
                                "prefetch": 4}, seed=0)
    assert data.stream is not None and data.stream.prefetch == 4


# ---- image folders -------------------------------------------------------------------------------

def write_images(root: Path, classes: dict[str, int], size: tuple[int, int] = (10, 12),
                 seed: int = 0) -> dict[str, list[np.ndarray]]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        out[name] = []
        for k in range(count):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{k}.png")
            out[name].append(pixels)
    (root / "notes.txt").write_text("not a class")
    return out


def test_an_image_folder_has_sorted_class_labels_and_decoded_pixels(tmp_path: Path) -> None:
    pixels = write_images(tmp_path / "pics", {"dog": 3, "cat": 4})
    data = load_data("image_folder", {"root": "pics", "size": [10, 12], "val": 0.0}, seed=0,
                     base_dir=tmp_path)
    assert data.streamed and (data.classes, data.in_shape, data.train_size) == (2, (3, 10, 12), 7)
    items = [data.train_set[i] for i in range(7)]
    assert [y for _, y in items] == [0, 0, 0, 0, 1, 1, 1]  # cat < dog
    want = torch.from_numpy(pixels["dog"][1].transpose(2, 0, 1).astype(np.float32) / 255)
    assert torch.equal(items[5][0], want)  # no resize: the decoded pixels / 255


def test_an_image_folder_resizes_crops_and_uses_a_val_sibling(tmp_path: Path) -> None:
    write_images(tmp_path / "set" / "train", {"a": 2, "b": 2}, size=(16, 24))
    write_images(tmp_path / "set" / "val", {"b": 1}, size=(16, 24), seed=1)
    data = load_data("image_folder", {"root": str(tmp_path / "set"), "size": 8, "mode": "gray"},
                     seed=0)
    assert (data.train_size, data.val_size, data.in_shape) == (4, 1, (1, 8, 8))
    x, y = data.val_set[0]
    assert x.shape == (1, 8, 8) and y == 1 and 0 <= float(x.min()) and float(x.max()) <= 1
    same = load_data("image_folder", {"root": str(tmp_path / "set" / "train"), "size": 8},
                     seed=0)  # the root named train finds its sibling
    assert same.val_size == 1
    run = feed(data, CPU, torch.float32, 4)
    assert [tuple(x.shape) for x, _ in run.train.epoch(0)] == [(4, 1, 8, 8)]


def test_a_missing_image_folder_says_where_mrc_looked(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_data("image_folder", {"root": "nowhere", "size": 8}, seed=0, base_dir=tmp_path)
    assert str(err.value) == (f"image_folder: folder {tmp_path / 'nowhere'} not found (looked in "
                              f"{(tmp_path / 'nowhere').resolve()}); give the folder that holds "
                              f"one subfolder of images per class")


def test_persistent_workers_serve_every_epoch_and_a_broken_off_one() -> None:
    memory = load_data("digits", {"batch": 64, "augment": None}, seed=5)
    streamed = load_data("digits", {"batch": 64, "stream": True, "workers": 2,
                                    "persistent_workers": True}, seed=5)
    mem = MemorySource(memory, memory.train_x, memory.train_y)
    src = StreamSource(streamed, CPU, torch.float32)
    first = src.epoch(0)
    next(first), next(first)  # broken off mid-epoch (a stop, or an epoch's end by steps)
    for epoch, start in ((1, 0), (2, 9), (3, 0)):
        a, b = list(mem.epoch(epoch, start)), list(src.epoch(epoch, start))
        assert len(a) == len(b) and all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b, strict=True))
    src.close()
