"""Checks of the everyday statements: let, model, data, optimizer, schedule, train,
early_stopping, init.

`let` is checked in source order (`mrc.check.expressions.check_let`); each of the others after
every statement was seen (`deferred`), so its arguments may use `let`s defined anywhere in the
spec, and each sets its field of the `Program`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mrc import ast
from mrc.check.expressions import check_let
from mrc.check.registry import statement
from mrc.diagnostics import Span
from mrc.program import Component, EarlyStopping, Init, TrainSettings
from mrc.registry import Param, Registry

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
)
EARLY_STOPPING_PARAMS = (
    Param("metric", "choice", "val_loss", "validation metric watched",
          choices=("val_loss", "val_acc")),
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
    every data set takes (batch, val, …)."""
    ck.program["data"] = ck.component(st, "data", _registry("data"), _data_options())


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
    values, _ = ck.arguments("`train`", TRAIN_PARAMS, st.args if st else None,
                             st.span if st else Span(ck.file, 0, 0, 0, 0), "train.")
    if values.get("epochs") is not None and values.get("steps") is not None:
        ck.r.error("give `epochs` or `steps`, not both", st.span if st else None)
    if values.get("epochs") is None and values.get("steps") is None:
        values["epochs"] = 1
    ck.program["train"] = TrainSettings(
        **{k: v for k, v in values.items() if k in TrainSettings.__slots__},
        span=st.span if st else None)


@statement("early_stopping", "stop when a validation metric stops improving", technique="core",
           args=True, once=True, deferred=True, usage="early_stopping(args…)")
def check_early_stopping(ck: Checker, st: ast.Statement | None) -> None:
    """`early_stopping(ARGS)`: stop when a validation metric stops improving."""
    ck.program["early_stopping"] = None
    if st is None or not ck.form(st):
        return
    values, _ = ck.arguments("`early_stopping`", EARLY_STOPPING_PARAMS, st.args, st.span,
                             "early_stopping.")
    if len(values) == len(EARLY_STOPPING_PARAMS):
        ck.program["early_stopping"] = EarlyStopping(span=st.span, **values)


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
