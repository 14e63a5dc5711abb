"""Losses and metrics: what a run minimises and what its evaluations report.

`LOSSES` is the table of built-in losses a `loss` statement may name, each an `Entry` with its
typed parameters and the *task* it implies:

- `classification`: integer class labels (N,), the model outputs (N, classes) scores;
  `cross_entropy` (logits) and `nll` (log-probabilities). Metric: `acc` (argmax = label).
- `regression`: float targets of any shape (N, …), the model outputs the same shape;
  `mse`, `l1`, `smooth_l1`. No accuracy.
- `multilabel`: 0/1 float targets (N, C), the model outputs (N, C) logits; `bce_with_logits`.
  Metrics: `acc` (element-wise: logit > 0 equals the target) and `exact` (every label of an
  example right).

A user loss `"file.py:fn"` / `"pkg.mod:fn"` is called as `fn(output, target, **kwargs)` and returns
a scalar tensor (a mean over the batch); its task is declared (`task = regression`), default
`classification`. User metrics (`metric NAME = "file.py:fn"`) are called as `fn(output, target)`
and return a number: the batch's mean over its examples.

The loss op carries the choice (`fn`, its settings, the task, and for user code where it is
resolved from); `prepare` turns those fields into a `PreparedLoss` once, at lowering, so a step
calls one function and tests no strings. `Scoring` is what evaluation computes from them.

The module imports torch only when a loss is built or scored: the checker reads `LOSSES`, and
`mrc check` of a spec with errors must not pay for importing torch.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrc.registry import Param, Registry

if TYPE_CHECKING:
    import torch

TASKS = ("classification", "regression", "multilabel")
"""What a loss implies about the targets (see the module docstring)."""

TASK_METRICS: Mapping[str, tuple[str, ...]] = {
    "classification": ("acc",),
    "regression": (),
    "multilabel": ("acc", "exact"),
}
"""The built-in metrics each task defines, beside the loss (always measured)."""

LOSSES = Registry("loss")

Loss = Callable[..., Any]
"""A loss function: (output, target) → a tensor (the batch mean, or per element)."""


def _functional() -> Any:
    import torch.nn.functional as F

    return F


def _reduced(fn: Loss, reduction: str, **kwargs: Any) -> Loss:
    return partial(fn, reduction=reduction, **kwargs)


@LOSSES.register("cross_entropy", Param("label_smoothing", "float", 0.0, "label smoothing", lo=0,
                                        hi=1, hi_open=True),
                 doc="cross-entropy of logits (N, C) against class labels (N,)", task="classification")
def _cross_entropy(reduction: str, label_smoothing: float = 0.0) -> Loss:
    return _reduced(_functional().cross_entropy, reduction, label_smoothing=label_smoothing)


@LOSSES.register("nll", doc="negative log-likelihood of log-probabilities (N, C) against class "
                 "labels (N,): the model ends in log_softmax", task="classification", output="log_probs")
def _nll(reduction: str) -> Loss:
    return _reduced(_functional().nll_loss, reduction)


@LOSSES.register("mse", doc="mean squared error against float targets of the output's shape",
                 task="regression")
def _mse(reduction: str) -> Loss:
    return _reduced(_functional().mse_loss, reduction)


@LOSSES.register("l1", doc="mean absolute error against float targets of the output's shape",
                 task="regression")
def _l1(reduction: str) -> Loss:
    return _reduced(_functional().l1_loss, reduction)


@LOSSES.register("smooth_l1", Param("beta", "float", 1.0, "where the loss turns from quadratic to "
                                    "linear", lo=0, lo_open=True),
                 doc="Huber-like smooth L1 against float targets of the output's shape",
                 task="regression")
def _smooth_l1(reduction: str, beta: float = 1.0) -> Loss:
    return _reduced(_functional().smooth_l1_loss, reduction, beta=beta)


@LOSSES.register("bce_with_logits",
                 Param("pos_weight", "floats", None, "weight of the positive examples, one per "
                       "label (or one for all)", lo=0, nullable=True),
                 doc="binary cross-entropy of logits (N, C) against 0/1 targets (N, C) (multi-label)",
                 task="multilabel")
def _bce_with_logits(reduction: str, pos_weight: torch.Tensor | None = None) -> Loss:
    return _reduced(_functional().binary_cross_entropy_with_logits, reduction, pos_weight=pos_weight)


def task_of(name: str) -> str:
    """The task a built-in loss implies."""
    entry = LOSSES.get(name)
    if entry is None:
        raise ValueError(f"unknown loss `{name}`")
    return str(entry.extra["task"])


def metric_names(task: str, user: Iterable[str] = ()) -> tuple[str, ...]:
    """What an evaluation of a run with `task` reports besides `loss`, in order."""
    return (*TASK_METRICS[task], *user)


def op_fields(program: Any) -> dict[str, Any]:
    """The loss op's fields for `program`'s loss (`mrc.program.LossSpec`): what every expansion
    that adds a loss op writes on it."""
    loss = program.loss
    kwargs = dict(loss.kwargs)
    smoothing = 0.0 if loss.user else float(kwargs.pop("label_smoothing", 0.0))
    args = tuple((k, _frozen(v)) for k, v in kwargs.items())
    return {"fn": loss.name, "label_smoothing": smoothing, "args": args, "task": loss.task,
            "where": str(program.base_dir) if loss.user else ""}


def _frozen(v: Any) -> Any:
    return tuple(_frozen(x) for x in v) if isinstance(v, list | tuple) else v


# ---- the prepared loss ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreparedLoss:
    """A loss ready to call: `mean(output, target)` is the batch's scalar loss; `per_replica`
    the loss of each of B stacked replicas (outputs (B, N, …), targets (B, N, …)), each the mean
    over its own batch, in one call for a built-in (per-element losses over the flattened
    (B·N, …) tensor, then a mean over each replica's elements) and one call per replica for user
    code."""

    mean: Loss
    elementwise: Loss | None = None

    def per_replica(self, out: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        import torch

        if self.elementwise is None:
            return torch.stack([self.mean(o, y) for o, y in zip(out, ys, strict=True)])
        b = out.shape[0]
        return self.elementwise(out.flatten(0, 1), ys.flatten(0, 1)).reshape(b, -1).mean(1)


class UserLossError(RuntimeError):
    """A user loss or metric raised while training or evaluating: one line naming the reference,
    the error and the line of the user's file it came from."""


def guarded(fn: Callable[..., Any], ref: str) -> Callable[..., Any]:
    """`fn` whose exceptions become a `UserLossError` (a one-line report, not a traceback)."""
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            frames = traceback.extract_tb(e.__traceback__)
            where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if len(frames) > 1 else ""
            raise UserLossError(f"{ref} raised {type(e).__name__}: {_first_line(e)}{where}") from e
    return call


def prepare(fn: str, args: Iterable[tuple[str, Any]] = (), where: str = "", *,
            device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> PreparedLoss:
    """The loss op's choice as callables: a built-in `fn` with its settings `args`, or (with
    `where`, the folder a file reference is taken from) the user function `fn` called with
    `args` as keyword arguments. Raises `mrc.usercode.UserCodeError` for user code that cannot
    be loaded."""
    kwargs = dict(args)
    if where:
        from mrc.usercode import load_callable

        user = load_callable(fn, Path(where))
        return PreparedLoss(guarded(partial(user, **kwargs) if kwargs else user, fn))
    entry = LOSSES.get(fn)
    if entry is None:
        raise ValueError(f"unknown loss `{fn}`")
    unknown = sorted(set(kwargs) - {p.name for p in entry.params})
    if unknown:
        raise ValueError(f"loss `{fn}` has no setting `{unknown[0]}`")
    if kwargs.get("pos_weight") is not None:
        import torch

        kwargs["pos_weight"] = torch.tensor(kwargs["pos_weight"], device=device, dtype=dtype or torch.float32)
    return PreparedLoss(entry.build("mean", **kwargs), entry.build("none", **kwargs))


def prepare_op(op: Any, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> PreparedLoss:
    """`prepare` from a loss op's fields (`fn`, `label_smoothing`, `args`, `where`)."""
    args = tuple(op.args)
    if op.label_smoothing:
        args = (("label_smoothing", op.label_smoothing), *args)
    return prepare(op.fn, args, op.where, device=device, dtype=dtype)


# ---- metrics ----------------------------------------------------------------------------------


def _accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(1) == y).sum()


def _label_accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    right = ((out > 0) == (y > 0.5)).flatten(1)
    return right.float().mean(1).sum()


def _exact(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out > 0) == (y > 0.5)).flatten(1).all(1).sum()


BUILTIN_METRICS: Mapping[tuple[str, str], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    ("classification", "acc"): _accuracy,
    ("multilabel", "acc"): _label_accuracy,
    ("multilabel", "exact"): _exact,
}
"""(task, metric) → the metric summed over a batch's examples."""


@dataclass(frozen=True, slots=True)
class Scoring:
    """What an evaluation computes over a split: the mean loss, the task's metrics, and the
    user's (each a batch mean from `fn(output, target)`, weighted by the batch's size). `sums`
    holds, for each name in the order reported, fn(out, y) → the batch's sum over its examples."""

    task: str
    sums: tuple[tuple[str, Callable[[torch.Tensor, torch.Tensor], Any]], ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Every name an evaluation reports: `loss`, then the task's metrics, then the user's."""
        return tuple(n for n, _ in self.sums)

    def empty(self) -> dict[str, float]:
        return {n: math.nan for n in self.names}


def _number(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def _batch_sum(fn: Callable[..., Any]) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """A batch-mean function as the batch's sum over its examples."""
    return lambda o, y: _number(fn(o, y)) * len(y)


def scoring(loss: PreparedLoss | None = None, task: str = "classification",
            user: Iterable[tuple[str, Callable[..., Any]]] = ()) -> Scoring:
    """A `Scoring` with its per-batch functions prepared once (default: cross-entropy and
    accuracy, as every run was scored before losses could be chosen)."""
    mean = (loss or prepare("cross_entropy")).mean
    sums: list[tuple[str, Callable[[torch.Tensor, torch.Tensor], Any]]] = [("loss", _batch_sum(mean))]
    sums += [(m, BUILTIN_METRICS[(task, m)]) for m in TASK_METRICS[task]]
    sums += [(n, _batch_sum(f)) for n, f in user]
    return Scoring(task, tuple(sums))


def __getattr__(name: str) -> Any:
    """`CLASSIFICATION`, cross-entropy and accuracy (the scoring of a run that states no loss),
    made on first use: building it imports torch (PEP 562)."""
    if name == "CLASSIFICATION":
        value = globals()["CLASSIFICATION"] = scoring()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def scoring_of(graph: Any, metrics: Iterable[Any] = (), device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None) -> Scoring:
    """The scoring of a run: its graph's loss (the first loss op: every loss op of a run names
    the same loss) and the program's user metrics (`mrc.program.MetricSpec`)."""
    from mrc.ir.ops import Loss as LossOp

    op = next((o for o in graph.ops() if isinstance(o, LossOp)), None)
    if op is None:
        return scoring()
    user = [(m.name, load_metric(m)) for m in metrics]
    return scoring(prepare_op(op, device, dtype), op.task, user)


def load_metric(spec: Any) -> Callable[..., Any]:
    """A user metric's function, with its keyword arguments bound."""
    from mrc.usercode import load_callable

    fn = load_callable(spec.ref, Path(spec.where))
    return guarded(partial(fn, **dict(spec.kwargs)) if spec.kwargs else fn, f"metric `{spec.name}` ({spec.ref})")


def metric_mode(name: str, user_modes: Mapping[str, str] | None = None) -> str:
    """`min` or `max`: whether a smaller or a larger value of the metric `name` (`val_loss`,
    `val_acc`, `SET.exact`, `val_NAME` …) is better. Losses are minimised, accuracies maximised,
    a user metric goes as it declares (`mode`)."""
    measure = name.partition(".")[2] if "." in name else name.removeprefix("val_")
    if measure == "loss":
        return "min"
    if measure in ("acc", "exact"):
        return "max"
    return (user_modes or {}).get(measure, "max")


def check_binding(program: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  classes: int, r: Any) -> bool:
    """Before training: the loss (and each user metric) loads and accepts what the model outputs
    for a few examples `x` against their targets `y` — the output's shape fits the targets
    (the same shape for regression and multi-label; a score per class for classification) and
    the loss is a scalar tensor. Each problem is one line at the `loss` (or `metric`) statement,
    or the `data` statement when the spec names no loss; whether all is well."""
    import torch

    from mrc.usercode import UserCodeError

    loss = program.loss
    span = loss.span or program.data.span
    from mrc.ir.ops import Loss as LossOp

    try:
        prepared = prepare_op(LossOp(**op_fields(program)), dtype=x.dtype)
    except UserCodeError as e:
        r.error(e.message, span)
        return False
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception:  # the model's own errors are traced and reported elsewhere
        return True
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        return True
    target = y.to(out.dtype) if y.is_floating_point() else y
    name = f'"{loss.name}"' if loss.user else f"`{loss.name}`"
    shape = tuple(out.shape[1:])
    if loss.task == "classification" and not loss.user and (out.ndim != 2 or out.shape[1] < classes):
        r.error(f"the loss {name} wants a score per class, shape (N, {classes}), but the model "
                f"outputs {shape} per example", span)
        return False
    if loss.task != "classification" and out.shape != target.shape:
        r.error(f"the loss {name} compares the model's output with the targets element by element, "
                f"but the model outputs {shape} per example and the targets are "
                f"{tuple(target.shape[1:])}", span)
        return False
    entry = None if loss.user else LOSSES.get(loss.name)
    if entry is not None and entry.extra.get("output") == "log_probs":
        total = out.double().exp().sum(1)
        off = ((total - 1).abs() > 1e-4).nonzero()
        if len(off):
            i = int(off[0])
            r.error(f"the loss {name} wants log-probabilities, but the model's outputs are not: their "
                    f"exponentials sum to {float(total[i]):.4g}, not 1, for example {i}", span,
                    hint="end the model in log_softmax, or write `loss cross_entropy` (it takes logits)")
            return False
    try:
        value = prepared.mean(out, target)
    except UserLossError as e:
        r.error(f"the loss fails on the model's output {shape} and the targets {tuple(target.shape[1:])}: "
                f"{e}", span)
        return False
    except Exception as e:
        r.error(f"the loss {name} fails on the model's output {shape} and the targets "
                f"{tuple(target.shape[1:])}: {type(e).__name__}: {_first_line(e)}", span)
        return False
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        r.error(f"the loss {name} must return a scalar tensor (the batch's mean), not {got}", span)
        return False
    ok = True
    for m in program.metrics:
        try:
            fn = load_metric(m)
            _number(fn(out, target))
        except UserCodeError as e:
            r.error(e.message, m.span)
            ok = False
        except Exception as e:
            r.error(f"the metric fails on the model's output {shape} and the targets "
                    f"{tuple(target.shape[1:])}: {_first_line(e)}", m.span)
            ok = False
    return ok


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else ""


__all__ = [  # and CLASSIFICATION, made on first use (see __getattr__)
    "LOSSES",
    "TASKS",
    "TASK_METRICS",
    "PreparedLoss",
    "Scoring",
    "UserLossError",
    "check_binding",
    "metric_mode",
    "metric_names",
    "op_fields",
    "prepare",
    "prepare_op",
    "scoring",
    "scoring_of",
    "task_of",
]
