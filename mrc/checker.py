"""AST → Program: names, types, ranges, required and duplicate statements.

The checker reports every problem it finds (each at its span, with did-you-mean hints) before it
gives up, and never raises anything but `CompileError`. It knows the statement keywords of the
language; docs/language.md is the reference for each.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrc import ast
from mrc.diagnostics import CompileError, Note, Reporter, Span
from mrc.program import (
    Brain,
    Component,
    EarlyStopping,
    Init,
    Merge,
    Partition,
    Program,
    Select,
    Selector,
    SelectRandom,
    SelectSet,
    TrainSettings,
)
from mrc.registry import Param, Registry, did_you_mean


@dataclass(frozen=True, slots=True)
class Symbol:
    """A bare name that is not a `let` binding: an enumeration word such as `linear` or `FCF`."""

    name: str


@dataclass(frozen=True, slots=True)
class CallValue:
    """A call that is a value rather than a selector, e.g. `equal(4)` or `loguniform(1e-4, 1)`."""

    name: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Value:
    """An evaluated expression and where it came from."""

    value: Any
    span: Span


class _Bad(Exception):
    """An expression that could not be evaluated; already reported."""


# --- the statements of the language -------------------------------------------------------

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
MULTIRATE_PARAMS = (
    Param("first_fast_gradient", "choice", "shared",
          "where the first fast gradient of a slow step is taken",
          choices=("shared", "after_slow")),
)
BRAIN_KEYS = (
    Param("every", "int", 1, "the brain steps once per `every` steps of the fastest clock", lo=1),
    Param("lr", "float", None, "its step size (default: every × the base learning rate)", lo=0,
          nullable=True),
    Param("data", "choice", "shared", "which batches it sees", choices=("shared", "own")),
)
MERGE_RULES: dict[str, tuple[Param, ...]] = {
    "mean": (),
    "weighted": (Param("weights", "floats", doc="one weight per brain, in declaration order", lo=0),),
    "best": (Param("metric", "choice", "val_loss", "validation metric that picks the brain",
                   choices=("val_loss", "val_acc")),),
    "ema": (Param("decay", "float", 0.9, "weight of the running average", lo=0, hi=1, hi_open=True),),
}
MERGE_MOMENTUM = Param("momentum", "choice", "keep", "optimizer state at a merge",
                       choices=("keep", "reset", "average"))
PARTITION_KEYS = (
    Param("every", "int", 1, "the partition's rate: it updates once per `every` steps", lo=1),
    Param("lr", "float", None, "its step size (default: every × the base learning rate)", lo=0,
          nullable=True),
    Param("drift", "choice", "none", "multirate drift of a slow partition",
          choices=("none", "linear")),
)

# Statement keyword → (one-line meaning, the issue that gives it meaning when not yet supported).
KEYWORDS: dict[str, tuple[str, str | None]] = {
    "let": ("a named constant", None),
    "model": ("the network", None),
    "data": ("the data set", None),
    "optimizer": ("the base optimizer (integrator)", None),
    "schedule": ("the learning-rate schedule", None),
    "train": ("training length and settings", None),
    "early_stopping": ("stop when a validation metric stops improving", None),
    "init": ("initial weights from a state_dict file", None),
    "partition": ("a named set of parameters with its own rate and integrator", None),
    "multirate": ("options of multirate training", None),
    "brain": ("a copy of the network on its own time-scale", None),
    "merge": ("how brains are merged when their times align", None),
    "modules": ("module-wise training with local losses", "module-wise training"),
    "mgrit": ("layer-parallel training of a residual stack by MGRIT", "layer-parallel MGRIT training"),
    "sweep": ("a hyper-parameter search", "hyper-parameter sweeps"),
}
REQUIRED_KEYWORDS = ("model", "data", "optimizer")
SINGLE_KEYWORDS = ("model", "data", "optimizer", "schedule", "train", "early_stopping", "init",
                   "multirate", "merge", "modules", "sweep")

SELECTOR_WORDS = ("all", "rest", "weight", "bias")
RANDOM_SUBSET_RULES = ("sgd", "momentum", "nesterov")
SELECTOR_CALLS = ("params", "module", "type", "depth", "random")
CONSTANTS = {"true": True, "false": False, "none": None, "inf": math.inf}

_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow,
}


def _registries() -> dict[str, Registry]:
    from mrc.data import DATASETS
    from mrc.models import MODELS
    from mrc.optim import OPTIMIZERS, SCHEDULES

    return {"model": MODELS, "data": DATASETS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES}


def _data_options() -> tuple[Param, ...]:
    from mrc.data import DATA_OPTIONS

    return tuple(DATA_OPTIONS)


def is_user_ref(text: str) -> bool:
    """`"file.py:factory"`, `"package.module:factory"` or a data file path."""
    return ":" in text or "/" in text or "." in text


class Checker:
    """Checks one spec. Use `check(spec)`; constructor arguments are overrides (`--set`)."""

    def __init__(self, overrides: Mapping[str, ast.Expr] | None = None) -> None:
        self.r = Reporter()
        self.lets: dict[str, Value] = {}
        self.bad_lets: set[str] = set()  # lets whose value was an error (already reported)
        self.let_spans: dict[str, Span] = {}
        self.overrides = dict(overrides or {})
        self.used_overrides: set[str] = set()
        self.partition_names: list[str] = []

    # ---- expressions ---------------------------------------------------------------------

    def value(self, expr: ast.Expr) -> Value:
        """Evaluate an expression to a plain value (numbers, strings, lists, symbols, calls)."""
        if isinstance(expr, ast.Num):
            return Value(expr.value, expr.span)
        if isinstance(expr, ast.Str):
            return Value(expr.value, expr.span)
        if isinstance(expr, ast.Name):
            if expr.id in self.bad_lets:  # reported at the `let`; do not report its uses too
                raise _Bad
            if expr.id in self.lets:
                return Value(self.lets[expr.id].value, expr.span)
            if expr.id in CONSTANTS:
                return Value(CONSTANTS[expr.id], expr.span)
            return Value(Symbol(expr.id), expr.span)
        if isinstance(expr, ast.ListExpr):
            return Value([self.value(x).value for x in expr.items], expr.span)
        if isinstance(expr, ast.Neg):
            inner = self.value(expr.operand)
            if not _is_num(inner.value):
                self.r.error(f"cannot negate {_kind(inner.value)}", expr.span)
                raise _Bad
            return Value(-inner.value, expr.span)
        if isinstance(expr, ast.BinOp):
            if expr.op in "|&":
                self.r.error(f"`{expr.op}` combines parameter selectors and is only allowed in a "
                             "`partition` statement", expr.span)
                raise _Bad
            left, right = self.value(expr.left), self.value(expr.right)
            for side in (left, right):
                if isinstance(side.value, Symbol):
                    self._unknown_name(side.value.name, side.span)
                    raise _Bad
                if not _is_num(side.value):
                    self.r.error(f"arithmetic needs numbers, not {_kind(side.value)}", side.span)
                    raise _Bad
            if _too_large(expr.op, left.value, right.value):
                self.r.error("the result of this is too large", expr.span)
                raise _Bad
            try:
                result = _ARITH[expr.op](left.value, right.value)
            except (ZeroDivisionError, OverflowError) as err:
                self.r.error(f"cannot compute this: {err}", expr.span)
                raise _Bad from None
            if isinstance(result, complex):
                self.r.error("this power has no real value", expr.span)
                raise _Bad
            if isinstance(result, float) and result.is_integer() and expr.op != "/" and \
                    isinstance(left.value, int) and isinstance(right.value, int):
                result = int(result)
            return Value(result, expr.span)
        if isinstance(expr, ast.Call):
            if expr.func.id in SELECTOR_CALLS:
                self.r.error(f"`{expr.func.id}(…)` selects parameters and is only allowed in a "
                             "`partition` statement", expr.span)
                raise _Bad
            args, kwargs = [], {}
            for a in expr.args:
                v = self.value(a.value).value
                if a.name is None:
                    args.append(v)
                else:
                    kwargs[a.name.id] = v
            return Value(CallValue(expr.func.id, tuple(args), kwargs), expr.span)
        raise AssertionError(f"unknown expression {expr!r}")

    def _unknown_name(self, name: str, span: Span) -> None:
        hint = did_you_mean(name, list(self.lets))
        self.r.error(f"unknown name `{name}`", span,
                     hint=f"did you mean `{hint}`?" if hint else "define it first with `let "
                     f"{name} = …`")

    # ---- keyword arguments against a parameter table ------------------------------------

    def arguments(self, what: str, params: tuple[Param, ...], args: tuple[ast.Arg, ...] | None,
                  at: Span, prefix: str = "") -> tuple[dict[str, Any], dict[str, Span]]:
        """Check call arguments against `params`; return the values (defaults filled) and spans."""
        given: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        first: dict[str, Span] = {}
        names = [p.name for p in params]
        positional = 0
        for i, arg in enumerate(args or ()):
            if arg.name is None:
                if any(a.name for a in (args or ())[:i]):
                    self.r.error("a positional argument cannot follow a named one; name this one",
                                 arg.span, hint=f"its parameters are {_names(names)}")
                    continue
                if positional >= len(params):
                    self.r.error(f"{what} takes {len(params)} positional argument"
                                 f"{'s' if len(params) != 1 else ''} at most; name this one",
                                 arg.span, hint=f"its parameters are {_names(names)}")
                    continue
                name, name_span = params[positional].name, arg.span
                positional += 1
            else:
                name, name_span = arg.name.id, arg.name.span
            if name in first:
                self.r.error(f"`{name}` is given twice", name_span,
                             notes=[Note("first given here", first[name])])
                continue
            first[name] = name_span
            param = next((p for p in params if p.name == name), None)
            if param is None:
                guess = did_you_mean(name, names)
                hint = f"did you mean `{guess}`?" if guess else (
                    f"{what} takes {_names(names)}" if names else f"{what} takes no arguments")
                self.r.error(f"unknown argument `{name}` for {what}", name_span, hint=hint)
                continue
            expr = self._override(f"{prefix}{name}", arg.value)
            try:
                v = self.value(expr)
            except _Bad:
                continue
            self._store(param, v, given, spans, name)
        for param in params:
            key = f"{prefix}{param.name}"
            if param.name not in first and key in self.overrides:  # not given in the spec
                try:
                    v = self.value(self._override(key, None))
                except _Bad:
                    continue
                self._store(param, v, given, spans, param.name)
        for param in params:
            if param.name not in given and param.name not in first:
                if param.required:
                    self.r.error(f"{what} needs `{param.name}`", at,
                                 hint=f"add `{param.name}=…`: {param.doc}" if param.doc else None)
                else:
                    given[param.name] = param.default
        order = {p.name: i for i, p in enumerate(params)}
        given = dict(sorted(given.items(), key=lambda kv: order.get(kv[0], len(order))))
        spans = dict(sorted(spans.items(), key=lambda kv: order.get(kv[0], len(order))))
        return given, spans

    def _override(self, key: str, expr: ast.Expr | None) -> ast.Expr:
        if key in self.overrides:
            self.used_overrides.add(key)
            return self.overrides[key]
        assert expr is not None
        return expr

    def _store(self, param: Param, v: Value, given: dict[str, Any], spans: dict[str, Span],
               name: str) -> None:
        raw = v.value
        if isinstance(raw, Symbol) and param.kind != "choice":
            if param.kind == "str":
                raw = raw.name
            else:
                self._unknown_name(raw.name, v.span)
                return
        if isinstance(raw, Symbol):
            raw = raw.name
        if raw is None and param.kind == "choice" and "none" in param.choices:
            raw = "none"  # `none` is both the constant and a choice word (drift = none)
        try:
            value, err = param.validate(raw)
        except OverflowError:  # an integer too large for a float
            value, err = raw, f"`{param.name}` is too large"
        if err:
            self.r.error(err, v.span, hint=_choice_hint(param, raw))
            return
        given[name] = value
        spans[name] = v.span

    # ---- statements ------------------------------------------------------------------------

    def check(self, spec: ast.Spec, base_dir: Path) -> Program:
        seen: dict[str, Span] = {}
        found: dict[str, ast.Statement] = {}
        partitions: list[Partition] = []
        part_spans: dict[str, Span] = {}
        brains: list[Brain] = []
        brain_spans: dict[str, Span] = {}
        for st in spec.statements:
            kw = st.keyword.id
            if kw not in KEYWORDS:
                guess = did_you_mean(kw, list(KEYWORDS))
                self.r.error(f"unknown statement `{kw}`", st.keyword.span,
                             hint=f"did you mean `{guess}`?" if guess else
                             f"statements are {_names(list(KEYWORDS))}")
                continue
            if kw in SINGLE_KEYWORDS:
                if kw in seen:
                    self.r.error(f"`{kw}` is given twice", st.keyword.span,
                                 notes=[Note("first given here", seen[kw])])
                    continue
                seen[kw] = st.keyword.span
            pending = KEYWORDS[kw][1]
            if pending:
                self.r.error(f"`{kw}` ({KEYWORDS[kw][0]}) is not supported yet", st.keyword.span,
                             hint=f"it is specified in docs/language.md and arrives with "
                             f"{pending}")
                continue
            if kw == "let":
                self._let(st)
            elif kw == "brain":
                brain = self._brain(st)
                if brain is not None:
                    if brain.name in brain_spans:
                        self.r.error(f"brain `{brain.name}` is defined twice", brain.span,
                                     notes=[Note("first defined here", brain_spans[brain.name])])
                    else:
                        brain_spans[brain.name] = brain.span
                        brains.append(brain)
            elif kw == "partition":
                part = self._partition(st)
                if part is not None:
                    if part.name in part_spans:
                        self.r.error(f"partition `{part.name}` is defined twice", st.name.span,
                                     notes=[Note("first defined here", part_spans[part.name])])
                    else:
                        part_spans[part.name] = st.name.span  # type: ignore[union-attr]
                        partitions.append(part)
                        self.partition_names.append(part.name)
            else:
                found[kw] = st
        for kw in REQUIRED_KEYWORDS:
            if kw not in found and kw not in seen:
                self.r.error(f"the spec has no `{kw}` statement", Span(spec.file, 1, 1, 1, 2),
                             hint=_REQUIRED_HINTS[kw])
        regs = _registries()
        model = self._component(found.get("model"), "model", regs["model"])
        data = self._component(found.get("data"), "data", regs["data"], _data_options())
        optimizer = self._component(found.get("optimizer"), "optimizer", regs["optimizer"])
        schedule = (self._component(found["schedule"], "schedule", regs["schedule"])
                    if "schedule" in found else
                    Component("constant", regs["schedule"].get("constant").defaults(),  # type: ignore[union-attr]
                              Span(spec.file, 0, 0, 0, 0)))
        train = self._train(found.get("train"), spec.file)
        early = self._early(found.get("early_stopping"))
        init = self._init(found.get("init"), base_dir)
        multirate = self._multirate(found.get("multirate"))
        merge = self._merge(found.get("merge"), brains)
        if brains and len(brains) < 2:
            self.r.error("brains come in twos or more: this spec has one", brains[0].span,
                         hint="add another `brain NAME { every = k }`, or remove the brain")
        if brains and merge is None and "merge" not in seen:
            self.r.error("brains need a `merge` rule", brains[0].span,
                         hint="add e.g. `merge mean` (or weighted, best, ema)")
        if brains and early is not None:
            self.r.error("early stopping with brains is not supported yet", early.span,
                         hint="train for a fixed length; the merged model is evaluated as it goes")
        if brains and partitions and merge is not None and merge.momentum == "average":
            self.r.error("`momentum=average` with partitions inside brains is not supported yet",
                         merge.span, hint="use `momentum=keep` or `momentum=reset`")
        partitions = self._check_rest(partitions)
        for part in partitions:
            base = part.optimizer or optimizer
            if isinstance(part.selector, SelectRandom) and isinstance(base, Component) and \
                    base.name not in RANDOM_SUBSET_RULES:
                self.r.error(f"a random-subset partition is integrated by SGD(-momentum), not "
                             f"`{base.name}`", part.selector.span,
                             hint="give the partition `optimizer sgd(…)` in its block")
        for key in sorted(set(self.overrides) - self.used_overrides):
            expr = self.overrides[key]
            self.r.error(f"`--set {key}` matches no setting of this spec", expr.span,
                         hint="keys are `let` names or statement.argument, e.g. `optimizer.lr`, "
                         "`train.epochs`, `data.batch`, `partition.NAME.every`")
        self.r.raise_if_failed()
        return Program(file=spec.file, base_dir=base_dir, model=model, data=data,  # type: ignore[arg-type]
                       optimizer=optimizer, schedule=schedule, train=train,  # type: ignore[arg-type]
                       partitions=tuple(partitions), early_stopping=early, init=init,
                       lets={k: v.value for k, v in self.lets.items()},
                       first_fast_gradient=multirate, brains=tuple(brains), merge=merge)

    def _form(self, st: ast.Statement, *, target: bool = False, bind: bool = False,
              args: bool = False, block: bool = False) -> bool:
        """Check that a statement has the parts its keyword takes; report the first one extra."""
        kw = st.keyword.id
        shape = {"model": "model NAME(args…)", "data": "data NAME(args…)",
                 "optimizer": "optimizer NAME(args…)", "schedule": "schedule NAME(args…)",
                 "train": "train(args…)", "early_stopping": "early_stopping(args…)",
                 "init": 'init "FILE.pt"(args…)', "let": "let NAME = VALUE",
                 "partition": "partition NAME = SELECTOR { settings }"}.get(kw, kw)
        ok = True
        if (st.target is not None) != target and (target or st.target is not None):
            where = st.target.span if st.target is not None else st.keyword.span
            self.r.error(f"`{kw}` {'needs a name after it' if target else 'takes no name here'}",
                         where, hint=f"write `{shape}`")
            ok = False
        elif (st.name is not None) != bind:
            where = st.name.span if st.name is not None else st.keyword.span
            self.r.error(f"`{kw}` {'needs `NAME = value`' if bind else 'takes no `= value`'}",
                         where, hint=f"write `{shape}`")
            ok = False
        elif st.args is not None and not args:
            self.r.error(f"`{kw}` takes no arguments", st.args[0].span if st.args else st.span,
                         hint=f"write `{shape}`")
            ok = False
        elif st.block is not None and not block:
            self.r.error(f"`{kw}` takes no `{{ … }}` block", st.block.span, hint=f"write `{shape}`")
            ok = False
        return ok

    def _let(self, st: ast.Statement) -> None:
        if not self._form(st, bind=True):
            return
        assert st.name is not None and st.value is not None
        name = st.name.id
        if name in self.lets:
            self.r.error(f"`{name}` is defined twice", st.name.span,
                         notes=[Note("first defined here", self.let_spans[name])])
            return
        if name in CONSTANTS or name in KEYWORDS:
            self.r.error(f"`{name}` is a reserved word and cannot be redefined", st.name.span)
            return
        expr = self._override(name, st.value)
        try:
            v = self.value(expr)
        except _Bad:
            v = Value(math.nan, st.name.span)
            self.bad_lets.add(name)
        if isinstance(v.value, Symbol):
            self._unknown_name(v.value.name, v.span)
            self.bad_lets.add(name)
        self.lets[name] = v
        self.let_spans[name] = st.name.span

    def _component(self, st: ast.Statement | None, kw: str, registry: Registry,
                   extra: tuple[Param, ...] = (), key: str | None = None) -> Component | None:
        """`key` is the `--set` prefix of its arguments (default: the keyword)."""
        key = key or kw
        if st is None or not self._form(st, target=True, args=True):
            return None
        target = st.target
        assert target is not None
        if isinstance(target, ast.Str) or is_user_ref(target.id):
            name = target.value if isinstance(target, ast.Str) else target.id
            kwargs: dict[str, Any] = {}
            spans: dict[str, Span] = {}
            if extra:
                known = {p.name for p in extra}
                own = tuple(a for a in st.args or () if a.name is not None and a.name.id not in known)
                common = tuple(a for a in st.args or () if a.name is None or a.name.id in known)
                kwargs, spans = self.arguments(f"{kw} {name}", extra, common, st.span, f"{key}.")
                for a in own:
                    try:
                        kwargs[a.name.id] = _plain(self.value(self._override(f"{key}.{a.name.id}", a.value)).value)  # type: ignore[union-attr]
                        spans[a.name.id] = a.value.span  # type: ignore[union-attr]
                    except _Bad:
                        pass
            else:
                for a in st.args or ():
                    if a.name is None:
                        self.r.error("arguments of user code must be named", a.span)
                        continue
                    try:
                        kwargs[a.name.id] = _plain(self.value(self._override(f"{key}.{a.name.id}", a.value)).value)
                        spans[a.name.id] = a.value.span
                    except _Bad:
                        pass
            return Component(name, kwargs, target.span, True, spans)
        entry = registry.get(target.id)
        if entry is None:
            guess = registry.suggest(target.id)
            self.r.error(f"unknown {registry.family} `{target.id}`", target.span,
                         hint=f"did you mean `{guess}`?" if guess else
                         f"built-in {registry.family}s are {_names(registry.names())}, or give "
                         'user code as "file.py:factory"')
            return None
        kwargs, spans = self.arguments(f"{kw} `{entry.name}`", tuple(entry.params) + extra,
                                       st.args, st.span, f"{key}.")
        return Component(entry.name, kwargs, target.span, False, spans)

    def _train(self, st: ast.Statement | None, file: str) -> TrainSettings:
        if st is not None and not self._form(st, args=True):
            st = None
        values, _ = self.arguments("`train`", TRAIN_PARAMS, st.args if st else None,
                                   st.span if st else Span(file, 0, 0, 0, 0), "train.")
        if values.get("epochs") is not None and values.get("steps") is not None:
            self.r.error("give `epochs` or `steps`, not both", st.span if st else None)
        if values.get("epochs") is None and values.get("steps") is None:
            values["epochs"] = 1
        return TrainSettings(**{k: v for k, v in values.items() if k in TrainSettings.__slots__},
                             span=st.span if st else None)

    def _early(self, st: ast.Statement | None) -> EarlyStopping | None:
        if st is None or not self._form(st, args=True):
            return None
        values, _ = self.arguments("`early_stopping`", EARLY_STOPPING_PARAMS, st.args, st.span,
                                   "early_stopping.")
        if len(values) != len(EARLY_STOPPING_PARAMS):
            return None
        return EarlyStopping(span=st.span, **values)

    def _brain(self, st: ast.Statement) -> Brain | None:
        if not self._form(st, target=True, block=True):
            return None
        if not isinstance(st.target, ast.Name):
            self.r.error("a brain is named with a plain name", st.target.span,  # type: ignore[union-attr]
                         hint="write `brain fast { every = 1 }`")
            return None
        name = st.target.id
        settings: dict[str, ast.Arg] = {}
        optimizer = None
        for item in st.block.items if st.block else ():
            if isinstance(item, ast.Assign) and len(item.key) == 1:
                settings[item.key[0].id] = ast.Arg(item.key[0], item.value, item.span)
            elif isinstance(item, ast.Statement) and item.keyword.id == "optimizer":
                optimizer = self._component(item, "optimizer", _registries()["optimizer"])
            else:
                where = item.span
                self.r.error("a brain block holds `every`, `lr`, `data` and an `optimizer`", where)
        values, _ = self.arguments(f"brain `{name}`", BRAIN_KEYS, tuple(settings.values()),
                                   st.span, f"brain.{name}.")
        return Brain(name, st.target.span, values.get("every", 1), values.get("lr"),
                     values.get("data", "shared"), optimizer)

    def _merge(self, st: ast.Statement | None, brains: list[Brain]) -> Merge | None:
        if st is None or not self._form(st, target=True, args=True):
            return None
        if not brains:
            self.r.error("`merge` without brains", st.keyword.span,
                         hint="declare the brains it merges with `brain NAME { every = k }`")
            return None
        rule = st.target.id if isinstance(st.target, ast.Name) else ""  # type: ignore[union-attr]
        if rule not in MERGE_RULES:
            guess = did_you_mean(rule, list(MERGE_RULES))
            self.r.error(f"unknown merge rule `{rule}`", st.target.span,  # type: ignore[union-attr]
                         hint=f"did you mean `{guess}`?" if guess else
                         f"merge rules are {_names(list(MERGE_RULES))}")
            return None
        params = (*MERGE_RULES[rule], MERGE_MOMENTUM)
        values, spans = self.arguments(f"merge `{rule}`", params, st.args, st.span, "merge.")
        if rule == "weighted" and "weights" in values and len(values["weights"]) != len(brains):
            self.r.error(f"`weights` has {len(values['weights'])} entries for {len(brains)} brains",
                         spans.get("weights", st.span))
        if rule == "weighted" and "weights" in values and sum(values["weights"]) <= 0:
            self.r.error("`weights` must not all be zero", spans.get("weights", st.span))
        return Merge(rule, st.span, tuple(values.get("weights", ())), values.get("metric", "val_loss"),
                     values.get("decay", 0.9), values.get("momentum", "keep"))

    def _multirate(self, st: ast.Statement | None) -> str:
        if st is not None and not self._form(st, args=True):
            st = None
        values, _ = self.arguments("`multirate`", MULTIRATE_PARAMS, st.args if st else None,
                                   st.span if st else None, "multirate.")  # type: ignore[arg-type]
        return values.get("first_fast_gradient", "shared")

    def _init(self, st: ast.Statement | None, base_dir: Path) -> Init | None:
        if st is None or not self._form(st, target=True, args=True):
            return None
        if not isinstance(st.target, ast.Str):
            self.r.error("`init` needs the path of a state_dict file as a string",
                         st.target.span, hint='write `init "runs/pretrain/final.pt"`')  # type: ignore[union-attr]
            return None
        values, _ = self.arguments("`init`", INIT_PARAMS, st.args, st.span, "init.")
        path = Path(st.target.value)
        path = path if path.is_absolute() else base_dir / path
        return Init(path, tuple(values.get("exclude", ())), values.get("strict", False),
                    st.target.span, st.target.value)

    # ---- partitions ------------------------------------------------------------------------

    def _partition(self, st: ast.Statement) -> Partition | None:
        if not self._form(st, bind=True, block=True):
            return None
        assert st.name is not None and st.value is not None
        name = st.name.id
        if name in ("all", "rest"):
            self.r.error(f"`{name}` is a selector word and cannot name a partition", st.name.span)
            return None
        try:
            selector = self.selector(st.value)
        except _Bad:
            selector = None
        settings: dict[str, ast.Arg] = {}
        optimizer = None
        for item in st.block.items if st.block else ():
            if isinstance(item, ast.Assign):
                if len(item.key) != 1:
                    self.r.error("partition settings are plain names", item.span)
                    continue
                if item.key[0].id in settings:
                    self.r.error(f"`{item.key[0].id}` is given twice", item.key[0].span,
                                 notes=[Note("first given here", settings[item.key[0].id].span)])
                    continue
                settings[item.key[0].id] = ast.Arg(item.key[0], item.value, item.span)
            elif item.keyword.id == "optimizer":
                if optimizer is not None:
                    self.r.error("a partition has one `optimizer`", item.keyword.span)
                    continue
                optimizer = self._component(item, "optimizer", _registries()["optimizer"],
                                            key=f"partition.{name}.optimizer") or None
            else:
                self.r.error(f"`{item.keyword.id}` cannot appear inside a partition",
                             item.keyword.span,
                             hint="a partition block holds `every`, `lr`, `drift` and an "
                             "`optimizer`")
        values, _ = self.arguments(f"partition `{name}`", PARTITION_KEYS,
                                   tuple(settings.values()), st.span, f"partition.{name}.")
        if selector is None:
            return None
        if not isinstance(selector, SelectRandom) and _has_random(selector):
            self.r.error("`random(…)` must be the whole selector of its partition",
                         selector.span, hint="select the tensors to draw from with `of=`: "
                         "`random(0.1, of=weight - module(\"head\"))`")
        if isinstance(selector, SelectRandom):
            if values.get("drift", "none") != "none":
                self.r.error("a random-subset partition cannot drift", settings["drift"].span)

        return Partition(name, selector, st.span, values.get("every", 1), values.get("lr"),
                         values.get("drift", "none"), optimizer)

    def selector(self, expr: ast.Expr) -> Selector:
        """Evaluate a partition's selector expression."""
        if isinstance(expr, ast.Name):
            if expr.id in SELECTOR_WORDS:
                return Select(expr.id, expr.span)
            if expr.id in self.partition_names:
                return Select("partition", expr.span, pattern=expr.id)
            guess = did_you_mean(expr.id, list(SELECTOR_WORDS) + list(SELECTOR_CALLS) +
                                 list(self.partition_names))
            self.r.error(f"`{expr.id}` is not a selector", expr.span,
                         hint=f"did you mean `{guess}`?" if guess else _SELECTOR_HINT)
            raise _Bad
        if isinstance(expr, ast.BinOp) and expr.op in ("|", "&", "-"):
            return SelectSet(expr.op, self.selector(expr.left), self.selector(expr.right), expr.span)
        if isinstance(expr, ast.Call):
            fn = expr.func.id
            if fn in ("params", "module", "type"):
                if len(expr.args) != 1 or expr.args[0].name is not None:
                    self.r.error(f"`{fn}` takes one pattern", expr.span,
                                 hint=f'write `{fn}("{_EXAMPLES[fn]}")`')
                    raise _Bad
                v = self.value(expr.args[0].value)
                pattern = v.value.name if isinstance(v.value, Symbol) else v.value
                if not isinstance(pattern, str) or not pattern:
                    self.r.error(f"`{fn}` needs a pattern string", v.span,
                                 hint=f'write `{fn}("{_EXAMPLES[fn]}")`')
                    raise _Bad
                return Select(fn, expr.span, pattern=pattern)
            if fn == "depth":
                values, _ = self.arguments("`depth`", _DEPTH_PARAMS, expr.args, expr.span)
                if "lo" not in values or "hi" not in values:
                    raise _Bad
                return Select("depth", expr.span, lo=values["lo"], hi=values["hi"])
            if fn == "random":
                args = tuple(a for a in expr.args if not (a.name and a.name.id == "of"))
                of = next((a for a in expr.args if a.name and a.name.id == "of"), None)
                values, _ = self.arguments("`random`", _RANDOM_PARAMS, args, expr.span)
                inner = self.selector(of.value) if of else Select("weight", expr.span)
                if "fraction" not in values or "per" not in values:
                    raise _Bad
                return SelectRandom(values["fraction"], values["per"], inner, expr.span)
            guess = did_you_mean(fn, list(SELECTOR_CALLS))
            self.r.error(f"unknown selector `{fn}`", expr.func.span,
                         hint=f"did you mean `{guess}`?" if guess else _SELECTOR_HINT)
            raise _Bad
        self.r.error("this is not a parameter selector", expr.span, hint=_SELECTOR_HINT)
        raise _Bad

    def _check_rest(self, partitions: list[Partition]) -> list[Partition]:
        rests = [p for p in partitions if isinstance(p.selector, Select) and p.selector.kind == "rest"]
        for extra in rests[1:]:
            self.r.error("only one partition can be `rest`", extra.selector.span,
                         notes=[Note("the first is here", rests[0].selector.span)])
        for p in partitions:
            if _uses_rest(p.selector) and p not in rests:
                self.r.error("`rest` stands alone: it cannot be combined with other selectors",
                             p.selector.span)
        # `rest` is resolved after every other partition, so keep it last.
        return [p for p in partitions if p not in rests] + rests[:1]


_DEPTH_PARAMS = (Param("lo", "int", doc="first layer (negative counts from the end)"),
                 Param("hi", "int", None, "one past the last layer (none: to the end)",
                       nullable=True))
_RANDOM_PARAMS = (Param("fraction", "float", doc="fraction of the weights drawn", lo=0, hi=1,
                        lo_open=True),
                  Param("per", "choice", "tensor", "draw per tensor or over all at once",
                        choices=("tensor", "global")))
_EXAMPLES = {"params": "layers.*.weight", "module": "head", "type": "Conv2d"}
_SELECTOR_HINT = ('selectors are `all`, `rest`, `weight`, `bias`, `params("glob")`, '
                  '`module("path")`, `type("Linear")`, `depth(lo, hi)`, `random(fraction)`, '
                  "combined with | & -")
_REQUIRED_HINTS = {
    "model": "add e.g. `model mlp(hidden=[128])`",
    "data": "add e.g. `data digits(batch=64)`",
    "optimizer": "add e.g. `optimizer sgd(lr=0.1, momentum=0.9)`",
}


def _has_random(sel: Selector) -> bool:
    if isinstance(sel, SelectRandom):
        return True
    if isinstance(sel, SelectSet):
        return _has_random(sel.left) or _has_random(sel.right)
    return False


def _uses_rest(sel: Selector) -> bool:
    if isinstance(sel, Select):
        return sel.kind == "rest"
    if isinstance(sel, SelectSet):
        return _uses_rest(sel.left) or _uses_rest(sel.right)
    return _uses_rest(sel.of)


_MAX_INT_BITS = 4096
"""Integer arithmetic beyond this many bits is an error (and `9 ** 9 ** 9` never hangs)."""


def _too_large(op: str, left: Any, right: Any) -> bool:
    if not (isinstance(left, int) and isinstance(right, int)):
        return False
    if op == "**":
        return right > 0 and abs(left) > 1 and right * (abs(left).bit_length() - 1) > _MAX_INT_BITS
    if op == "*":
        return abs(left).bit_length() + abs(right).bit_length() > _MAX_INT_BITS + 1
    return max(abs(left).bit_length(), abs(right).bit_length()) > _MAX_INT_BITS


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, Symbol):
        return f"the name `{v.name}`"
    if isinstance(v, CallValue):
        return f"`{v.name}(…)`"
    return "this value"


def _plain(v: Any) -> Any:
    """Values handed to user code: symbols become strings."""
    if isinstance(v, Symbol):
        return v.name
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _names(names: list[str]) -> str:
    shown = [f"`{n}`" for n in names]
    if len(shown) > 12:
        shown = [*shown[:12], "…"]
    return ", ".join(shown)


def _choice_hint(param: Param, raw: Any) -> str | None:
    if param.kind == "choice" and isinstance(raw, str):
        guess = did_you_mean(raw, list(param.choices))
        if guess:
            return f"did you mean `{guess}`?"
    return None


def check(spec: ast.Spec, base_dir: Path, overrides: Mapping[str, ast.Expr] | None = None) -> Program:
    """Check a parsed spec; raises CompileError listing every problem found."""
    return Checker(overrides).check(spec, base_dir)


__all__ = ["CallValue", "Checker", "CompileError", "Symbol", "check"]
