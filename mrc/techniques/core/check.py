"""Checks of the everyday statements: let, model, data, optimizer, schedule, train, eval,
early_stopping, init.

`let` is checked in source order (`mrc.check.expressions.check_let`); each of the others after
every statement was seen (`deferred`), so its arguments may use `let`s defined anywhere in the
spec, and each sets its field of the `Program`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrc import ast
from mrc.check.arguments import is_user_ref
from mrc.check.expressions import Bad, check_let, plain
from mrc.check.registry import finisher, statement
from mrc.diagnostics import Note, Span
from mrc.program import EVAL_METRICS, Component, EarlyStopping, EvalSet, Init, LossSpec, MetricSpec, TrainSettings
from mrc.registry import Param, Registry, did_you_mean

if TYPE_CHECKING:
    from mrc.check.checker import Checker

TRAIN_PARAMS = (
    Param("epochs", "int", None, "passes over the training set", lo=1, nullable=True),
    Param("steps", "int", None, "optimizer steps (instead of epochs)", lo=1, nullable=True),
    Param("seed", "int", 0, "seeds initialisation, data order and any randomness", lo=0),
    Param("eval_every", "int", 0, "evaluate every N steps (0: after every epoch)", lo=0),
    Param("log_every", "int", 10, "write a metrics line every N steps", lo=1),
    Param("label_smoothing", "float", 0.0, "label smoothing of the cross-entropy", lo=0, hi=1,
          hi_open=True),
    Param("device", "choice", "auto", "where to train", choices=("auto", "cpu", "cuda")),
    Param("dtype", "choice", "float32", "parameter dtype", choices=("float32", "float64")),
    Param("checkpoint_every", "int", 0, "checkpoint every N steps (0: every epoch)", lo=0),
    Param("grad_clip", "float", 0.0, "clip the gradient norm to this (0: off)", lo=0),
    Param("kernels", "choice", "auto", "how update groups run (auto: Triton where it runs, else "
          "torch)", choices=("auto", "torch", "triton", "torch.optim")),
    Param("threads", "int", 0, "torch intra-op threads (0: chosen for the model's size)", lo=0),
    Param("eval_batch", "int", 0, "examples per evaluation batch (0: the training batch size)", lo=0),
    Param("precision", "choice", "32", "`32` (float32), `bf16` (bfloat16 autocast) or `16-mixed` "
          "(float16 autocast with a gradient scaler, CUDA only); parameters stay float32",
          choices=("32", "bf16", "16-mixed")),
)
PRECISION_MEANT = {"16": "16-mixed", "fp16": "16-mixed", "float16": "16-mixed", "half": "16-mixed",
                   "bf16-mixed": "bf16", "bfloat16": "bf16", "float32": "32", "fp32": "32",
                   "32-true": "32"}
"""Other libraries' names of the precisions, with the one `precision` takes (for the hint)."""
EARLY_STOPPING_PARAMS = (
    Param("metric", "str", "val_loss", "metric watched: `val_loss`, `val_acc` (a classification "
          "loss), `val_NAME` of a user `metric`, or `SET.loss` / `SET.acc` / `SET.NAME` of an `eval` set"),
    Param("patience", "int", 5, "evaluations without improvement before stopping", lo=1),
    Param("min_delta", "float", 0.0, "smallest change that counts as improvement", lo=0),
    Param("restore_best", "bool", True, "end with the best weights seen"),
)
INIT_PARAMS = (
    Param("exclude", "strs", [], "parameter-name globs not to load (e.g. a new head)"),
    Param("strict", "bool", False, "fail when a tensor is missing or has another shape"),
)


def registries() -> dict[str, Registry]:
    """The built-ins a `model`, `data`, `optimizer` or `schedule` statement may name."""
    from mrc.data import DATASETS
    from mrc.models import MODELS
    from mrc.optim import OPTIMIZERS, SCHEDULES

    return {"model": MODELS, "data": DATASETS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES}


def _data_options() -> tuple[Param, ...]:
    from mrc.data import DATA_OPTIONS

    return tuple(DATA_OPTIONS)


def _registry(kw: str) -> Registry:
    return registries()[kw]


statement("let", "a named constant", technique="core", bind=True,
          usage="let NAME = VALUE")(check_let)


@statement("model", "the network", technique="core", target=True, args=True, once=True,
           deferred=True, required=True, required_hint="add e.g. `model mlp(hidden=[128])`",
           usage="model NAME(args…)", targets=lambda: _registry("model"))
def check_model(ck: Checker, st: ast.Statement | None) -> None:
    """`model NAME(ARGS)`: a built-in network or a user factory."""
    ck.program["model"] = ck.component(st, "model", _registry("model"))


@statement("data", "the data set", technique="core", target=True, args=True, once=True,
           deferred=True, required=True, required_hint="add e.g. `data digits(batch=64)`",
           usage="data NAME(args…)", targets=lambda: _registry("data"))
def check_data(ck: Checker, st: ast.Statement | None) -> None:
    """`data NAME(ARGS)`: a built-in data set, a user factory or a data file, with the options
    every data set takes (batch, val, …); `augment = NAME(…)` names a data transform."""
    # `augment` holds transform words (`hflip`) that are not values: it is checked on its own
    arg = next((a for a in (st.args or () if st is not None else ())
                if a.name is not None and a.name.id == "augment"), None)
    rest = st if st is None or arg is None else dataclasses.replace(
        st, args=tuple(a for a in st.args or () if a is not arg))
    options = tuple(p for p in _data_options() if p.name != "augment")
    comp = ck.component(rest, "data", _registry("data"), options)
    expr = None
    if arg is not None or "data.augment" in ck.overrides:
        expr = ck.override("data.augment", arg.value if arg else None)
    else:
        ck.settable.add("data.augment")
    if comp is not None:
        comp = dataclasses.replace(comp, kwargs={**comp.kwargs, "augment": None})
    if comp is not None and expr is not None:
        spans: dict[str, Span] = {"augment": expr.span}
        augment = _augments(ck, expr, spans)
        comp = dataclasses.replace(comp, kwargs={**comp.kwargs, "augment": augment},
                                   arg_spans={**comp.arg_spans, **spans})
    ck.program["data"] = comp


def _augments(ck: Checker, expr: ast.Expr, spans: dict[str, Span]
              ) -> dict[str, Any] | list[dict[str, Any]] | None:
    """`augment = T` or `augment = [T1, T2, …]`: each transform checked (`_augment`); a list
    becomes a list of dicts, with each item's span kept as `augment.K` for the errors binding
    finds once the data's shape is known. `patch` transforms the data set once, so it comes
    first. None when something is wrong (reported)."""
    if not isinstance(expr, ast.ListExpr):
        spans["augment.0"] = expr.span
        return _augment(ck, expr)
    if not expr.items:
        ck.r.error("`augment` lists no transform", expr.span,
                   hint="leave `augment` out, or write e.g. `augment = [random_crop(28, padding=2), hflip]`")
        return None
    out: list[dict[str, Any]] = []
    for k, item in enumerate(expr.items):
        spans[f"augment.{k}"] = item.span
        got = _augment(ck, item)
        if got is None:
            continue
        if got["kind"] == "patch" and k > 0:
            ck.r.error("`patch` transforms the data set once, when it is loaded, before the "
                       "per-sample transforms: put it first in the list", item.span)
            continue
        out.append(got)
    return out if len(out) == len(expr.items) else None


def _augment(ck: Checker, expr: ast.Expr) -> dict[str, Any] | None:
    """One transform, `patch(size, free, only, style, …)`, `random_crop(size, padding)`, … (or a
    bare name): its checked settings as a plain dict for the loader; None when it is wrong
    (reported at its span)."""
    from mrc.data import AUGMENTS

    call = expr if isinstance(expr, ast.Call) else None
    word = call.func if call is not None else expr
    if not isinstance(word, ast.Name):
        ck.r.error("`augment` names a data transform, or lists some", expr.span,
                   hint="write e.g. `augment = [random_crop(28, padding=2), hflip]`")
        return None
    entry = AUGMENTS.get(word.id)
    if entry is None:
        guess = AUGMENTS.suggest(word.id)
        ck.r.error(f"unknown data transform `{word.id}`", word.span,
                   hint=f"did you mean `{guess}`?" if guess else
                   f"transforms are {', '.join(f'`{n}`' for n in AUGMENTS.names())}")
        return None
    values, arg_spans = ck.arguments(f"`{entry.name}`", entry.params, call.args if call else (),
                                     expr.span, "data.augment.")
    if len(values) != len(entry.params):
        return None
    if entry.name == "normalize" and values["std"] is not None and not values["std"]:
        ck.r.error("`normalize` needs at least one `std` value", expr.span)
        return None
    if entry.name == "patch" and values["free"] + values["only"] > 1.0 + 1e-12:
        ck.r.error(f"`free` + `only` = {values['free'] + values['only']:g}: the fractions of "
                   "patch-free and patch-only examples add up to more than 1", expr.span)
        return None
    if entry.name == "patch":
        from mrc.data.augment import patch_knobs_misplaced

        misplaced = patch_knobs_misplaced(values["style"], values)
        if misplaced:
            ck.r.error(f"`{misplaced[0]}` is not a knob of the `{values['style']}` patch",
                       arg_spans.get(misplaced[0], expr.span),
                       hint="`margin` places the `square` variant; `z`, `v` and `only_scale` "
                       "shape the paper's patch (`style = paper`, the default)")
            return None
    return {"kind": entry.name, **values}


@statement("optimizer", "the base optimizer (integrator)", technique="core", target=True,
           args=True, once=True, deferred=True, required=True,
           required_hint="add e.g. `optimizer sgd(lr=0.1, momentum=0.9)`",
           usage="optimizer NAME(args…)", targets=lambda: _registry("optimizer"))
def check_optimizer(ck: Checker, st: ast.Statement | None) -> None:
    """`optimizer NAME(ARGS)`: the integrator of every parameter without one of its own."""
    ck.program["optimizer"] = ck.component(st, "optimizer", _registry("optimizer"))


@statement("schedule", "the learning-rate schedule", technique="core", target=True, args=True,
           once=True, deferred=True, usage="schedule NAME(args…)",
           targets=lambda: _registry("schedule"))
def check_schedule(ck: Checker, st: ast.Statement | None) -> None:
    """`schedule NAME(ARGS)`; without one the learning rate is constant."""
    reg = _registry("schedule")
    if st is not None:
        ck.program["schedule"] = ck.component(st, "schedule", reg)
    else:
        constant = reg.get("constant")
        assert constant is not None
        ck.program["schedule"] = Component("constant", constant.defaults(), Span(ck.file, 0, 0, 0, 0))


@statement("train", "training length and settings", technique="core", args=True, once=True,
           deferred=True, usage="train(args…)")
def check_train(ck: Checker, st: ast.Statement | None) -> None:
    """`train(ARGS)`: length and settings of training (all optional; default one epoch)."""
    if st is not None and not ck.form(st):
        st = None
    args = st.args if st else None
    if args:
        args = tuple(dataclasses.replace(a, value=precision_form(ck, a.value))
                     if a.name is not None and a.name.id == "precision" else a for a in args)
    if "train.precision" in ck.overrides:
        ck.overrides["train.precision"] = precision_form(ck, ck.overrides["train.precision"])
    values, spans = ck.arguments("`train`", TRAIN_PARAMS, args,
                                 st.span if st else Span(ck.file, 0, 0, 0, 0), "train.")
    if values.get("epochs") is not None and values.get("steps") is not None:
        ck.r.error("give `epochs` or `steps`, not both", st.span if st else None)
    _check_precision(ck, values, spans)
    if values.get("epochs") is None and values.get("steps") is None:
        values["epochs"] = 1
    ck.program["train"] = TrainSettings(
        **{k: v for k, v in values.items() if k in TrainSettings.__slots__},
        span=st.span if st else None)


def precision_form(ck: Checker, expr: ast.Expr) -> ast.Expr:
    """`precision`'s value as a string where it is written as a number (`32`) or as `16-mixed`
    (which the grammar reads as the expression 16 − mixed); any other expression is left for the
    argument check to judge. Another library's name of a precision (`16`, `bf16-mixed`) is an
    error here, whose hint names the setting meant (the value becomes the default, `32`)."""
    if isinstance(expr, ast.Num):
        expr = ast.Str(expr.text, expr.span)
    elif isinstance(expr, ast.BinOp) and expr.op == "-" and isinstance(expr.right, ast.Name) \
            and isinstance(expr.left, ast.Num | ast.Name):
        left = expr.left.text if isinstance(expr.left, ast.Num) else expr.left.id
        expr = ast.Str(f"{left}-{expr.right.id}", expr.span)
    word = expr.value if isinstance(expr, ast.Str) else expr.id if isinstance(expr, ast.Name) else ""
    meant = PRECISION_MEANT.get(word)
    if meant is not None:
        ck.r.error(f"`precision` must be one of `32`, `bf16`, `16-mixed`, not `{word}`", expr.span,
                   hint=f"did you mean `precision = {meant}`?")
        return ast.Str("32", expr.span)
    return expr


def _check_precision(ck: Checker, values: dict[str, Any], spans: dict[str, Any]) -> None:
    """Mixed precision runs over float32 parameters, and float16 with a scaler only on CUDA."""
    precision = values.get("precision", "32")
    if precision == "32":
        return
    at = spans.get("precision")
    if values.get("dtype") == "float64":
        ck.r.error(f"`precision = {precision}` is mixed precision over float32 parameters; it "
                   "cannot combine with `dtype = float64`", at,
                   hint="drop `dtype = float64`, or train in `precision = 32`")
    if precision == "16-mixed" and values.get("device") == "cpu":
        ck.r.error("`precision = 16-mixed` (float16 autocast with a gradient scaler) needs CUDA, "
                   "and this run is on the CPU (`device = cpu`)", at,
                   hint="use `precision = bf16` on the CPU")


RESERVED_EVAL_NAMES = ("val", "train")
"""Names an evaluation set may not take: the splits every run reports already."""


@statement("eval", "a named evaluation set, evaluated beside the validation split",
           technique="core", bind=True, block=True,
           usage='eval NAME = SOURCE  (clean, patch_only, "file.npz" or "file.py:factory")')
def check_eval(ck: Checker, st: ast.Statement | None) -> None:
    """`eval NAME = SOURCE { factory arguments }`, in source order: a built-in transform of the
    held-out split (`clean`, `patch_only`), a data file, or user code with its arguments."""
    from mrc.data import EVAL_SOURCES

    assert st is not None
    if not ck.form(st):
        return
    assert st.name is not None and st.value is not None
    name, value = st.name.id, st.value
    seen: dict[str, Span] = ck.facts.setdefault("eval_spans", {})
    if name in RESERVED_EVAL_NAMES:
        ck.r.error(f"`{name}` cannot name an evaluation set: every run reports `{name}_loss` and "
                   f"`{name}_acc` already", st.name.span)
        return
    if name in seen:
        ck.r.error(f"evaluation set `{name}` is defined twice", st.name.span,
                   notes=[Note("first defined here", seen[name])])
        return
    kwargs: dict[str, Any] = {}
    for item in st.block.items if st.block else ():
        if not isinstance(item, ast.Assign) or len(item.key) != 1:
            ck.r.error("an `eval` block holds `name = value` arguments of its factory", item.span)
            continue
        try:
            kwargs[item.key[0].id] = plain(ck.value(item.value).value)
        except Bad:
            pass
    if isinstance(value, ast.Str):
        source, user = value.value, True
    elif isinstance(value, ast.Name) or (isinstance(value, ast.Call) and not value.args):
        word = value if isinstance(value, ast.Name) else value.func
        source, user = word.id, False
        if EVAL_SOURCES.get(source) is None:
            guess = EVAL_SOURCES.suggest(source)
            ck.r.error(f"unknown evaluation source `{source}`", word.span,
                       hint=f"did you mean `{guess}`?" if guess else
                       f"built-ins are {', '.join(f'`{n}`' for n in EVAL_SOURCES.names())}, or "
                       'give a data file or "file.py:factory" as a string')
            return
        if kwargs:
            ck.r.error(f"`{source}` takes no arguments", st.block.span)  # type: ignore[union-attr]
            return
    else:
        ck.r.error("an evaluation source is a name or a string", value.span,
                   hint='write `eval clean = clean` or `eval extra = "held_out.npz"`')
        return
    seen[name] = st.name.span
    ck.facts.setdefault("evals", []).append(
        EvalSet(name, source, st.span, value.span, kwargs, user))


@finisher
def collect_evals(ck: Checker) -> None:
    """The evaluation sets, in source order, become the program's."""
    ck.program["evals"] = tuple(ck.facts.get("evals", ()))


LOSS_USER_PARAMS = (
    Param("task", "choice", "classification", "what the user loss's targets are: class labels "
          "(classification), float targets (regression) or 0/1 targets (multilabel)",
          choices=("classification", "regression", "multilabel")),
)
"""What a user loss takes besides its own keyword arguments."""


def _train_arg(ck: Checker, name: str) -> ast.Arg | None:
    """The `train(NAME = …)` argument as written (None when not given)."""
    for st in ck.spec.statements:
        if st.keyword.id == "train":
            return next((a for a in st.args or () if a.name is not None and a.name.id == name), None)
    return None


@statement("loss", "what training minimises", technique="core", target=True, args=True, once=True,
           deferred=True, usage='loss NAME(args…)  or  loss "file.py:fn"(task=…, args…)',
           targets=lambda: _losses())
def check_loss(ck: Checker, st: ast.Statement | None) -> None:
    """`loss NAME(ARGS)`: a built-in loss (`mrc.losses.LOSSES`) or a user function with its task
    (default `classification`). Without it: cross-entropy with `train(label_smoothing)`."""
    losses = _losses()
    train = ck.program.get("train")
    smoothing = train.label_smoothing if train is not None else 0.0
    if st is None:
        ck.program["loss"] = LossSpec("cross_entropy", {"label_smoothing": smoothing})
        return
    given = _train_arg(ck, "label_smoothing")
    if given is not None:
        ck.r.error("label smoothing is given twice: `train(label_smoothing)` sets the default "
                   "cross-entropy's, and this spec names its loss", given.span,
                   hint="write `loss cross_entropy(label_smoothing=…)` and drop it from `train`",
                   notes=[Note("the loss is named here", st.span)])
    user = isinstance(st.target, ast.Str) or (st.target is not None and is_user_ref(st.target.id))
    comp = ck.component(st, "loss", losses, LOSS_USER_PARAMS if user else ())
    if comp is None:
        return
    kwargs = dict(comp.kwargs)
    if user:
        task = kwargs.pop("task", "classification")
        if ":" not in comp.name:
            ck.r.error(f'"{comp.name}" is not a user function', comp.span,
                       hint='write `loss "file.py:fn"` or `loss "package.module:fn"`')
            return
    else:
        entry = losses.get(comp.name)
        assert entry is not None
        task = str(entry.extra["task"])
    spec = LossSpec(comp.name, kwargs, task, user, st.span)
    if task != "classification":
        _refuse_class_options(ck, spec)
    ck.program["loss"] = spec


def _losses() -> Registry:
    from mrc.losses import LOSSES

    return LOSSES


def _refuse_class_options(ck: Checker, loss: LossSpec) -> None:
    """Data options that need class labels (`keep`, a `patch` transform) refused for a loss of
    another task, at the option's span."""
    data = ck.program.get("data")
    if data is None:
        return
    what = f"the loss `{loss.name}` is a {loss.task} loss (float targets, no classes)"
    if data.kwargs.get("keep") is not None:
        ck.r.error(f"`keep` selects classes, but {what}", data.arg_spans.get("keep", data.span),
                   notes=[Note("the loss is named here", loss.span)] if loss.span else ())
    augments = data.kwargs.get("augment")
    augments = augments if isinstance(augments, list | tuple) else [augments]
    if any(isinstance(a, dict) and a.get("kind") == "patch" for a in augments):
        ck.r.error(f"the `patch` transform plants a patch per class, but {what}",
                   data.arg_spans.get("augment", data.span),
                   notes=[Note("the loss is named here", loss.span)] if loss.span else ())


RESERVED_METRIC_NAMES = ("loss", "acc", "exact")
"""Names a user metric may not take: the built-in measures."""


@statement("metric", "a user metric, reported at every evaluation", technique="core", bind=True,
           block=True, usage='metric NAME = "file.py:fn" { mode = max }')
def check_metric(ck: Checker, st: ast.Statement | None) -> None:
    """`metric NAME = "file.py:fn" { mode = min|max, ARG = value … }`, in source order: a user
    function fn(output, target, **ARGS) → the batch's mean, reported as `val_NAME` and
    `SET.NAME`; `mode` (default `max`) says which way is better, for early stopping and sweeps."""
    assert st is not None
    if not ck.form(st):
        return
    assert st.name is not None and st.value is not None
    name, value = st.name.id, st.value
    seen: dict[str, Span] = ck.facts.setdefault("metric_spans", {})
    if name in RESERVED_METRIC_NAMES:
        ck.r.error(f"`{name}` cannot name a user metric: it is a built-in measure", st.name.span)
        return
    if name in seen:
        ck.r.error(f"metric `{name}` is defined twice", st.name.span,
                   notes=[Note("first defined here", seen[name])])
        return
    if not isinstance(value, ast.Str) or ":" not in value.value:
        ck.r.error("a metric is a user function given as a string", value.span,
                   hint='write `metric mae = "metrics.py:mae"` (fn(output, target) → a number)')
        return
    mode, kwargs = "max", {}
    for item in st.block.items if st.block else ():
        if not isinstance(item, ast.Assign) or len(item.key) != 1:
            ck.r.error("a `metric` block holds `mode = min|max` and `name = value` arguments of "
                       "its function", item.span)
            continue
        key = item.key[0].id
        if key == "mode":
            word = item.value.id if isinstance(item.value, ast.Name) else \
                item.value.value if isinstance(item.value, ast.Str) else None
            if word not in ("min", "max"):
                ck.r.error("`mode` is `min` (smaller is better) or `max` (larger is better)",
                           item.value.span)
                continue
            mode = word
            continue
        try:
            kwargs[key] = plain(ck.value(item.value).value)
        except Bad:
            pass
    seen[name] = st.name.span
    ck.facts.setdefault("metrics", []).append(
        MetricSpec(name, value.value, st.span, str(ck.base_dir), mode, kwargs))


@finisher
def collect_metrics(ck: Checker) -> None:
    """The user metrics, in source order, become the program's."""
    ck.program["metrics"] = tuple(ck.facts.get("metrics", ()))


def watchable(ck: Checker) -> list[str]:
    """The metrics this spec may watch (early stopping, sweeps), from what it has checked: the
    loss's task, its user metrics and evaluation sets."""
    from mrc.losses import TASK_METRICS

    loss = ck.program.get("loss") or LossSpec()
    user = tuple(m.name for m in ck.facts.get("metrics", ()))
    return metric_names(ck.facts.get("evals", ()), (*TASK_METRICS[loss.task], *user))


def metric_names(evals: list[EvalSet] | tuple[EvalSet, ...],
                 measures: tuple[str, ...] = EVAL_METRICS[1:]) -> list[str]:
    """The metrics a spec may watch: the validation split's and each evaluation set's `loss`
    and `measures` (the loss's task's metrics and the user's; default: accuracy)."""
    every = ("loss", *measures)
    return [*(f"val_{m}" for m in every), *(f"{e.name}.{m}" for e in evals for m in every)]


@statement("early_stopping", "stop when a validation metric stops improving", technique="core",
           args=True, once=True, deferred=True, usage="early_stopping(args…)")
def check_early_stopping(ck: Checker, st: ast.Statement | None) -> None:
    """`early_stopping(ARGS)`: stop when a metric of the validation split or of an evaluation
    set (`clean.acc`) stops improving."""
    ck.program["early_stopping"] = None
    if st is None or not ck.form(st):
        return
    values, spans = ck.arguments("`early_stopping`", EARLY_STOPPING_PARAMS, st.args, st.span,
                                 "early_stopping.")
    if len(values) != len(EARLY_STOPPING_PARAMS):
        return
    known = watchable(ck)
    metric = values["metric"]
    if metric not in known:
        guess = did_you_mean(metric, known)
        ck.r.error(f"unknown metric `{metric}`", spans.get("metric", st.span),
                   hint=f"did you mean `{guess}`?" if guess else
                   f"metrics are {', '.join(f'`{m}`' for m in known)}")
        return
    from mrc.losses import metric_mode

    modes = {m.name: m.mode for m in ck.facts.get("metrics", ())}
    ck.program["early_stopping"] = EarlyStopping(span=st.span, mode=metric_mode(metric, modes), **values)


@statement("init", "initial weights from a state_dict file", technique="core", target=True,
           args=True, once=True, deferred=True, usage='init "FILE.pt"(args…)')
def check_init(ck: Checker, st: ast.Statement | None) -> None:
    """`init "FILE.pt"(ARGS)`: initial weights; a relative path is taken from the spec's folder."""
    ck.program["init"] = None
    if st is None or not ck.form(st):
        return
    if not isinstance(st.target, ast.Str):
        ck.r.error("`init` needs the path of a state_dict file as a string",
                   st.target.span, hint='write `init "runs/pretrain/final.pt"`')  # type: ignore[union-attr]
        return
    values, _ = ck.arguments("`init`", INIT_PARAMS, st.args, st.span, "init.")
    path = Path(st.target.value)
    path = path if path.is_absolute() else ck.base_dir / path
    ck.program["init"] = Init(path, tuple(values.get("exclude", ())), values.get("strict", False),
                              st.target.span, st.target.value)
