"""Patch augmentation (Li, Wei & Ma 2019) and named evaluation sets, on the data side, and the
metrics a run reports for them, against a hand evaluation of the final model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrc.api import train
from mrc.data import DataBundle, DataError, load_data, load_eval
from mrc.data.augment import KIND_BOTH, KIND_FREE, KIND_ONLY
from mrc.models import build_model

PATCH = {"kind": "patch", "style": "square", "size": 3, "margin": 1, "free": 0.2, "only": 0.16}


def digits(seed: int = 0, **options) -> DataBundle:
    return load_data("digits", {"shape": "image", **options}, seed)


def region(x: torch.Tensor, margin: int = 1, size: int = 3) -> torch.Tensor:
    return x[:, :, margin:margin + size, margin:margin + size]


def outside(x: torch.Tensor, margin: int = 1, size: int = 3) -> torch.Tensor:
    mask = torch.ones(x.shape[-2:], dtype=torch.bool)
    mask[margin:margin + size, margin:margin + size] = False
    return x[:, :, mask]


def kinds_of(aug: torch.Tensor, plain: torch.Tensor, y: torch.Tensor,
             patterns: torch.Tensor) -> torch.Tensor:
    """Each example's kind, read off the data alone (not from the transform's own bookkeeping)."""
    same = (aug == plain).flatten(1).all(1)
    blank = (outside(aug) == 0).flatten(1).all(1)
    patched = (region(aug) == patterns[y]).flatten(1).all(1)
    kinds = torch.full_like(y, -1)
    kinds[same] = KIND_FREE
    kinds[~same & blank & patched] = KIND_ONLY
    kinds[~same & ~blank & patched & (outside(aug) == outside(plain)).flatten(1).all(1)] = KIND_BOTH
    return kinds


@pytest.mark.parametrize(("free", "only"), [(0.2, 0.16), (0.5, 0.0), (0.0, 1.0), (0.33, 0.33)])
def test_patch_fractions_are_exact_to_rounding(free: float, only: float) -> None:
    plain = digits()
    aug = digits(augment={**PATCH, "free": free, "only": only})
    assert aug.patches is not None
    for ax, px, y in ((aug.train_x, plain.train_x, aug.train_y),
                      (aug.val_x, plain.val_x, aug.val_y)):
        n = len(y)
        kinds = kinds_of(ax, px, y, aug.patches.patterns)
        # an example whose image already shows its patch in the region reads as "free": none here
        assert (kinds >= 0).all()
        n_free, n_only = round(free * n), round(only * n)
        assert int((kinds == KIND_FREE).sum()) == n_free
        assert int((kinds == KIND_ONLY).sum()) == n_only
        assert int((kinds == KIND_BOTH).sum()) == n - n_free - n_only


def test_the_patch_depends_only_on_the_class() -> None:
    aug = digits(augment=PATCH)
    patterns = aug.patches.patterns
    assert patterns.shape == (10, 1, 3, 3)
    assert set(patterns.unique().tolist()) <= {0.0, 1.0}
    flat = patterns.flatten(1)
    assert len({tuple(r.tolist()) for r in flat}) == 10 and bool((flat.sum(1) > 0).all())
    plain = digits()
    kinds = kinds_of(aug.train_x, plain.train_x, aug.train_y, patterns)
    carrying = kinds != KIND_FREE
    for c in range(10):  # every patched example of class c carries the same pattern, c's own
        shown = region(aug.train_x[carrying & (aug.train_y == c)])
        assert len(shown) > 0 and bool((shown == patterns[c]).all())


def test_patches_are_deterministic_from_the_seed() -> None:
    a, b, other = digits(3, augment=PATCH), digits(3, augment=PATCH), digits(4, augment=PATCH)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_x, b.val_x)
    assert torch.equal(a.patches.patterns, b.patches.patterns)
    assert not torch.equal(a.patches.patterns, other.patches.patterns)


def test_clean_is_the_unaugmented_held_out_split() -> None:
    plain, aug = digits(), digits(augment=PATCH)
    x, y = load_eval(aug, "clean", None, 0)
    assert torch.equal(x, plain.val_x) and torch.equal(y, plain.val_y)
    assert not torch.equal(aug.val_x, plain.val_x)  # the validation split itself is augmented
    normed_plain, normed = digits(normalize=True), digits(normalize=True, augment=PATCH)
    x, _ = load_eval(normed, "clean", None, 0)  # normalised with the augmented training stats
    assert torch.allclose(x, (normed_plain.val_x * normed_plain.std + normed_plain.mean
                              - normed.mean) / normed.std, atol=1e-5)


def test_patch_only_is_the_class_patch_on_a_blank_image() -> None:
    aug = digits(augment={**PATCH, "margin": 4, "size": 2})
    x, y = load_eval(aug, "patch_only", None, 0)
    assert torch.equal(y, aug.val_y)
    assert bool((outside(x, 4, 2) == 0).all())
    assert torch.equal(region(x, 4, 2), aug.patches.patterns[y])


def test_patch_needs_images_and_room() -> None:
    with pytest.raises(DataError, match=r"needs image data"):
        load_data("digits", {"augment": PATCH}, 0)
    with pytest.raises(DataError, match="does not fit"):
        digits(augment={**PATCH, "margin": 6})
    with pytest.raises(DataError, match="patch_only"):
        load_eval(digits(), "patch_only", None, 0)


def test_file_eval_sets_are_checked_against_the_data(tmp_path: Path) -> None:
    bundle = digits(keep=[3, 5])
    x = np.random.default_rng(0).random((6, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "ok.npz", x=x, y=np.array([3, 5, 5, 3, 7, 5]))
    ex, ey = load_eval(bundle, "ok.npz", None, 0, tmp_path)
    assert ey.tolist() == [0, 1, 1, 0, 1]  # relabelled by `keep`; class 7 dropped
    assert torch.equal(ex, torch.from_numpy(x[[0, 1, 2, 3, 5]]))
    np.savez(tmp_path / "flat.npz", x=np.zeros((2, 64), np.float32), y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match=r"shape \(64,\)"):
        load_eval(bundle, "flat.npz", None, 0, tmp_path)
    with pytest.raises(DataError, match="did you mean `clean`"):
        load_eval(bundle, "claen", None, 0)


# ---- runs -------------------------------------------------------------------------------------

SPEC = """
model resnet(depth=8, width=8)
data digits(shape=image, batch=64, augment = patch(style=square, margin=1))
eval clean = clean
eval patch_only = patch_only
eval extra = "extra.npz"
optimizer sgd(lr=0.05, momentum=0.9, weight_decay=5e-4)
train(steps=40, eval_every=20, seed=1, eval_batch=50)
"""


def hand_eval(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        out = model(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def test_every_eval_set_is_reported_as_a_hand_evaluation_of_the_final_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    extra_x = rng.random((37, 1, 8, 8)).astype(np.float32)
    extra_y = rng.integers(0, 10, 37)
    np.savez(tmp_path / "extra.npz", x=extra_x, y=extra_y)
    (tmp_path / "run.mrs").write_text(SPEC)
    result = train(tmp_path / "run.mrs", out=tmp_path / "out")
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [20, 40]
    assert all(set(r["evals"]) == {"clean", "patch_only", "extra"} for r in evals)

    # the sets, made by hand from the data definition (not from the run's bundle)
    plain = digits(1)
    patterns = digits(1, augment=PATCH).patches.patterns
    blank = torch.zeros_like(plain.val_x)
    blank[:, :, 1:4, 1:4] = patterns[plain.val_y]
    sets = {"clean": (plain.val_x, plain.val_y), "patch_only": (blank, plain.val_y),
            "extra": (torch.from_numpy(extra_x), torch.from_numpy(extra_y))}
    torch.manual_seed(0)
    model = build_model("resnet", (1, 8, 8), 10, {"depth": 8, "width": 8})
    model.load_state_dict(torch.load(out / "final.pt", weights_only=True))
    for name, (x, y) in sets.items():
        loss, acc = hand_eval(model, x, y)
        for where in (summary["evals"][name], evals[-1]["evals"][name],
                      result.summary["evals"][name]):
            assert where["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6), name
            assert where["acc"] == pytest.approx(acc, abs=1e-12), name
    assert summary["evals"]["patch_only"]["acc"] > 0.5  # the patch alone is learnt quickly


def test_early_stopping_on_a_named_set(tmp_path: Path) -> None:
    spec = SPEC.replace('eval extra = "extra.npz"\n', "").replace(
        "train(steps=40", "early_stopping(metric = clean.acc, patience=1, min_delta=1.0)\n"
        "train(steps=200")
    (tmp_path / "run.mrs").write_text(spec)
    result = train(tmp_path / "run.mrs", out=tmp_path / "out")
    assert result.status == "stopped_early"
    evals = [r for r in result.metrics if "val_loss" in r]
    assert [r["step"] for r in evals] == [20, 40]  # no change of 1.0 in an accuracy: stops at once
    best = result.summary["best"]
    assert best == {"clean.acc": evals[0]["evals"]["clean"]["acc"], "step": 20}
    # restore_best: the run ends with the weights of step 20, so its clean accuracy is step 20's
    assert result.summary["evals"]["clean"]["acc"] == pytest.approx(best["clean.acc"])
