"""Per-sample augmentation (issue 21, deliverable 3): draws are a pure function of (seed, epoch,
index); each transform matches a per-sample reference written from its definition; the batched
path equals the one-sample-at-a-time path; evaluation sees only the deterministic part; the
checker and the loader report bad transforms at their spans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrc.data import load_data
from mrc.data.augment import (
    AugmentItemError,
    Cutout,
    HFlip,
    Normalize,
    RandomCrop,
    _mix,
    bernoulli,
    draw,
    draws,
    make_augment,
    uniform_int,
)
from mrc.data.evalsets import load_eval

SEED, EPOCH = 11, 3


def images(n: int = 24, c: int = 2, h: int = 7, w: int = 9) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))


# ---- the counter-based draws --------------------------------------------------------------------

def test_the_hash_is_the_same_on_python_ints_and_tensors_and_is_a_bijection_on_a_sample() -> None:
    values = [0, 1, 2, 12345, 2**31, 2**32 - 1]
    assert [_mix(v) for v in values] == _mix(torch.tensor(values)).tolist()
    many = _mix(torch.arange(200_000))
    assert len(set(many.tolist())) == 200_000  # no collisions: lowbias32 is a bijection
    assert int(many.min()) >= 0 and int(many.max()) < 2**32


def test_draws_are_a_pure_function_of_seed_epoch_index_and_stream() -> None:
    index = torch.arange(1000)
    a = draws(SEED, EPOCH, index, 5)
    assert torch.equal(a, draws(SEED, EPOCH, index, 5))
    assert [draw(SEED, EPOCH, i, 5) for i in range(50)] == a[:50].tolist()
    assert draw(2**40 + 3, 7, 2**33 + 1, 9) == int(draws(2**40 + 3, 7, torch.tensor([2**33 + 1]), 9)[0])
    assert torch.equal(a[torch.tensor([7, 3])], draws(SEED, EPOCH, torch.tensor([7, 3]), 5))
    for other in (draws(SEED + 1, EPOCH, index, 5), draws(SEED, EPOCH + 1, index, 5),
                  draws(SEED, EPOCH, index, 6), draws(SEED, EPOCH, index + 1000, 5)):
        assert (other != a).float().mean() > 0.99
    # roughly uniform: each of 8 bins within 10 % of its share, coin flips near a half
    counts = torch.bincount(uniform_int(draws(SEED, EPOCH, torch.arange(80_000), 1), 8))
    assert counts.min() > 9000 and counts.max() < 11000
    assert abs(float(bernoulli(draws(SEED, 0, torch.arange(80_000), 2), 0.3).float().mean()) - 0.3) < 0.01


# ---- each transform against a per-sample reference ---------------------------------------------

def test_random_crop_is_pad_then_slice_at_the_drawn_offset() -> None:
    x, index = images(), torch.arange(24) * 5 + 2
    crop = RandomCrop(size=6, padding=2, stream=1)
    got = crop.train(x, index, EPOCH, SEED)
    assert got.shape == (24, 2, 6, 6)
    h, w = 7 + 4, 9 + 4
    oy = uniform_int(crop._draw(SEED, EPOCH, index, 0), h - 6 + 1)
    ox = uniform_int(crop._draw(SEED, EPOCH, index, 1), w - 6 + 1)
    offsets = set()
    for b in range(24):
        padded = F.pad(x[b], (2, 2, 2, 2))
        top, left = int(oy[b]), int(ox[b])
        offsets.add((top, left))
        assert torch.equal(got[b], padded[:, top:top + 6, left:left + 6])
    assert len(offsets) > 10  # the offsets do vary
    assert torch.equal(crop.evaluate(x), x[:, :, 0:6, 1:7])  # the centre crop


def test_hflip_is_torch_flip_where_drawn() -> None:
    x, index = images(), torch.arange(24)
    flip = HFlip(p=0.5, stream=2)
    got = flip.train(x, index, EPOCH, SEED)
    drawn = bernoulli(flip._draw(SEED, EPOCH, index, 0), 0.5)
    assert 0 < int(drawn.sum()) < 24
    for b in range(24):
        assert torch.equal(got[b], torch.flip(x[b], dims=[-1]) if drawn[b] else x[b])
    assert torch.equal(HFlip(p=1.0).train(x, index, EPOCH, SEED), x.flip(-1))
    assert torch.equal(HFlip(p=0.0).train(x, index, EPOCH, SEED), x)
    assert torch.equal(flip.evaluate(x), x)


def test_cutout_zeroes_the_drawn_square_clipped_at_the_border() -> None:
    x, index = images() + 10.0, torch.arange(24)  # no zeros of its own
    cut = Cutout(size=4, stream=3)
    got = cut.train(x, index, EPOCH, SEED)
    cy = uniform_int(cut._draw(SEED, EPOCH, index, 0), 7)
    cx = uniform_int(cut._draw(SEED, EPOCH, index, 1), 9)
    for b in range(24):
        want = x[b].clone()
        for i in range(7):
            for j in range(9):
                if int(cy[b]) - 2 <= i < int(cy[b]) + 2 and int(cx[b]) - 2 <= j < int(cx[b]) + 2:
                    want[:, i, j] = 0.0
        assert torch.equal(got[b], want)
    assert torch.equal(cut.evaluate(x), x)


def test_normalize_is_per_channel_and_applies_to_evaluation_too() -> None:
    x = images()
    norm = Normalize(mean=(0.5, -1.0), std=(2.0, 0.5))
    want = torch.stack([(x[:, 0] - 0.5) / 2.0, (x[:, 1] + 1.0) / 0.5], dim=1)
    assert torch.allclose(norm.train(x, torch.arange(24), 0, SEED), want, atol=0, rtol=1e-6)
    assert torch.equal(norm.evaluate(x), norm.train(x, torch.arange(24), 5, SEED))


# ---- the pipeline ---------------------------------------------------------------------------------

SPEC = [{"kind": "random_crop", "size": 6, "padding": 1}, {"kind": "hflip", "p": 0.5},
        {"kind": "cutout", "size": 3}, {"kind": "normalize", "mean": [0.1, 0.2], "std": [0.5, 2.0]}]


def test_a_batch_equals_its_samples_one_at_a_time_in_any_batch() -> None:
    """The in-memory path (a batch on the device, vectorised) and the streamed path (one sample
    in a worker, scalar draws and slices: another implementation) give identical examples; the
    draws depend on the sample's index only."""
    _, augment = make_augment(SPEC, SEED, 4, (2, 7, 9))
    assert augment is not None and augment.out_shape((2, 7, 9)) == (2, 6, 6)
    x, index = images(300), torch.randperm(10_000)[:300]  # enough for crops and holes at borders
    batch = augment.train(x, index, EPOCH)
    one = torch.stack([augment.sample(x[b], int(index[b]), EPOCH) for b in range(300)])
    assert torch.equal(batch, one)
    x, index = x[:24], index[:24]
    batch = batch[:24]
    perm = torch.randperm(24)
    assert torch.equal(augment.train(x[perm], index[perm], EPOCH), batch[perm])
    assert not torch.equal(augment.train(x, index, EPOCH + 1), batch)  # a new epoch, new draws
    want_eval = (x[:, :, 0:6, 1:7] - torch.tensor([0.1, 0.2]).view(2, 1, 1)) / torch.tensor([0.5, 2.0]).view(2, 1, 1)
    assert torch.allclose(augment.evaluate(x), want_eval, atol=0, rtol=1e-6)


def test_bad_transforms_name_their_list_item() -> None:
    with pytest.raises(AugmentItemError, match="larger than the 7×9 images") as err:
        make_augment([{"kind": "hflip", "p": 0.5}, {"kind": "random_crop", "size": 8, "padding": 0}],
                     0, 3, (1, 7, 9))
    assert err.value.index == 1
    with pytest.raises(AugmentItemError, match="3 values, but the examples have 2 channel") as err:
        make_augment([{"kind": "normalize", "mean": [0, 0, 0], "std": [1]}], 0, 3, (2, 7, 9))
    with pytest.raises(AugmentItemError, match="needs image data"):
        make_augment({"kind": "hflip", "p": 0.5}, 0, 3, (64,))
    with pytest.raises(AugmentItemError, match="first in the list"):
        make_augment([{"kind": "hflip", "p": 0.5}, {"kind": "patch", "style": "square", "size": 3, "margin": 1,
                                                    "free": 0.2, "only": 0.2}], 0, 3, (1, 8, 8))


# ---- through the loader and the evaluation sets ----------------------------------------------

def test_the_loader_keeps_training_inputs_and_stores_evaluation_ready_splits() -> None:
    augment = [{"kind": "patch", "style": "square", "size": 2, "margin": 1, "free": 0.2, "only": 0.16},
               {"kind": "random_crop", "size": 6, "padding": 1}, {"kind": "hflip", "p": 0.5},
               {"kind": "normalize", "mean": [0.5], "std": [0.25]}]
    plain = load_data("digits", {"shape": "image"}, seed=2)
    patched = load_data("digits", {"shape": "image", "augment": augment[:1]}, seed=2)
    data = load_data("digits", {"shape": "image", "augment": augment}, seed=2)
    assert data.in_shape == (1, 6, 6) and plain.in_shape == (1, 8, 8)
    assert torch.equal(data.train_x, patched.train_x)  # patched once, then per sample on the fly
    assert torch.allclose(data.val_x, (patched.val_x[:, :, 1:7, 1:7] - 0.5) / 0.25)
    assert torch.allclose(data.clean_x, (plain.val_x[:, :, 1:7, 1:7] - 0.5) / 0.25)
    x, y = data.batch(1, 2)
    idx = data.batch_indices(1)[2]
    assert torch.equal(x, data.augment.train(patched.train_x[idx], idx, 1))
    assert torch.equal(y, plain.train_y[idx])
    assert data.example(2).shape == (2, 1, 6, 6)


def test_an_eval_set_is_not_augmented_unless_it_asks(tmp_path: Path) -> None:
    augment = [{"kind": "hflip", "p": 0.5}, {"kind": "normalize", "mean": [0.5], "std": [0.25]}]
    data = load_data("digits", {"shape": "image", "augment": augment}, seed=2)
    x = np.random.default_rng(0).random((10, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "extra.npz", x=x, y=np.arange(10))
    quiet, _ = load_eval(data, "extra.npz", {}, 2, tmp_path)
    assert torch.allclose(quiet, (torch.from_numpy(x) - 0.5) / 0.25)
    drawn, _ = load_eval(data, "extra.npz", {"augment": True}, 2, tmp_path)
    again, _ = load_eval(data, "extra.npz", {"augment": True}, 2, tmp_path)
    assert torch.equal(drawn, again)  # the same draws at every evaluation
    flipped = (drawn != quiet).flatten(1).any(1)
    assert 0 < int(flipped.sum()) < 10
    assert torch.allclose(drawn[flipped], quiet[flipped].flip(-1))


# ---- the checker ----------------------------------------------------------------------------------

def check(tmp_path: Path, data: str) -> str:
    from mrc.api import CompileError, compile_spec
    from mrc.diagnostics import render_all

    path = tmp_path / "s.mrs"
    path.write_text(f"model mlp()\ndata {data}\noptimizer sgd(lr=0.1)\n")
    try:
        compile_spec(path)
    except CompileError as err:
        return render_all(err.diagnostics)
    return ""


def test_the_checker_points_at_the_bad_transform(tmp_path: Path) -> None:
    out = check(tmp_path, "digits(shape=image, augment = [hflip, random_crop(8, padding=1), cutot(4)])")
    assert "unknown data transform `cutot`" in out and "did you mean `cutout`?" in out
    line, caret = out.splitlines()[1:3]
    assert caret.index("^") == line.index("cutot") and caret.count("^") == len("cutot")
    out = check(tmp_path, "digits(shape=image, augment = [hflip, random_crop(9, padding=1)])")
    assert "a 9×9 crop is larger than the 8×8 images" in out
    line, caret = out.splitlines()[1:3]
    assert caret.index("^") == line.index("random_crop") and caret.count("^") == len("random_crop(9, padding=1)")
    out = check(tmp_path, "digits(shape=image, augment = [hflip(p=2)])")
    assert "`p`" in out
    assert check(tmp_path, "digits(shape=image, augment = [random_crop(8, padding=1), hflip])") == ""
    assert check(tmp_path, "digits(shape=image, augment = hflip)") == ""


def test_augment_can_be_set_from_the_command_line(tmp_path: Path) -> None:
    from mrc.api import compile_spec

    path = tmp_path / "s.mrs"
    path.write_text("model mlp()\ndata digits(shape=image)\noptimizer sgd(lr=0.1)\n")
    compiled = compile_spec(path, overrides=["data.augment=[hflip(p=1), normalize(mean=0.5, std=2)]"])
    augment = compiled.bound.data.augment
    assert [type(t).__name__ for t in augment.steps] == ["HFlip", "Normalize"]
    assert compile_spec(path).bound.data.augment is None
