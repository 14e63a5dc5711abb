"""From a spec's `data` statement to training and validation tensors and deterministic batches.

`load_data` finds the examples (a built-in, an `.npz` or IDX file, or a user factory) and
validates them — inputs finite float32 numbers, labels whole numbers ≥ 0 with a class count that
makes sense (see `MAX_INFERRED_CLASSES`), each error naming the array and its first bad index —
then applies the options common to every data set (`DATA_OPTIONS`) in a fixed order:

1. `keep`: keep only the listed classes, relabelled 0..k-1 in the order given;
2. validation split: a predefined test split (`x_test`/`y_test`) *is* the validation set;
   otherwise a seeded random fraction `val` of the examples is held out;
3. `limit`: keep a seeded random subset of at most `limit` training examples (validation is
   untouched, so limiting never changes what a run is evaluated on); `val_limit`: keep a random
   subset of at most `val_limit` validation examples, drawn from a fixed stream that is the same
   for every seed (runs of different seeds are scored on the same examples; evaluation is the
   cost it cuts);
4. `augment`: the data-set transform (`mrc.data.augment`, the patch) of the training and
   validation splits — here for the `square` variant, after step 5 for the paper's patch, which
   is pasted on normalised images; the un-patched validation split is kept as the `clean`
   evaluation set;
5. `normalize`: standardise features with the training split's per-feature mean and std (after
   the square patch, before the paper's, and applied to every evaluation set too); with the
   paper's patch, `augment`'s `normalize(mean, std)` steps right after `patch` apply here too,
   so the patch is pasted on normalised images as in the paper (the bundle's `mean`/`std` then
   hold both normalisations);
6. the per-sample transforms of `augment` (crop, flip, cutout, normalize): the training split
   keeps its examples and is transformed batch by batch as it is read; every evaluation split is
   stored through the transforms' deterministic part (`Augment.evaluate`).

Data that come as a `torch.utils.data.Dataset` (an image folder, a user factory's Dataset or
pair of Datasets) are not loaded: they stream through a DataLoader (`mrc.data.stream`), with the
same validation split and `limit` rules applied as index subsets. Arrays stay in memory unless
`stream = true`. A factory may also return its own DataLoaders, which are used as given.

Batches are a pure function of (seed, epoch), so a run resumed at (epoch, step) sees exactly
the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch

from mrc.data.augment import Augment, PaperPatches, Patches, leading_normalize, make_augment, redraw_patch
from mrc.data.builtin import DATASETS
from mrc.data.files import DataError, is_idx_path, read_idx_pair, read_npz
from mrc.data.options import DATA_OPTIONS
from mrc.data.stream import ArraySet, StreamOptions, length_of, read_example, stream_seed
from mrc.registry import did_you_mean

Batch: TypeAlias = tuple[torch.Tensor, torch.Tensor]
"""Inputs and labels of a batch (or of a whole split)."""

_SPLIT_STREAM = -1
_LIMIT_STREAM = -2
_VAL_LIMIT_SEED = 0x5EED_7E57
"""The generator seed of `val_limit`'s subset: one fixed draw, whatever the run's seed."""
_TRAIN_PATCH_STREAM, _VAL_PATCH_STREAM = 0, 1

MAX_INFERRED_CLASSES = 100_000
"""The most classes a data set may have when the count is inferred from its largest label.

A stray huge label (10**12) would otherwise ask the model builder for a head of that many
outputs; a data set with more classes states its count (`classes` in the builder's dict, the
factory's result or the `.npz` archive)."""

_EXACT_FLOAT_LABEL = 2**53
"""Float labels at or above this are not exact integers, and may not fit int64."""


@dataclass(eq=False)
class DataBundle:
    """Training and validation data with the batching rules of one run.

    In memory (arrays): float32 inputs (N, *shape) and int64 labels (N,), contiguous, all on one
    device. `train_x` holds the examples as loaded; the per-sample transforms (`augment`) run on
    each batch as it is read. `val_x`, `clean_x` and the `evals` are stored evaluation-ready
    (through `augment`'s deterministic part). Streamed (a Dataset): `train_x`/`val_x` are None
    and `train_set`/`val_set` are the Datasets; arrays with `stream = true` have both.
    `stream` is None on the in-memory path, else the DataLoader's settings; `loaders` are a user
    factory's own (train, validation or None) DataLoaders, used as given.

    `in_shape` is the example shape the model sees (after the transforms), `classes` the number
    of classes a model must predict (labels are 0..classes-1). `mean`/`std` are the
    normalisation statistics when `normalize` was on, else None. `clean_x` is the validation
    split before the data-set transform (`patch`), `patches` the class patches, `keep` the class
    subset; `evals` holds the spec's named evaluation sets (`mrc.data.evalsets`).
    """

    train_x: torch.Tensor | None
    train_y: torch.Tensor | None
    val_x: torch.Tensor | None
    val_y: torch.Tensor | None
    in_shape: tuple[int, ...]
    classes: int
    batch_size: int
    shuffle: bool = True
    drop_last: bool = False
    seed: int = 0
    name: str = ""
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    clean_x: torch.Tensor | None = None
    patches: Patches | PaperPatches | None = None
    keep: tuple[int, ...] | None = None
    evals: dict[str, Batch] = field(default_factory=dict)
    augment: Augment | None = None
    train_set: Any = None
    val_set: Any = None
    stream: StreamOptions | None = None
    loaders: tuple[Any, Any] | None = None
    first_x: torch.Tensor | None = None
    """Streamed data: the first training inputs, read when the data were loaded (for tracing)."""
    first_y: torch.Tensor | None = None
    """Streamed data: their targets (for the loss's check before training)."""
    task: str = "classification"
    """What the targets are (`mrc.losses.TASKS`): class labels, float targets or 0/1 labels."""
    _cached: tuple[int, list[torch.Tensor]] | None = field(default=None, init=False, repr=False)

    def __repr__(self) -> str:
        return (f"DataBundle({self.name!r}, train={self.train_size}, val={self.val_size}, "
                f"in_shape={self.in_shape}, classes={self.classes}, batch={self.batch_size}, "
                f"device={self.device}{', streamed' if self.streamed else ''})")

    @property
    def streamed(self) -> bool:
        """Whether training reads its batches through a DataLoader."""
        return self.stream is not None or self.loaders is not None

    @property
    def train_size(self) -> int:
        if self.train_y is not None:
            return int(self.train_y.shape[0])
        if self.train_set is not None:
            return len(self.train_set)
        return 0

    @property
    def val_size(self) -> int:
        if self.val_y is not None:
            return int(self.val_y.shape[0])
        return len(self.val_set) if self.val_set is not None else 0

    @property
    def device(self) -> torch.device:
        return self.train_x.device if self.train_x is not None else torch.device("cpu")

    def steps_per_epoch(self) -> int:
        """Batches per epoch: ⌈N / batch⌉, or ⌊N / batch⌋ with drop_last (a user DataLoader:
        its length)."""
        if self.loaders is not None:
            return length_of(self.loaders[0], "the factory's training DataLoader")
        n, b = self.train_size, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def batch_indices(self, epoch: int) -> list[torch.Tensor]:
        """The CPU index tensors of every batch of `epoch`, a pure function of (seed, epoch).

        Without drop_last every training index appears exactly once per epoch. The tensors are
        shared with an internal cache of the latest epoch: read them, do not modify them.
        """
        if self._cached is not None and self._cached[0] == epoch:
            return list(self._cached[1])
        n = self.train_size
        if self.shuffle:
            generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        batches = list(order.split(self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        self._cached = (epoch, batches)
        return list(batches)

    def batch(self, epoch: int, i: int) -> Batch:
        """Inputs and labels of training batch `i` of `epoch` as a step sees them (transformed)."""
        batches = self.batch_indices(epoch)
        if not 0 <= i < len(batches):
            raise IndexError(f"batch {i} of epoch {epoch} does not exist: an epoch has "
                             f"{len(batches)} batches")
        if self.train_x is None or self.train_y is None:
            from mrc.data.stream import TrainView

            view = TrainView(self.train_set, self.augment, self.name, self.task)
            items = [view[(epoch, int(j))] for j in batches[i]]
            return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
        index = batches[i].to(self.device)
        x = self.train_x.index_select(0, index)
        if self.augment is not None:
            x = self.augment.train(x, index, epoch)
        return x, self.train_y.index_select(0, index)

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from step `start` on (resuming mid-epoch starts past 0)."""
        for i in range(start, self.steps_per_epoch()):
            yield self.batch(epoch, i)

    def val_batches(self, batch_size: int | None = None) -> Iterator[Batch]:
        """The in-memory validation set in order, in batches of `batch_size` (default: the
        training batch)."""
        if self.val_x is None or self.val_y is None:
            raise DataError(f"{self.name}: the validation split is streamed, not in memory")
        b = batch_size or self.batch_size
        for start in range(0, self.val_size, b):
            yield self.val_x[start:start + b], self.val_y[start:start + b]

    def example_targets(self, n: int = 2) -> torch.Tensor:
        """The targets of `example(n)`'s inputs."""
        y = self.train_y if self.train_y is not None else self.first_y
        assert y is not None
        return y[:n]

    def example(self, n: int = 2) -> torch.Tensor:
        """The first `n` training inputs as the model sees them in evaluation (for tracing)."""
        x = self.train_x if self.train_x is not None else self.first_x
        assert x is not None
        x = x[:n]
        if self.loaders is not None:
            return x  # the user's loader, as given
        return self.augment.evaluate(x) if self.augment is not None else x

    def for_eval(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs as loaded (before `normalize`) made evaluation-ready like the validation split."""
        x = self.normalized(x)
        return self.augment.evaluate(x) if self.augment is not None else x

    def to(self, device: torch.device | str) -> DataBundle:
        """A copy with every tensor on `device` (the batch order is unchanged)."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return dataclasses.replace(
            self, train_x=move(self.train_x), train_y=move(self.train_y),
            val_x=move(self.val_x), val_y=move(self.val_y), mean=move(self.mean),
            std=move(self.std), clean_x=move(self.clean_x),
            evals={k: (x.to(device), y.to(device)) for k, (x, y) in self.evals.items()})

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """`x` standardised with the training statistics (unchanged without `normalize`)."""
        if self.mean is None or self.std is None:
            return x
        return (x - self.mean) / self.std


# ---- loading ----------------------------------------------------------------------------------

def load_data(target: str, kwargs: Mapping[str, Any] | None, seed: int,
              base_dir: Path | str = ".", task: str = "classification") -> DataBundle:
    """Load the data set `target` with keyword arguments `kwargs` for a run seeded by `seed`.

    `target` is a built-in name (`DATASETS`), an `.npz` file, an IDX images file, or user code
    `"file.py:factory"` / `"package.module:factory"`; relative paths are taken from `base_dir`
    (the spec's directory). `kwargs` mixes the data set's own keywords and `DATA_OPTIONS`;
    missing ones take their defaults. `task` (the loss's, `mrc.losses.TASKS`) says what the
    targets must be: integer class labels, float targets, or 0/1 labels (see `_labels`).
    Raises `DataError` with a one-line message.
    """
    own = dict(kwargs or {})
    options = {p.name: own.pop(p.name, p.default) for p in DATA_OPTIONS}
    raw, name = _examples(str(target), own, seed, Path(base_dir))
    if "train_set" in raw or "loaders" in raw:
        return _dataset_bundle(raw, options, seed, name, task)
    bundle = _bundle(raw, options, seed, name, task)
    return dataclasses.replace(bundle, task=task) if task != bundle.task else bundle


def is_factory_ref(target: str) -> bool:
    """Whether `target` names user code (`….py:name` or `module:name`) rather than a file."""
    module, sep, attr = target.rpartition(":")
    return bool(sep and module and attr and attr.replace(".", "_").isidentifier())


def _examples(target: str, own: dict[str, Any], seed: int,
              base_dir: Path) -> tuple[Mapping[str, Any], str]:
    entry = DATASETS.get(target)
    if entry is not None:
        names = [p.name for p in entry.params]
        for key in own:
            if key not in names:
                known = names + [p.name for p in DATA_OPTIONS]
                guess = did_you_mean(key, known)
                tip = f"; did you mean `{guess}`?" if guess else ""
                raise DataError(f"data set `{entry.name}` has no parameter `{key}`{tip}")
        args = {p.name: _copy(p.default) for p in entry.params if not p.required}
        args.update(own)
        if isinstance(args.get("root"), str):  # a data set's folder, relative to the spec
            args["root"] = str(base_dir / Path(args["root"]).expanduser())
        return entry.build(seed, **args), entry.name
    if is_factory_ref(target):
        return _factory(target, own, seed, base_dir), target
    path = Path(target).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if target.isidentifier() and not path.exists():
        guess = DATASETS.suggest(target)
        tip = (f"did you mean `{guess}`?" if guess
               else f"built-ins are {', '.join(DATASETS.names())}")
        raise DataError(f"unknown data set `{target}`; {tip}")
    if own:
        options = ", ".join(p.name for p in DATA_OPTIONS)
        raise DataError(f"{target}: a data file takes only the data options ({options}), "
                        f"not `{next(iter(own))}`")
    if path.name.lower().endswith(".npz"):
        return read_npz(path), target
    if is_idx_path(path):
        return read_idx_pair(path), target
    if not path.exists():
        raise DataError(f"data file {target} not found")
    raise DataError(f"{target}: unknown data file type: give an .npz archive, an IDX images "
                    f"file (…-images-idx3-ubyte, .idx), or user code \"file.py:factory\"")


def _factory(ref: str, own: dict[str, Any], seed: int, base_dir: Path) -> Mapping[str, Any]:
    """Call a user factory; it gets `seed` too if it has a parameter of that name."""
    from mrc.usercode import UserCodeError, call_user, load_callable

    try:
        fn = load_callable(ref, base_dir)
        args = dict(own)
        if "seed" not in args and _takes_seed(fn):
            args["seed"] = seed
        result = call_user(fn, ref, **args)
    except UserCodeError as e:
        raise DataError(e.message) from e
    sets = _datasets(result, ref)
    if sets is not None:
        return sets
    if isinstance(result, Mapping):
        return result
    if isinstance(result, tuple | list) and len(result) in (2, 4):
        return dict(zip(("x", "y", "x_test", "y_test"), result, strict=False))
    raise DataError(f"{ref} returned a {type(result).__name__}; a data factory must return a dict "
                    f"with `x`, `y` (and optionally `x_test`, `y_test`), a tuple (x, y), a "
                    f"torch Dataset, a (train, validation) pair of Datasets, or DataLoaders")


def _datasets(result: Any, ref: str) -> dict[str, Any] | None:
    """A factory's Dataset(s) or DataLoader(s) as the loader's raw dict (`train_set`/`val_set`
    or `loaders`, and `classes` when the factory's dict gives it); None for arrays."""
    from torch.utils.data import DataLoader, Dataset

    def kind(v: Any) -> str | None:
        return "loader" if isinstance(v, DataLoader) else "set" if isinstance(v, Dataset) else None

    classes = None
    if isinstance(result, Mapping) and "train" in result:
        train, val, classes = result["train"], result.get("val"), result.get("classes")
    elif isinstance(result, tuple | list) and len(result) == 2 and kind(result[0]) is not None:
        train, val = result
    elif kind(result) is not None:
        train, val = result, None
    else:
        return None
    what = kind(train)
    if what is None:
        raise DataError(f"{ref}: `train` is a {type(train).__name__}, not a torch Dataset or "
                        f"DataLoader")
    if val is not None and kind(val) != what:
        raise DataError(f"{ref}: give the training and validation data both as Datasets or both "
                        f"as DataLoaders, not a {type(train).__name__} and a {type(val).__name__}")
    if what == "loader":
        return {"loaders": (train, val), "classes": classes}
    return {"train_set": train, "val_set": val, "classes": classes}


def _takes_seed(fn: Any) -> bool:
    try:
        return "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _bundle(raw: Mapping[str, Any], options: Mapping[str, Any], seed: int,
            name: str, task: str = "classification") -> DataBundle:
    """Apply the data options, in the order of the module docstring, and build the bundle."""
    for key in ("x", "y"):
        if key not in raw:
            found = ", ".join(f"`{k}`" for k in raw) or "nothing"
            raise DataError(f"{name}: the data needs `x` and `y`, but has {found}")
    if ("x_test" in raw) != ("y_test" in raw):
        raise DataError(f"{name}: the data has only one of `x_test` and `y_test`; give both")
    x, y = _features(raw["x"], "x", name), _labels(raw["y"], "y", name, task)
    _same_length(x, y, "x", "y", name)
    test: Batch | None = None
    if "x_test" in raw:
        tx, ty = _features(raw["x_test"], "x_test", name), _labels(raw["y_test"], "y_test", name, task)
        _same_length(tx, ty, "x_test", "y_test", name)
        if tx.shape[1:] != x.shape[1:]:
            raise DataError(f"{name}: `x_test` examples have shape {tuple(tx.shape[1:])} but `x` "
                            f"examples have {tuple(x.shape[1:])}")
        test = (tx, ty)
    classes = _class_count(raw.get("classes"), y, test, name, task)

    keep = options.get("keep")
    if keep is not None:
        x, y, test, classes = _keep(list(keep) if isinstance(keep, list | tuple) else [keep],
                                    x, y, test, classes, name)

    if test is not None:
        (train_x, train_y), (val_x, val_y) = (x, y), test
    else:
        n = len(y)
        n_val = round(float(options["val"]) * n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(
            stream_seed(seed, _SPLIT_STREAM)))
        val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
        train_x, train_y, val_x, val_y = x[train_idx], y[train_idx], x[val_idx], y[val_idx]

    limit = int(options["limit"] or 0)
    if 0 < limit < len(train_y):
        generator = torch.Generator().manual_seed(stream_seed(seed, _LIMIT_STREAM))
        chosen = torch.randperm(len(train_y), generator=generator)[:limit].sort().values
        train_x, train_y = train_x[chosen], train_y[chosen]
    kept = _val_subset(options, len(val_y))
    if kept is not None:
        val_x, val_y = val_x[kept], val_y[kept]

    batch = int(options["batch"])
    if len(train_y) == 0:
        after = "the class subset and " if keep is not None else ""
        raise DataError(f"{name}: no training examples are left after {after}the validation split")
    if options["drop_last"] and len(train_y) < batch:
        raise DataError(f"{name}: drop_last with batch={batch} leaves no batch: there are only "
                        f"{len(train_y)} training examples")

    clean_x = val_x
    shape = tuple(int(d) for d in train_x.shape[1:])
    patches, augment = make_augment(options.get("augment"), seed, classes, shape)
    stream = _stream_options(options, name, dataset=False)
    if patches is not None and not patches.after_normalize:
        train_x = patches.apply(train_x, train_y, _TRAIN_PATCH_STREAM)
        val_x = patches.apply(val_x, val_y, _VAL_PATCH_STREAM)

    mean = std = None
    if options["normalize"]:
        mean = train_x.mean(dim=0)
        spread = train_x.std(dim=0, unbiased=False)
        std = torch.where(spread > 0, spread, torch.ones_like(spread))  # constant features stay
    if isinstance(patches, PaperPatches):  # `normalize(…)` first in the pipeline: before the patch
        lead, augment = leading_normalize(augment)
        for step in lead:
            m = torch.tensor(step.mean, dtype=train_x.dtype).view(-1, 1, 1).expand(shape)
            s = torch.tensor(step.std, dtype=train_x.dtype).view(-1, 1, 1).expand(shape)
            mean, std = (m.clone(), s.clone()) if mean is None else (mean + std * m, std * s)
    if mean is not None and std is not None:
        train_x, val_x, clean_x = ((t - mean) / std for t in (train_x, val_x, clean_x))
    if patches is not None and patches.after_normalize:  # the paper's: on normalised images
        if isinstance(patches, PaperPatches) and patches.redraw:  # per epoch, as the authors do
            step = redraw_patch(patches, train_y, _TRAIN_PATCH_STREAM)
            augment = Augment((step, *(augment.steps if augment is not None else ())), seed)
        else:
            train_x = patches.apply(train_x, train_y, _TRAIN_PATCH_STREAM)
        val_x = patches.apply(val_x, val_y, _VAL_PATCH_STREAM)
    if augment is not None:  # evaluation splits are stored evaluation-ready
        val_x, clean_x = augment.evaluate(val_x), augment.evaluate(clean_x)

    train_x, train_y = train_x.contiguous(), train_y.contiguous()
    return DataBundle(
        train_x=train_x, train_y=train_y, val_x=val_x.contiguous(), val_y=val_y.contiguous(),
        in_shape=augment.out_shape(shape) if augment is not None else shape, classes=classes,
        batch_size=batch, shuffle=bool(options["shuffle"]), drop_last=bool(options["drop_last"]),
        seed=seed, name=name, mean=mean, std=std, clean_x=clean_x.contiguous(), patches=patches,
        keep=tuple(int(k) for k in keep) if isinstance(keep, list | tuple)
        else (None if keep is None else (int(keep),)),
        augment=augment, stream=stream,
        train_set=ArraySet(train_x, train_y) if stream is not None else None)


def _stream_options(options: Mapping[str, Any], name: str, dataset: bool) -> StreamOptions | None:
    """The DataLoader settings when the training data stream (None: in memory). `stream`
    none (auto) streams Datasets and keeps arrays in memory."""
    stream = options.get("stream")
    on = dataset if stream is None else bool(stream)
    workers = int(options.get("workers") or 0)
    persistent = bool(options.get("persistent_workers"))
    prefetch = options.get("prefetch")
    if not on:
        for key, given in (("workers", workers), ("persistent_workers", persistent),
                           ("prefetch", prefetch is not None)):
            if given:
                raise DataError(f"{name}: `{key}` sets up a DataLoader, but these data stay in "
                                f"memory; add `stream = true` to stream them")
        return None
    for key, given in (("persistent_workers", persistent), ("prefetch", prefetch is not None)):
        if given and workers == 0:
            raise DataError(f"{name}: `{key}` needs worker processes; set `workers` > 0")
    return StreamOptions(workers=workers, pin_memory=options.get("pin_memory"),
                         persistent_workers=persistent,
                         prefetch=None if prefetch is None else int(prefetch))


def _dataset_bundle(raw: Mapping[str, Any], options: Mapping[str, Any], seed: int,
                    name: str, task: str = "classification") -> DataBundle:
    """The bundle of data that come as Datasets (streamed) or as the user's DataLoaders, whose
    targets `task` reads (class labels, or float targets for regression and multi-label)."""
    for key, why in (("keep", "relabels classes"), ("normalize", "needs the training split's "
                     "statistics; use `augment = normalize(mean, std)`")):
        if options.get(key):
            raise DataError(f"{name}: `{key}` {why} of in-memory arrays; a Dataset streams "
                            f"(`stream = false` loads it into memory first)")
    if options.get("stream") is False and "train_set" in raw:  # small enough: load it once
        return dataclasses.replace(_bundle(_materialised(raw, name, task), options, seed, name, task),
                                   task=task)
    batch = int(options["batch"])
    if "loaders" in raw:
        return _loader_bundle(raw, options, seed, name, task)
    train, val = raw["train_set"], raw.get("val_set")
    n = length_of(train, f"{name}'s training Dataset")
    if n == 0:
        raise DataError(f"{name}: the training Dataset is empty")
    from torch.utils.data import Subset

    if val is None:
        n_val = round(float(options["val"]) * n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(
            stream_seed(seed, _SPLIT_STREAM)))
        val = Subset(train, order[:n_val].sort().values.tolist())
        train = Subset(train, order[n_val:].sort().values.tolist())
    else:
        length_of(val, f"{name}'s validation Dataset")
    limit = int(options["limit"] or 0)
    if 0 < limit < len(train):
        generator = torch.Generator().manual_seed(stream_seed(seed, _LIMIT_STREAM))
        chosen = torch.randperm(len(train), generator=generator)[:limit].sort().values
        train = Subset(train, chosen.tolist())
    kept = _val_subset(options, length_of(val, f"{name}'s validation Dataset"))
    if kept is not None:
        val = Subset(val, kept.tolist())
    if len(train) == 0:
        raise DataError(f"{name}: no training examples are left after the validation split")
    if options["drop_last"] and len(train) < batch:
        raise DataError(f"{name}: drop_last with batch={batch} leaves no batch: there are only "
                        f"{len(train)} training examples")
    from mrc.data.stream import sample_message

    try:
        examples = [read_example(train, i, name, task) for i in range(min(2, len(train)))]
    except Exception as err:
        raise DataError(sample_message(err)) from None
    first = [x for x, _ in examples]
    # a classification Dataset states its class count; a float target's size is the output's
    classes = (_dataset_classes(raw.get("classes"), train, name) if task == "classification"
               else int(examples[0][1].numel()))
    shape = tuple(int(d) for d in first[0].shape)
    if any(tuple(x.shape) != shape for x in first):
        raise DataError(f"{name}: the first examples have different shapes ({shape} and "
                        f"{tuple(first[-1].shape)}); a batch needs one shape")
    patches, augment = make_augment(options.get("augment"), seed, classes, shape)
    if patches is not None:
        raise DataError(f"{name}: `patch` transforms in-memory arrays once; a Dataset streams "
                        f"(`stream = false` loads it into memory first)")
    return DataBundle(
        train_x=None, train_y=None, val_x=None, val_y=None,
        in_shape=augment.out_shape(shape) if augment is not None else shape, classes=classes,
        batch_size=batch, shuffle=bool(options["shuffle"]), drop_last=bool(options["drop_last"]),
        seed=seed, name=name, augment=augment, train_set=train, val_set=val,
        stream=_stream_options(options, name, dataset=True), first_x=torch.stack(first),
        first_y=torch.stack([y for _, y in examples]), task=task)


def _val_subset(options: Mapping[str, Any], n: int) -> torch.Tensor | None:
    """The sorted indices `val_limit` keeps of `n` validation examples (None: all of them),
    drawn from a fixed generator so that every seed is evaluated on the same examples."""
    limit = int(options.get("val_limit") or 0)
    if not 0 < limit < n:
        return None
    generator = torch.Generator().manual_seed(_VAL_LIMIT_SEED)
    return torch.randperm(n, generator=generator)[:limit].sort().values


def _loader_bundle(raw: Mapping[str, Any], options: Mapping[str, Any], seed: int,
                   name: str, task: str = "classification") -> DataBundle:
    """The bundle of a factory's own DataLoaders: used as given (batches, order, transforms)."""
    train, val = raw["loaders"]
    if options.get("augment"):
        raise DataError(f"{name}: the factory's DataLoaders are used as given; put the "
                        f"augmentation in their Datasets, or return Datasets instead")
    for key in ("limit", "val_limit"):
        if options.get(key):
            raise DataError(f"{name}: `{key}` needs a Dataset; the factory's DataLoaders are used "
                            f"as given")
    x, y = _first_batch(train, name)
    length_of(train, f"{name}'s training DataLoader")
    classes = (_dataset_classes(raw.get("classes"), getattr(train, "dataset", None), name)
               if task == "classification" else int(y[0].numel()))
    batch = getattr(train, "batch_size", None) or int(options["batch"])
    return DataBundle(
        train_x=None, train_y=None, val_x=None, val_y=None,
        in_shape=tuple(int(d) for d in x.shape[1:]), classes=classes, batch_size=int(batch),
        shuffle=False, seed=seed, name=name, loaders=(train, val),
        stream=_stream_options(options, name, dataset=True), first_x=x[:2].to(torch.float32),
        first_y=y[:2].to(torch.int64 if task == "classification" else torch.float32),
        task=task)


def _first_batch(loader: Any, name: str) -> Batch:
    from mrc.data.stream import SampleError, sample_message
    from mrc.usercode import describe_user_error

    try:
        batch = next(iter(loader))
    except StopIteration:
        raise DataError(f"{name}: the training DataLoader yields no batch") from None
    except SampleError as err:
        raise DataError(sample_message(err)) from None
    except Exception as err:
        raise DataError(f"{name}: reading the first batch: {describe_user_error(err)}") from None
    if not isinstance(batch, tuple | list) or len(batch) < 2 or not isinstance(batch[0], torch.Tensor):
        raise DataError(f"{name}: a DataLoader batch must be a pair (inputs, labels) of tensors")
    return batch[0], batch[1]


def _dataset_classes(hint: Any, dataset: Any, name: str) -> int:
    """The class count of streamed data: the factory's `classes`, else the Dataset's `classes`
    attribute (a count or torchvision's list of names), else its `targets` (largest + 1)."""
    if hint is not None:
        return _count_hint(hint, name)
    for source in (dataset, getattr(dataset, "dataset", None)):  # a Subset's underlying set
        if source is None:
            continue
        given = getattr(source, "classes", None)
        if given is not None:
            return len(given) if isinstance(given, list | tuple) else _count_hint(given, name)
        targets = getattr(source, "targets", None)
        if targets is not None and len(targets):
            return int(torch.as_tensor(np.asarray(targets)).max()) + 1
    raise DataError(f"{name}: mrc cannot tell the number of classes of this Dataset; give the "
                    f"Dataset a `classes` attribute, or return {{'train': …, 'val': …, "
                    f"'classes': N}} from the factory")


def _materialised(raw: Mapping[str, Any], name: str, task: str = "classification") -> dict[str, Any]:
    """Datasets read into arrays once (`stream = false`), for the in-memory path."""
    from mrc.data.stream import sample_message

    def read(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            items = [read_example(data, i, name, task) for i in range(len(data))]
        except Exception as err:
            raise DataError(sample_message(err)) from None
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])

    out: dict[str, Any] = {}
    out["x"], out["y"] = read(raw["train_set"])
    if raw.get("val_set") is not None:
        out["x_test"], out["y_test"] = read(raw["val_set"])
    classes = raw.get("classes")
    if classes is None and task == "classification":
        try:
            classes = _dataset_classes(None, raw["train_set"], name)
        except DataError:
            classes = None
    if classes is not None:
        out["classes"] = classes
    return out


def _keep(keep: list[Any], x: torch.Tensor, y: torch.Tensor, test: Batch | None, classes: int,
          name: str) -> tuple[torch.Tensor, torch.Tensor, Batch | None, int]:
    """Keep only the classes in `keep`, relabelled to their positions in `keep`."""
    labels = [int(k) for k in keep]
    if not labels:
        raise DataError(f"{name}: `keep` is empty; list the classes to keep, or leave it out")
    repeated = sorted({k for k in labels if labels.count(k) > 1})
    if repeated:
        raise DataError(f"{name}: `keep` lists class {repeated[0]} more than once")
    present = set(y.unique().tolist())
    if test is not None:
        present |= set(test[1].unique().tolist())
    absent = [k for k in labels if k not in present]
    if absent:
        missing = ", ".join(map(str, absent))
        raise DataError(f"{name}: `keep` names class{'es' if len(absent) > 1 else ''} {missing} "
                        f"not present in the data (its labels are {_span(sorted(present))})")
    relabel = torch.full((max(classes, *labels) + 1,), -1, dtype=torch.int64)
    relabel[torch.tensor(labels)] = torch.arange(len(labels))

    def select(xs: torch.Tensor, ys: torch.Tensor) -> Batch:
        new = relabel[ys]
        mask = new >= 0
        return xs[mask], new[mask]

    x, y = select(x, y)
    if test is not None:
        test = select(*test)
    return x, y, test, len(labels)


def _class_count(hint: Any, y: torch.Tensor, test: Batch | None,
                 name: str, task: str = "classification") -> int:
    """Classes a model must predict: the builder's count if given, else the largest label + 1.

    An inferred count may not exceed `MAX_INFERRED_CLASSES`; every label must be below a given
    count. Errors name the label's array and its first index. For float targets (regression,
    multi-label) it is the targets' feature size, what the model must output per example.
    """
    if task != "classification":
        if test is not None and test[1].shape[1:] != y.shape[1:]:
            raise DataError(f"{name}: `y_test` targets have shape {tuple(test[1].shape[1:])} but `y` "
                            f"targets have {tuple(y.shape[1:])}")
        return math.prod(y.shape[1:])
    splits = [("y", y)] + ([("y_test", test[1])] if test is not None else [])
    key, top, where = max(((k, int(t.max()), int(t.argmax())) for k, t in splits if len(t)),
                          key=lambda e: e[1], default=("y", -1, -1))
    if hint is None:
        if top + 1 > MAX_INFERRED_CLASSES:
            raise DataError(f"{name}: `{key}` has label {top} at index {where}, which would make "
                            f"{top + 1} classes (more than {MAX_INFERRED_CLASSES:,} are not "
                            f"inferred from labels; labels must be 0..classes-1, or state the "
                            f"count as `classes`)")
        return top + 1
    count = _count_hint(hint, name)
    if top >= count:
        raise DataError(f"{name}: `{key}` has label {top} at index {where}, out of range for "
                        f"{count} classes (labels must be 0..{count - 1})")
    return count


def _count_hint(hint: Any, name: str) -> int:
    """A stated class count: a positive whole number (a Python or 0-d numpy/torch value)."""
    try:
        value = hint.item() if hasattr(hint, "item") else hint
    except (ValueError, RuntimeError):  # an array of more than one element
        value = hint
    if isinstance(value, bool) or not isinstance(value, int | np.integer | float) \
            or value != int(value) or int(value) < 1:
        raise DataError(f"{name}: `classes` must be a positive whole number, not {value!r}")
    return int(value)


def _features(value: Any, key: str, name: str) -> torch.Tensor:
    t = _tensor(value, key, name)
    if not (t.is_floating_point() or _is_integer(t)):
        raise DataError(f"{name}: `{key}` must hold numbers, not {t.dtype}")
    if t.ndim == 0:
        raise DataError(f"{name}: `{key}` must have one row per example, not be a scalar")
    features = t.to(device="cpu", dtype=torch.float32)
    bad = ~torch.isfinite(features)
    if bool(bad.any()):  # NaN or ±inf, or a float64 value beyond float32's range
        first = int(bad.flatten().nonzero()[0])
        index = np.unravel_index(first, tuple(features.shape))
        original = float(t.flatten()[first])
        what = (f"the value {original:g}, beyond float32's range," if math.isfinite(original)
                else f"a non-finite value ({original})")
        where = ", ".join(str(int(i)) for i in index)
        raise DataError(f"{name}: `{key}` has {what} at index [{where}] (example {int(index[0])}); "
                        f"inputs must be finite float32 numbers")
    return features[:, None] if features.ndim == 1 else features


class FloatLabels(DataError):
    """Float targets where a classification loss wants class labels (the spec's loss may be the
    wrong one: binding says so in a hint)."""


def _labels(value: Any, key: str, name: str, task: str = "classification") -> torch.Tensor:
    """The targets as the loss's task wants them: integer class labels (N,) for classification,
    float32 targets (N, …) for regression (a vector (N,) as (N, 1): one output per example), 0/1
    float32 labels (N, C) for multi-label."""
    t = _tensor(value, key, name).to("cpu")
    if task == "regression":
        return _float_targets(t, key, name)
    if task == "multilabel":
        return _multilabels(t, key, name)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise DataError(f"{name}: `{key}` must be one label per example, shape (N,), "
                        f"not {tuple(t.shape)}")
    if t.is_floating_point():
        bad = ~((t == t.round()) & (t.abs() < _EXACT_FLOAT_LABEL))
        if bool(bad.any()):
            at = int(bad.nonzero()[0])
            raise FloatLabels(f"{name}: `{key}` must hold integer class labels, but has "
                              f"{float(t[at])!r} at index {at}")
    elif not _is_integer(t):
        raise DataError(f"{name}: `{key}` must hold integer class labels, not {t.dtype}")
    t = t.to(torch.int64)
    if len(t) and int(t.min()) < 0:
        at = int(t.argmin())
        raise DataError(f"{name}: `{key}` has a negative label {int(t[at])} at index {at}; "
                        f"labels must be 0, 1, 2, …")
    return t


def _float_targets(t: torch.Tensor, key: str, name: str) -> torch.Tensor:
    """Regression targets: finite float numbers, one row per example."""
    if not t.is_floating_point():
        raise DataError(f"{name}: `{key}` holds integer labels ({t.dtype}), but the loss is a "
                        f"regression loss that wants float targets: store them as floats, or "
                        f"name a classification loss (`loss cross_entropy`)")
    if t.ndim == 0:
        raise DataError(f"{name}: `{key}` must have one row per example, not be a scalar")
    out = t.to(torch.float32)
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        first = int(bad.flatten().nonzero()[0])
        index = ", ".join(str(int(i)) for i in np.unravel_index(first, tuple(out.shape)))
        raise DataError(f"{name}: `{key}` has a non-finite target ({float(t.flatten()[first])}) at "
                        f"index [{index}]; targets must be finite float32 numbers")
    return out[:, None] if out.ndim == 1 else out


def _multilabels(t: torch.Tensor, key: str, name: str) -> torch.Tensor:
    """Multi-label targets: (N, C) numbers in [0, 1] (0/1 labels, or soft labels)."""
    if t.ndim != 2:
        raise DataError(f"{name}: `{key}` must be one row of 0/1 labels per example, shape (N, C), "
                        f"not {tuple(t.shape)}")
    out = t.to(torch.float32)
    bad = ~((out >= 0) & (out <= 1))
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise DataError(f"{name}: `{key}` has {float(t[i, j])!r} at index [{i}, {j}]; multi-label "
                        f"targets are 0 or 1 (or a probability between)")
    return out


def _tensor(value: Any, key: str, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        array = np.asarray(value)
        if array.dtype.kind == "u" and array.size and int(array.max()) > np.iinfo(np.int64).max:
            raise DataError(f"{name}: `{key}` holds a value beyond int64's range "
                            f"({int(array.max())})")
        if array.dtype.kind in "iu":
            array = array.astype(np.int64)
        elif array.dtype.kind == "f":
            array = array.astype(np.float64 if array.dtype.itemsize > 4 else np.float32)
        elif array.dtype.kind != "b":
            raise TypeError(f"dtype {array.dtype}")
        return torch.from_numpy(np.ascontiguousarray(array))
    except (TypeError, ValueError) as e:
        raise DataError(f"{name}: `{key}` is not a numeric array ({e})") from e


def _is_integer(t: torch.Tensor) -> bool:
    return t.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _same_length(x: torch.Tensor, y: torch.Tensor, xk: str, yk: str, name: str) -> None:
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{name}: `{xk}` has {x.shape[0]} examples but `{yk}` has {y.shape[0]} "
                        f"labels")


def _span(labels: list[int]) -> str:
    if labels and labels == list(range(labels[0], labels[-1] + 1)) and len(labels) > 2:
        return f"{labels[0]}..{labels[-1]}"
    return ", ".join(map(str, labels))


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value
