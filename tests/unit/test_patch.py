"""The paper's patch (Li, Wei & Ma 2019, `style = paper`, the default): z + s·v_y at the centre,
checked against the construction read back from the data, not from the transform's bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mrc.api import train
from mrc.data import DataBundle, PaperPatches, Patches, load_data, load_eval
from mrc.data.augment import AugmentError, AugmentItemError, class_patterns, make_augment, patch
from mrc.models import build_model

N, C, H, W, CLASSES = 2000, 3, 12, 12, 10


def images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((N, C, H, W), generator=g) + 1.0, torch.randint(0, CLASSES, (N,), generator=g)


def paper(seed: int = 0, **knobs) -> PaperPatches:
    got = patch(seed, CLASSES, (C, H, W), **knobs)
    assert isinstance(got, PaperPatches)
    return got


def window(x: torch.Tensor, size: int = 7) -> torch.Tensor:
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]


def outside(x: torch.Tensor, size: int = 7) -> torch.Tensor:
    mask = torch.ones(x.shape[-2:], dtype=torch.bool)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    mask[top:top + size, left:left + size] = False
    return x[..., mask]


def coefficients(p: PaperPatches, x: torch.Tensor, y: torch.Tensor, size: int = 7) -> torch.Tensor:
    """c of each example whose centre window is z + c·v_y on every channel (least squares), and
    checks that the window is exactly that."""
    d = window(x, size) - p.z
    v = p.v[y]
    c = (d * v).flatten(1).sum(1) / (v * v).flatten(1).sum(1)
    assert torch.allclose(d, c.view(-1, 1, 1, 1) * v, atol=1e-5)
    return c


def test_the_defaults_are_the_papers() -> None:
    p = paper()
    assert p.size == 7 and p.z.shape == (C, 7, 7) and p.v.shape == (CLASSES, C, 7, 7)
    assert (p.free, p.only, p.only_scale) == (0.2, 0.16, 1.75)
    assert p.v.abs().max() <= 0.1 and p.v.abs().max() > 0.09  # U(−0.1, 0.1), 4,410 entries
    assert abs(float(p.v.mean())) < 0.01
    big = paper(size=12)  # 432 entries of 1.25·N(0, 1)
    assert 1.1 < float(big.z.std()) < 1.4 and abs(float(big.z.mean())) < 0.2
    assert float(paper(v=0.5).v.abs().max()) > 0.45


def test_a_split_is_free_only_and_both_with_one_shared_z() -> None:
    p = paper()
    x, y = images()
    out = p.apply(x, y, 0)
    free = (out == x).flatten(1).all(1)
    blank = (outside(out) == 0).flatten(1).all(1)
    both = ~free & ~blank & (outside(out) == outside(x)).flatten(1).all(1)
    assert not (free & blank).any() and int((free | blank | both).sum()) == N
    assert int(free.sum()) == round(0.2 * N) and int(blank.sum()) == round(0.16 * N)
    assert int(both.sum()) == N - round(0.2 * N) - round(0.16 * N)

    c_both = coefficients(p, out[both], y[both])  # one z for every class, the class's v_y
    assert torch.allclose(c_both.abs(), torch.ones_like(c_both), atol=1e-4)  # s = ±1
    c_only = coefficients(p, out[blank], y[blank])  # s·1.75·u, u ~ U(0, 1)
    assert (c_only.abs() <= 1.75 + 1e-4).all()
    u = c_only.abs() / 1.75
    assert 0.42 < float(u.mean()) < 0.58 and float(u.max()) > 0.95
    signs = torch.cat([c_both.sign(), c_only.sign()])
    assert abs(float((signs > 0).double().mean()) - 0.5) < 0.05  # 1,600 draws: 4.5σ
    # both signs occur in every class (sign-symmetric: the class is not in the sign)
    yy = torch.cat([y[both], y[blank]])
    assert all({1.0, -1.0} <= set(signs[yy == k].tolist()) for k in range(CLASSES))


def test_the_patch_sits_at_the_centre_of_every_channel() -> None:
    p = paper(size=3)
    x, y = images()
    out = p.apply(x, y, 0)
    changed = (out != x).any(0).any(0)  # (H, W): pixels any example changed, other than zeroing
    both = (outside(out, 3) == outside(x, 3)).flatten(1).all(1) & (out != x).flatten(1).any(1)
    moved = (out[both] != x[both]).any(0)  # (C, H, W)
    expect = torch.zeros(H, W, dtype=torch.bool)
    expect[4:7, 4:7] = True  # (12 − 3) // 2 = 4
    assert torch.equal(moved, expect.expand(C, H, W)) and changed.all()


def test_the_draws_come_from_the_seed_only() -> None:
    x, y = images()
    a, b, other = paper(3), paper(3), paper(4)
    assert torch.equal(a.z, b.z) and torch.equal(a.v, b.v)
    assert torch.equal(a.apply(x, y, 0), b.apply(x, y, 0))
    assert not torch.equal(a.z, other.z) and not torch.equal(a.v, other.v)
    assert not torch.equal(a.kinds(N, 0), a.kinds(N, 1))  # the splits are drawn apart
    assert torch.equal(a.only_patch(x, y), b.only_patch(x, y))


def test_the_square_is_a_variant_with_todays_defaults() -> None:
    got = patch(0, CLASSES, (1, 8, 8), style="square")
    assert isinstance(got, Patches) and (got.size, got.margin) == (3, 1)
    assert torch.equal(got.patterns, class_patterns(0, CLASSES, 1, 3))
    assert not Patches.after_normalize and PaperPatches.after_normalize


def test_knobs_that_do_not_fit() -> None:
    with pytest.raises(AugmentError, match="9×9 patch is larger than the 8×8 images"):
        patch(0, CLASSES, (1, 8, 8), size=9)
    with pytest.raises(AugmentError, match="`margin` is not a knob of the `paper` patch"):
        patch(0, CLASSES, (1, 8, 8), margin=1)
    with pytest.raises(AugmentError, match="`z` is not a knob of the `square` patch"):
        patch(0, CLASSES, (1, 8, 8), style="square", z=1.0)
    with pytest.raises(AugmentItemError, match="needs image data"):
        make_augment({"kind": "patch"}, 0, CLASSES, (64,))


# ---- through the loader and the evaluation sets ----------------------------------------------

def digits(seed: int = 0, **options) -> DataBundle:
    return load_data("digits", {"shape": "image", "normalize": True, **options}, seed)


def test_the_loader_pastes_the_patch_on_normalised_images() -> None:
    plain = digits()
    aug = digits(augment={"kind": "patch", "size": 4})
    p = aug.patches
    assert isinstance(p, PaperPatches)
    # the statistics are the unpatched images', and the clean set is the normalised split
    assert torch.equal(aug.mean, plain.mean) and torch.equal(aug.std, plain.std)
    assert torch.equal(aug.clean_x, plain.val_x)
    for ax, px, y in ((aug.train_x, plain.train_x, aug.train_y), (aug.val_x, plain.val_x, aug.val_y)):
        kinds = p.kinds(len(y), 0 if ax is aug.train_x else 1)
        assert torch.equal(ax[kinds == 0], px[kinds == 0])
        patched = kinds != 0
        c = coefficients(p, ax[patched], y[patched], 4)  # in normalised units, not normalised again
        assert (c.abs() <= 1.75 + 1e-4).all()
        assert (outside(ax[kinds == 1], 4) == 0).all()


def test_patch_only_is_the_class_patch_alone_and_the_same_for_every_spec() -> None:
    aug = digits(augment={"kind": "patch", "size": 4})
    x, y = load_eval(aug, "patch_only", None, 0)
    assert torch.equal(y, aug.val_y) and (outside(x, 4) == 0).all()
    c = coefficients(aug.patches, x, y, 4)
    assert (c.abs() <= 1.75 + 1e-4).all() and (c > 0).any() and (c < 0).any()
    other = digits(batch=7, augment={"kind": "patch", "size": 4})  # same patch, other options
    x2, y2 = load_eval(other, "patch_only", None, 0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(load_eval(aug, "clean", None, 0)[0], load_eval(other, "clean", None, 0)[0])


# ---- a run ------------------------------------------------------------------------------------

SPEC = """
model resnet(depth=8, width=8)
data digits(shape=image, batch=64, normalize=true, augment = patch())
eval clean = clean
eval patch_only = patch_only
optimizer sgd(lr=0.05, momentum=0.9, weight_decay=5e-4)
train(steps=30, eval_every=30, seed=2, eval_batch=100)
"""


def test_a_run_reports_clean_and_patch_only_as_a_hand_evaluation(tmp_path: Path) -> None:
    (tmp_path / "run.mrs").write_text(SPEC)
    result = train(tmp_path / "run.mrs", out=tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    bundle = digits(2, batch=64, augment={"kind": "patch"})  # 7×7 on 8×8: the paper's size
    torch.manual_seed(0)
    model = build_model("resnet", (1, 8, 8), 10, {"depth": 8, "width": 8})
    model.load_state_dict(torch.load(tmp_path / "out" / "final.pt", weights_only=True))
    model.eval()
    for name in ("clean", "patch_only"):
        x, y = load_eval(bundle, name, None, 2)
        with torch.no_grad():
            out = model(x)
        loss, acc = float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())
        for where in (summary["evals"][name], result.summary["evals"][name]):
            assert where["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6), name
            assert where["acc"] == pytest.approx(acc, abs=1e-12), name


# ---- against the authors' code (cwein3/large-lr-code) ----------------------------------------

def test_patch_only_mixes_full_and_scaled_patches_as_the_authors_measure() -> None:
    # their TransformOnlyDataset sends blank images through the training transform: with
    # probability patch_only_prob (0.2) z + s·1.75·u·v_y, otherwise z + s·v_y
    aug = digits(augment={"kind": "patch", "size": 4})
    x, y = load_eval(aug, "patch_only", None, 0)
    c = coefficients(aug.patches, x, y, 4).abs()
    full = (c - 1.0).abs() < 1e-4
    assert int((~full).sum()) == round(0.2 * len(y))  # only / (1 − free) = 0.16 / 0.8
    assert (c[~full] <= 1.75 + 1e-4).all() and float(c[~full].std()) > 0.2  # 1.75·u varies


def test_a_normalize_after_the_paper_patch_applies_before_it() -> None:
    # the authors normalise (per channel) and then paste the patch: the patch must not be
    # rescaled by the normalisation, and a blank patch-only image is 0 in normalised units
    plain = load_data("digits", {"shape": "image"}, 0)
    aug = load_data("digits", {"shape": "image", "augment": [
        {"kind": "patch", "size": 4}, {"kind": "normalize", "mean": [0.3], "std": [0.5]}]}, 0)
    p = aug.patches
    assert isinstance(p, PaperPatches) and aug.augment is None  # nothing left to do per sample
    assert torch.allclose(aug.clean_x, (plain.val_x - 0.3) / 0.5)
    kinds = p.kinds(len(aug.train_y), 0)
    assert torch.allclose(aug.train_x[kinds == 0], (plain.train_x[kinds == 0] - 0.3) / 0.5)
    patched = kinds != 0
    coefficients(p, aug.train_x[patched], aug.train_y[patched], 4)  # exactly z + c·v_y
    assert (outside(aug.train_x[kinds == 1], 4) == 0).all()
    x, y = load_eval(aug, "patch_only", None, 0)
    assert (outside(x, 4) == 0).all()
    coefficients(p, x, y, 4)
    both = load_data("digits", {"shape": "image", "normalize": True, "augment": [
        {"kind": "patch", "size": 4}, {"kind": "normalize", "mean": [0.3], "std": [0.5]}]}, 0)
    normed = load_data("digits", {"shape": "image", "normalize": True}, 0)
    assert torch.allclose(both.clean_x, (normed.val_x - 0.3) / 0.5, atol=1e-5)


def test_a_normalize_after_a_random_transform_is_refused_with_the_paper_patch() -> None:
    with pytest.raises(AugmentItemError, match="right after `patch`") as err:
        make_augment([{"kind": "patch"}, {"kind": "hflip", "p": 0.5},
                      {"kind": "normalize", "mean": [0.0], "std": [1.0]}], 0, CLASSES, (1, 8, 8))
    assert err.value.index == 2
    make_augment([{"kind": "patch", "style": "square"}, {"kind": "hflip", "p": 0.5},
                  {"kind": "normalize", "mean": [0.0], "std": [1.0]}], 0, CLASSES, (1, 8, 8))


def test_redraw_draws_kind_sign_and_scale_every_epoch_as_the_authors_loader() -> None:
    # FixedAugmentDataset fixes which examples are patched; PatchAugmentFixed redraws, at every
    # access, patch-only (probability 0.2) or not, s and u
    aug = load_data("digits", {"shape": "image", "augment": [
        {"kind": "patch", "size": 4, "redraw": True}, {"kind": "normalize", "mean": [0.3], "std": [0.5]}]}, 0)
    plain = load_data("digits", {"shape": "image", "normalize": False}, 0)
    assert torch.allclose(aug.train_x, (plain.train_x - 0.3) / 0.5)  # stored without the patch
    p, n = aug.patches, len(aug.train_y)
    idx = torch.arange(n)
    kinds = p.kinds(n, 0)
    seen = []
    for epoch in (0, 1, 2):
        x = aug.augment.train(aug.train_x, idx, epoch)
        assert torch.equal(x[kinds == 0], aug.train_x[kinds == 0])  # the free ones stay free
        on = kinds != 0
        c = coefficients(p, x[on], aug.train_y[on], 4)
        blank = (outside(x[on], 4) == 0).flatten(1).all(1)
        assert torch.allclose(c[~blank].abs(), torch.ones_like(c[~blank]), atol=1e-4)
        assert (c[blank].abs() <= 1.75 + 1e-4).all()
        assert abs(float(blank.double().mean()) - 0.2) < 0.05 and abs(float((c > 0).double().mean()) - 0.5) < 0.06
        seen.append((blank, c.sign()))
        rows = torch.stack([aug.augment.sample(aug.train_x[i], i, epoch) for i in range(40)])
        assert torch.equal(rows, x[:40])  # one sample at a time, as in a batch
    assert not torch.equal(seen[0][0], seen[1][0]) and not torch.equal(seen[0][1], seen[1][1])
    val = load_data("digits", {"shape": "image", "augment": [
        {"kind": "patch", "size": 4}, {"kind": "normalize", "mean": [0.3], "std": [0.5]}]}, 0)
    assert torch.equal(aug.val_x, val.val_x)  # evaluation splits are patched once, as before
    with pytest.raises(AugmentError, match="`redraw` is not a knob of the `square` patch"):
        patch(0, CLASSES, (1, 8, 8), style="square", redraw=True)


def test_a_run_with_redraw_trains(tmp_path: Path) -> None:
    (tmp_path / "run.mrs").write_text(SPEC.replace("augment = patch()", "augment = patch(redraw=true)")
                                      .replace("steps=30, eval_every=30", "steps=6, eval_every=6"))
    result = train(tmp_path / "run.mrs", out=tmp_path / "out")
    assert result.status == "completed" and set(result.summary["evals"]) == {"clean", "patch_only"}
