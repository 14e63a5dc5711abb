"""Named evaluation sets: `eval NAME = SOURCE` in a spec, evaluated beside the validation split.

A source is a built-in transform of the training data's held-out split (`EVAL_SOURCES`: `clean`,
`patch_only`), or examples of its own — an `.npz` archive, an IDX images file or user code
`"file.py:factory"` — loaded by the same readers as the `data` statement. Every set is checked
against the run's data (example shape, class count), relabelled by `keep` and normalised with
the training statistics, so a model is evaluated on it exactly as on the validation split.

Augmentation: like the validation split, an evaluation set sees only the deterministic part of
the `data` statement's per-sample transforms (`normalize`, a centre crop). A set that asks for
the random ones too — `augment = true` in the block of a data file or factory, e.g.
`eval shifted = "test.npz" { augment = true }` — gets them drawn from the run's seed at a
fixed evaluation epoch (`EVAL_EPOCH`): the same draws at every evaluation, so its metric is
comparable along the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrc import lazy
from mrc.data.augment import EVAL_EPOCH
from mrc.data.files import DataError
from mrc.registry import Registry

if TYPE_CHECKING:
    from mrc.data.loader import Batch, DataBundle

torch = lazy.module("torch")  # imported on first use: the checker reads EVAL_SOURCES without torch

EVAL_SOURCES = Registry("evaluation source")
"""Built-in evaluation sets made from the held-out split of the training data."""


@EVAL_SOURCES.register("clean", doc="the held-out split without augmentation (with `patch`: no "
                       "patches)")
def clean(bundle: DataBundle) -> Batch:
    """The validation split as it was before `augment` (the validation split itself without)."""
    _in_memory(bundle, "clean")
    x = bundle.clean_x if bundle.clean_x is not None else bundle.val_x
    return x, bundle.val_y


def _in_memory(bundle: DataBundle, name: str) -> None:
    if bundle.val_x is None or bundle.val_y is None:
        raise DataError(f"`{name}` is made from the in-memory validation split, but these data "
                        f"stream (the validation split itself is evaluated already)")


@EVAL_SOURCES.register("patch_only", doc="the held-out split's labels, each example only its "
                       "class patch (needs `augment = patch(…)`)")
def patch_only(bundle: DataBundle) -> Batch:
    """Blank images carrying only the class patch of each held-out label: the paper's patch
    z + s·only_scale·u·v_y (s, u drawn per example from the seed), on a blank image in
    normalised units as in training; the square variant's 0/1 square, normalised like the
    validation split."""
    if bundle.patches is None:
        raise DataError("`patch_only` needs patch-augmented data: add `augment = patch()` to the "
                        "`data` statement")
    _in_memory(bundle, "patch_only")
    assert bundle.train_x is not None and bundle.val_y is not None
    raw = torch.zeros((bundle.val_size, *bundle.train_x.shape[1:]), dtype=torch.float32)
    x = bundle.patches.only_patch(raw, bundle.val_y.cpu())
    if bundle.patches.after_normalize:  # pasted on normalised images: not normalised again
        return (bundle.augment.evaluate(x) if bundle.augment is not None else x), bundle.val_y
    return bundle.for_eval(x), bundle.val_y


def load_eval(bundle: DataBundle, source: str, kwargs: Mapping[str, Any] | None, seed: int,
              base_dir: Path | str = ".") -> Batch:
    """The inputs and labels of the evaluation set `source` for the run whose data is `bundle`.

    A built-in source takes no arguments; a data file or factory gives its `x` and `y` (a
    held-out `x_test`/`y_test` in it is not used). Raises `DataError` with a one-line message,
    also when the examples' shape or labels do not fit the run's data.
    """
    from mrc.data.loader import _examples, _features, _keep, _labels, _same_length

    kwargs = dict(kwargs or {})
    random = kwargs.pop("augment", False)
    if not isinstance(random, bool):
        raise DataError(f"`augment` of an evaluation set is true or false, not {random!r}")
    if random and bundle.augment is None:
        raise DataError("`augment = true` asks for the data's per-sample transforms, but the "
                        "`data` statement has none")
    entry = EVAL_SOURCES.get(source)
    if entry is not None:
        if kwargs or random:
            raise DataError(f"`{entry.name}` takes no arguments")
        return entry.build(bundle)
    if source.isidentifier():
        guess = EVAL_SOURCES.suggest(source)
        tip = (f"did you mean `{guess}`?" if guess else
               f"built-ins are {', '.join(f'`{n}`' for n in EVAL_SOURCES.names())}, or give a data "
               'file or "file.py:factory" as a string')
        raise DataError(f"unknown evaluation source `{source}`; {tip}")
    raw, name = _examples(source, dict(kwargs or {}), seed, Path(base_dir))
    for key in ("x", "y"):
        if key not in raw:
            found = ", ".join(f"`{k}`" for k in raw) or "nothing"
            raise DataError(f"{name}: an evaluation set needs `x` and `y`, but has {found}")
    x, y = _features(raw["x"], "x", name), _labels(raw["y"], "y", name, bundle.task)
    _same_length(x, y, "x", "y", name)
    loaded = tuple(bundle.train_x.shape[1:]) if bundle.train_x is not None else None
    if loaded is not None and tuple(x.shape[1:]) != loaded:
        raise DataError(f"{name}: its examples have shape {tuple(x.shape[1:])}, but the model's "
                        f"data have {loaded}")
    x = _drawn(bundle, bundle.normalized(x)) if random else bundle.for_eval(x)
    if tuple(x.shape[1:]) != tuple(bundle.in_shape):
        raise DataError(f"{name}: its examples have shape {tuple(x.shape[1:])} (after the "
                        f"transforms), but the model's data have {tuple(bundle.in_shape)}")
    if bundle.task != "classification":  # float targets: the training targets' shape, no classes
        if bundle.train_y is not None and y.shape[1:] != bundle.train_y.shape[1:]:
            raise DataError(f"{name}: its targets have shape {tuple(y.shape[1:])}, but the model's "
                            f"data have {tuple(bundle.train_y.shape[1:])}")
        return x.to(bundle.device).contiguous(), y.to(bundle.device).contiguous()
    if bundle.keep is not None:
        x, y, _, _ = _keep(list(bundle.keep), x, y, None, int(y.max()) + 1 if len(y) else 0, name)
    if len(y) and int(y.max()) >= bundle.classes:
        at = int(y.argmax())
        raise DataError(f"{name}: label {int(y.max())} at index {at} is out of range for the "
                        f"model's {bundle.classes} classes (labels must be 0..{bundle.classes - 1})")
    return x.to(bundle.device).contiguous(), y.to(bundle.device).contiguous()


def _drawn(bundle: DataBundle, x: torch.Tensor) -> torch.Tensor:
    """`x` through the training transforms, drawn at the fixed evaluation epoch."""
    assert bundle.augment is not None
    return bundle.augment.train(x, torch.arange(len(x)), EVAL_EPOCH)
