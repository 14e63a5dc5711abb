"""Feeding a run: training batches and evaluation splits, from device tensors or a DataLoader.

The trainer's loop draws its batches from a *batch source* (`Feed.train`), one loop for both:

- `MemorySource` — the data are tensors on the training device (the default for arrays): a
  batch is `x[idx]` for the index tensors of `DataBundle.batch_indices(epoch)`, and the random
  per-sample transforms (`mrc.data.augment.Augment`) run on the whole batch on the device. With
  no augmentation this is exactly the loop's old indexing: no extra copy, no extra sync.
- `StreamSource` — a `torch.utils.data.DataLoader` (workers, pinned memory, persistent workers)
  over a Dataset (an image folder, a user Dataset, or arrays with `stream = true`). Its batch
  sampler (`EpochBatches`) yields exactly `batch_indices(epoch)`, each index paired with the
  epoch, and each sample is transformed in the worker from (seed, epoch, index) alone — so a
  streamed run sees the batches of an in-memory run of the same arrays, whatever the number of
  workers, and a resumed run starts at batch `run.batch` of its epoch.
- `LoaderSource` — DataLoaders a user factory returned, iterated as given (their order is
  theirs: a resume skips the epoch's first `run.batch` batches).

Evaluation splits are iterables of batches (`evaluate_batches` scores any): slices of device
tensors, or a DataLoader in order, always through the deterministic part of the augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mrc.data.augment import EVAL_EPOCH, Augment
from mrc.data.files import DataError
from mrc.usercode import describe_user_error


def stream_seed(seed: int, stream: int) -> int:
    """The torch generator seed of one random stream of a run: `seed * 1_000_003 + stream`.

    Streams ≥ 0 are epochs (batch order); negative ones are the validation split, the limit and
    the DataLoader's own generator.
    """
    return (seed * 1_000_003 + stream) % 2**63

if TYPE_CHECKING:
    from mrc.data.loader import DataBundle

Batch = tuple[torch.Tensor, torch.Tensor]

_LOADER_STREAM = -3
"""The random stream of the DataLoader's own generator (its workers' base seed): drawn from the
run's seed, never from torch's global generator, which the run's checkpoint holds."""


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """How a streamed data set is read: the DataLoader's settings (see DATA_OPTIONS)."""

    workers: int = 0
    pin_memory: bool | None = None
    """None: pin when training on CUDA."""
    persistent_workers: bool = False
    prefetch: int | None = None
    """Batches loaded ahead by each worker (None: torch's default)."""


# ---- examples ------------------------------------------------------------------------------------

class ArraySet(Dataset):
    """In-memory examples as a Dataset (arrays streamed with `stream = true`)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class StreamError(DataError, RuntimeError):
    """Streamed data failed while a run read it (one line; the CLI prints it as an error)."""


class SampleError(Exception):
    """Reading one example failed; the message is one line (the user's file:line when the
    failure is in user code). Raised in a worker, it reaches the main process as text."""


def as_example(x: Any) -> torch.Tensor:
    """One input as a float32 tensor: tensors and arrays as they are, a Pillow image as
    torchvision's ToTensor makes it (C, H, W) in [0, 1]."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float32)
    if hasattr(x, "getbands") and hasattr(x, "size"):  # a PIL image, without importing Pillow
        array = np.asarray(x, dtype=np.float32) / 255.0
        array = array[:, :, None] if array.ndim == 2 else array
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


def as_label(y: Any) -> torch.Tensor:
    """One class label as a 0-d int64 tensor."""
    value = y.item() if hasattr(y, "item") else y
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer) or value != int(value):
        raise TypeError(f"a class label must be a whole number, not {value!r}")
    return torch.tensor(int(value), dtype=torch.int64)


def as_target(y: Any) -> torch.Tensor:
    """One float target (regression, multi-label) as a float32 tensor of at least one element
    axis: a number is read as (1,), as an array target (N,) is read as (N, 1)."""
    t = torch.as_tensor(np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y),
                        dtype=torch.float32)
    return t.reshape(1) if t.ndim == 0 else t


def read_example(data: Any, i: int, name: str,
                 task: str = "classification") -> tuple[torch.Tensor, torch.Tensor]:
    """Example `i` of `data` as (float32 input, target): an int64 class label, or for a
    regression or multi-label `task` a float32 target; any failure is a one-line `SampleError`
    naming `name` (and the user's file:line when user code raised it)."""
    from torch.utils.data import Subset

    while isinstance(data, Subset):  # the user's own index, in messages too
        data, i = data.dataset, int(data.indices[i])
    try:
        item = data[i]
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise TypeError(f"an example must be a pair (input, label), not {type(item).__name__}")
        target = as_label(item[1]) if task == "classification" else as_target(item[1])
        return as_example(item[0]), target
    except SampleError:
        raise
    except Exception as err:  # the user's __getitem__: its error, in one line, where it happened
        raise SampleError(f"{name}: example {i}: {describe_user_error(err)}") from None


def sample_message(err: BaseException) -> str:
    """The one line of a `SampleError`, also when a DataLoader worker re-raised it with the
    worker's traceback appended."""
    text = str(err).strip()
    if "Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(f"{SampleError.__name__}: ", 1)[-1]
    return text


class TrainView(Dataset):
    """The training examples as the streamed path reads them: key (epoch, index) → the example,
    transformed by the random per-sample pipeline from (seed, epoch, index) alone."""

    def __init__(self, data: Any, augment: Augment | None, name: str,
                 task: str = "classification") -> None:
        self.data, self.augment, self.name, self.task = data, augment, name, task

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]) -> Batch:
        epoch, i = key
        x, y = read_example(self.data, i, self.name, self.task)
        if self.augment is not None:
            x = self.augment.sample(x, i, epoch)
        return x, y


class EvalView(Dataset):
    """Examples as evaluation reads them: the deterministic part of the pipeline, or with
    `random` the training transforms drawn at the fixed evaluation epoch."""

    def __init__(self, data: Any, augment: Augment | None, name: str, random: bool = False,
                 task: str = "classification") -> None:
        self.data, self.augment, self.name, self.random, self.task = data, augment, name, random, task

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Batch:
        x, y = read_example(self.data, i, self.name, self.task)
        if self.augment is not None:
            x = (self.augment.sample(x, i, EVAL_EPOCH) if self.random
                 else self.augment.evaluate(x[None])[0])
        return x, y


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """The batch sampler of a streamed run: the batches of `order(epoch)` from `start` on, each
    index paired with the epoch (set both before iterating)."""

    def __init__(self, order: Callable[[int], list[torch.Tensor]]) -> None:
        self.order = order
        self.epoch = self.start = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for idx in self.order(epoch)[self.start:]:
            yield [(epoch, i) for i in idx.tolist()]

    def __len__(self) -> int:
        return max(0, len(self.order(self.epoch)) - self.start)


def make_loader(dataset: Dataset, options: StreamOptions, device: torch.device, seed: int, *,
                batch_sampler: Sampler | None = None, batch: int = 1) -> DataLoader:
    """A DataLoader with the run's settings; its generator is seeded from the run's seed, so
    starting it never draws from torch's global generator (and the run stays reproducible)."""
    workers = options.workers
    pin = options.pin_memory if options.pin_memory is not None else device.type == "cuda"
    extra: dict[str, Any] = {}
    if workers > 0:
        extra["persistent_workers"] = options.persistent_workers
        if options.prefetch is not None:
            extra["prefetch_factor"] = options.prefetch
    generator = torch.Generator().manual_seed(stream_seed(seed, _LOADER_STREAM))
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                          pin_memory=pin and device.type == "cuda", generator=generator, **extra)
    return DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers,
                      pin_memory=pin and device.type == "cuda", generator=generator, **extra)


def _moved(batches: Iterable[Any], device: torch.device, dtype: torch.dtype,
           skip: int = 0, float_targets: bool = False) -> Iterator[Batch]:
    """Batches of a DataLoader on the device (non-blocking from pinned memory): inputs in
    `dtype`, targets int64 class labels or, with `float_targets`, in `dtype`; a failure in a
    user Dataset becomes one `DataError` line."""
    target = dtype if float_targets else torch.int64
    it = iter(batches)
    try:
        for k, item in enumerate(it):
            if k < skip:
                continue
            x, y = item[0], item[1]
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise StreamError(f"a DataLoader batch must be a pair of tensors (inputs, labels), "
                                  f"not ({type(x).__name__}, {type(y).__name__})")
            blocking = not x.is_pinned()
            yield (x.to(device, dtype, non_blocking=not blocking),
                   y.to(device, target, non_blocking=not blocking))
    except SampleError as err:
        raise StreamError(sample_message(err)) from None
    finally:
        del it


# ---- batch sources --------------------------------------------------------------------------------

class MemorySource:
    """Training batches indexed from tensors on the device (see the module docstring)."""

    streamed = False

    def __init__(self, data: DataBundle, x: torch.Tensor, y: torch.Tensor) -> None:
        self.data, self.x, self.y = data, x, y
        self.augment = data.augment

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        x, y, device, augment = self.x, self.y, self.x.device, self.augment
        batches = self.data.batch_indices(epoch)
        if augment is None:
            for i in range(start, len(batches)):
                idx = batches[i].to(device)
                yield x[idx], y[idx]
        else:
            for i in range(start, len(batches)):
                idx = batches[i].to(device)
                yield augment.train(x[idx], idx, epoch), y[idx]

    def examples(self, epoch: int) -> list[torch.Tensor] | None:
        """The training examples of each batch of `epoch` (CPU index tensors)."""
        return self.data.batch_indices(epoch)

    def close(self) -> None:
        pass


class StreamSource:
    """Training batches from a DataLoader whose batch sampler yields `batch_indices(epoch)`;
    with persistent workers one loader serves every epoch."""

    streamed = True

    def __init__(self, data: DataBundle, device: torch.device, dtype: torch.dtype) -> None:
        assert data.train_set is not None and data.stream is not None
        self.device, self.dtype = device, dtype
        self.sampler = EpochBatches(data.batch_indices)
        view = TrainView(data.train_set, data.augment, data.name, data.task)
        self.float_targets = data.task != "classification"
        self.seed = stream_seed(data.seed, _LOADER_STREAM)
        self.loader = make_loader(view, data.stream, device, data.seed, batch_sampler=self.sampler)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        self.sampler.epoch, self.sampler.start = epoch, start
        # the workers' base seed (what a user Dataset's own randomness draws from) is the
        # epoch's, so a resumed run's workers start as the uninterrupted run's did that epoch
        self.loader.generator.manual_seed(stream_seed(self.seed, epoch))
        return _moved(self.loader, self.device, self.dtype, float_targets=self.float_targets)

    def examples(self, epoch: int) -> list[torch.Tensor] | None:
        """The training examples of each batch of `epoch` (CPU index tensors): the sampler's."""
        return self.sampler.order(epoch)

    def close(self) -> None:
        iterator = getattr(self.loader, "_iterator", None)  # persistent workers end with the run
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


class LoaderSource:
    """Training batches from the user's own DataLoader, as given."""

    streamed = True

    def __init__(self, loader: Any, device: torch.device, dtype: torch.dtype,
                 float_targets: bool = False) -> None:
        self.loader, self.device, self.dtype = loader, device, dtype
        self.float_targets = float_targets

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # a DistributedSampler-like sampler reshuffles by epoch
            sampler.set_epoch(epoch)
        return _moved(self.loader, self.device, self.dtype, skip=start,
                      float_targets=self.float_targets)

    def examples(self, epoch: int) -> list[torch.Tensor] | None:
        """None: the user's loader does not say which examples its batches hold."""
        return None

    def close(self) -> None:
        pass


# ---- the feed of a run ---------------------------------------------------------------------------

@dataclass
class Feed:
    """What the trainer reads: the training batch source, the in-memory tensors where there are
    some (for the lowerings that read them: brains' own order, `best` merges), and the
    evaluation splits as fresh iterables of batches."""

    train: MemorySource | StreamSource | LoaderSource
    train_x: torch.Tensor | None
    train_y: torch.Tensor | None
    val_x: torch.Tensor | None
    val_y: torch.Tensor | None
    val_batches: Callable[[], Iterable[Batch]]
    train_eval_batches: Callable[[], Iterable[Batch]]
    evals: dict[str, Batch]
    augment: Augment | None = None

    @property
    def in_memory(self) -> bool:
        return self.train_x is not None and self.val_x is not None

    def train_eval_x(self) -> torch.Tensor:
        """The in-memory training inputs as evaluation sees them (a copy when transformed)."""
        assert self.train_x is not None
        return self.augment.evaluate(self.train_x) if self.augment is not None else self.train_x

    def close(self) -> None:
        self.train.close()


def _slices(x: torch.Tensor, y: torch.Tensor, batch: int,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[Batch]:
    for i in range(0, len(x), batch):
        xs = x[i:i + batch]
        yield (transform(xs) if transform is not None else xs), y[i:i + batch]


def targets(y: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Targets on the device; float targets (regression, multi-label) in the inputs' dtype."""
    return y.to(device, dtype) if y.is_floating_point() else y.to(device)


def feed(data: DataBundle, device: torch.device, dtype: torch.dtype, eval_batch: int) -> Feed:
    """The run's feed on `device`, inputs in `dtype` (see the module docstring)."""
    augment = data.augment
    options = data.stream or StreamOptions()
    train_x = train_y = val_x = val_y = None
    if data.train_x is not None:
        train_x, train_y = data.train_x.to(device, dtype), targets(data.train_y, device, dtype)
    if data.val_x is not None:
        val_x, val_y = data.val_x.to(device, dtype), targets(data.val_y, device, dtype)
    evals = {n: (x.to(device, dtype), targets(y, device, dtype)) for n, (x, y) in data.evals.items()}

    floats = data.task != "classification"
    source: MemorySource | StreamSource | LoaderSource
    if data.loaders is not None:
        source = LoaderSource(data.loaders[0], device, dtype, floats)
    elif data.stream is not None and data.train_set is not None:
        source = StreamSource(data, device, dtype)
    else:
        assert train_x is not None and train_y is not None
        source = MemorySource(data, train_x, train_y)

    def streamed(dataset: Any, name: str) -> Callable[[], Iterable[Batch]]:
        view = EvalView(dataset, augment, name, task=data.task)
        loader = make_loader(view, options, device, data.seed, batch=eval_batch)
        return lambda: _moved(loader, device, dtype, float_targets=floats)

    val_batches: Callable[[], Iterable[Batch]]
    if val_x is not None:
        vx, vy = val_x, val_y
        val_batches = lambda: _slices(vx, vy, eval_batch)  # noqa: E731 (already evaluation-ready)
    elif data.loaders is not None and data.loaders[1] is not None:
        user_val = data.loaders[1]
        val_batches = lambda: _moved(user_val, device, dtype, float_targets=floats)  # noqa: E731
    elif data.val_set is not None:
        val_batches = streamed(data.val_set, data.name)
    else:
        val_batches = lambda: iter(())  # noqa: E731 (no validation split: metrics are NaN)

    train_eval: Callable[[], Iterable[Batch]]
    if train_x is not None:
        tx, ty = train_x, train_y
        fix = augment.evaluate if augment is not None else None
        train_eval = lambda: _slices(tx, ty, eval_batch, fix)  # noqa: E731
    elif data.train_set is not None:
        train_eval = streamed(data.train_set, data.name)
    else:
        assert data.loaders is not None
        user_train = data.loaders[0]
        train_eval = lambda: _moved(user_train, device, dtype,  # noqa: E731 (as the user's loader gives it)
                                    float_targets=floats)
    return Feed(source, train_x, train_y, val_x, val_y, val_batches, train_eval, evals, augment)


BatchSource = MemorySource | StreamSource | LoaderSource
"""What the trainer's loop draws training batches from: `epoch(epoch, start)` iterates the
batches of `epoch` from batch `start` on; `examples(epoch)` lists each batch's training examples
(None where the source cannot know them)."""


def needs_memory(graph: Any, feed: Feed) -> str:
    """Why the compiled schedule cannot run on this feed ("" when it can): a brain's own batch
    order indexes the training split in memory, a `best` merge scores brains on the in-memory
    validation split."""
    for op in graph.ops():
        if feed.train_x is None and getattr(op, "source", None) == "own":
            return ("a brain with `data = own` draws its own batches from the training split in "
                    "memory, but these data stream; use `data = shared`, or `stream = false`")
        merge = getattr(op, "merge", None)
        if feed.val_x is None and getattr(merge, "rule", None) == "best":
            return ("a `best` merge scores the brains on the validation split in memory, but "
                    "these data stream; use `mean` or `weighted`, or `stream = false`")
    return ""


def length_of(obj: Any, what: str) -> int:
    """`len(obj)`, or a one-line DataError saying that mrc needs it."""
    if isinstance(obj, Sized):
        try:
            return len(obj)
        except TypeError:
            pass
    raise DataError(f"{what} has no length; mrc needs the number of examples (or batches) of "
                    f"an epoch: give a map-style Dataset, or a DataLoader over one")

