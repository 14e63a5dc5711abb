"""Checks of module-wise training: `modules { split; aux; transport; regime; module NAME { optimizer } }`.

Each setting is a word or a call (`split = balanced(4)`, `transport = fixed(tau=0.1)`), checked
against its table here, before any model exists; where the cuts fall on the model (a path that
is not on its main chain, more modules than blocks) is the binding's to report
(mrc/techniques/modules/bind.py), at the same spans. A `--set modules.KEY=…` replaces a whole
setting and `--set modules.KEY.ARG=…` one argument of it (`modules.transport.tau=0.05`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mrc import ast
from mrc.check.arguments import names
from mrc.check.registry import finisher, statement
from mrc.diagnostics import Note, Span
from mrc.program import Component, Modules
from mrc.registry import Param, did_you_mean
from mrc.techniques.core.check import registries

if TYPE_CHECKING:
    from mrc.check.checker import Checker

COUNT = Param("count", "int", doc="the number of modules K", lo=1)
SPLITS: dict[str, tuple[Param, ...]] = {
    "equal": (COUNT,),
    "balanced": (COUNT,),
    "at": (Param("paths", "strs", doc="module paths that start a new module, in order"),),
}
AUX: dict[str, tuple[Param, ...]] = {
    "linear": (),
    "mlp": (Param("hidden", "int", 128, "width of the hidden layer", lo=1),),
    "conv": (Param("width", "int", 32, "channels of the 3×3 convolution", lo=1),),
}
TAU = Param("tau", "float", 0.1, "τ: the transport cost is weighted 1/(2τ)", lo=0, lo_open=True)
TRANSPORT: dict[str, tuple[Param, ...]] = {
    "none": (),
    "fixed": (TAU,),
    "doubled": (TAU,),
    "multipliers": (
        Param("lambda0", "float", 1.0, "λ at the start (λ = 2τ, the weight of the loss)", lo=0, lo_open=True),
        Param("h", "float", 0.1, "λ ← λ + h·CE every `every` steps", lo=0),
        Param("every", "int", 10, "steps between multiplier updates", lo=1),
    ),
}
EPOCHS = Param("epochs", "int", None, "epochs each module trains (default: train(epochs))", lo=1, nullable=True)
REGIMES: dict[str, tuple[Param, ...]] = {
    "parallel": (),
    "sequential": (EPOCHS,),
    "laps": (Param("laps", "int", 2, "laps over the modules", lo=1), EPOCHS),
}
SETTINGS = {"split": SPLITS, "aux": AUX, "transport": TRANSPORT, "regime": REGIMES}
DEFAULTS = {"aux": "linear", "transport": "none", "regime": "parallel"}


def _setting(ck: Checker, key: str, expr: ast.Expr, table: dict[str, tuple[Param, ...]]
             ) -> tuple[str, dict[str, Any], Span] | None:
    """A `word` or `word(args)` setting checked against its table: (word, values, span)."""
    call = expr if isinstance(expr, ast.Call) else None
    word = call.func if call is not None else expr
    if not isinstance(word, ast.Name):
        ck.r.error(f"`{key}` is one of {names(list(table))}", expr.span,
                   hint=f"write e.g. `{key} = {next(iter(table))}`")
        return None
    if word.id not in table:
        guess = did_you_mean(word.id, list(table))
        ck.r.error(f"unknown {key} `{word.id}`", word.span,
                   hint=f"did you mean `{guess}`?" if guess else f"{key} is one of {names(list(table))}")
        return None
    params = table[word.id]
    values, _ = ck.arguments(f"`{word.id}`", params, call.args if call else (), expr.span,
                             f"modules.{key}.")
    if any(p.required and p.name not in values for p in params):
        return None
    return word.id, values, expr.span


def _paths(ck: Checker, expr: ast.Expr) -> tuple[tuple[str, ...], tuple[Span, ...]] | None:
    """The cut paths of `at([...])` with the span of each string (the binding reports there)."""
    assert isinstance(expr, ast.Call)
    arg = expr.args[0].value if expr.args else None
    items = arg.items if isinstance(arg, ast.ListExpr) else (arg,) if isinstance(arg, ast.Str) else None
    if not items or not all(isinstance(i, ast.Str) for i in items):
        ck.r.error("`at` takes a list of module paths", expr.span, hint='write `at(["layer2", "layer3"])`')
        return None
    paths = tuple(i.value for i in items)  # type: ignore[union-attr]
    spans = tuple(i.span for i in items)
    seen: dict[str, Span] = {}
    for p, s in zip(paths, spans, strict=True):
        if p in seen:
            ck.r.error(f"`{p}` is cut twice", s, notes=[Note("first given here", seen[p])])
            return None
        seen[p] = s
    return paths, spans


@statement("modules", "module-wise training with local losses", technique="modules", block=True,
           once=True, usage="modules { split = balanced(4); aux = conv(width=32); transport = fixed(tau=0.1) }")
def check_modules(ck: Checker, st: ast.Statement | None) -> None:
    """`modules { … }`: see the module docstring and docs/language.md."""
    assert st is not None
    if not ck.form(st):
        return
    given: dict[str, ast.Assign] = {}
    optimizers: dict[str, Component] = {}
    opt_spans: dict[str, Span] = {}
    for item in st.block.items if st.block else ():
        if isinstance(item, ast.Assign) and len(item.key) == 1 and item.key[0].id in SETTINGS:
            k = item.key[0].id
            if k in given:
                ck.r.error(f"`{k}` is given twice", item.key[0].span,
                           notes=[Note("first given here", given[k].key[0].span)])
                continue
            given[k] = item
        elif isinstance(item, ast.Assign):
            guess = did_you_mean(item.key[0].id, list(SETTINGS))
            ck.r.error(f"unknown setting `{'.'.join(k.id for k in item.key)}` of `modules`", item.key[0].span,
                       hint=f"did you mean `{guess}`?" if guess else f"settings are {names(list(SETTINGS))}")
        elif isinstance(item, ast.Statement) and item.keyword.id == "module":
            _module_block(ck, item, optimizers, opt_spans)
        else:
            ck.r.error("a `modules` block holds `split`, `aux`, `transport`, `regime` and "
                       "`module NAME { optimizer … }` blocks", item.span)
    parsed: dict[str, tuple[str, dict[str, Any], Span] | None] = {}
    ok = True
    for key, table in SETTINGS.items():
        written = given[key].value if key in given else None
        if written is None and f"modules.{key}" not in ck.overrides:
            if key == "split":
                ck.r.error("`modules` needs a `split`", st.keyword.span,
                           hint="add e.g. `split = balanced(4)` (or equal(K), at([\"layer2\"]))")
                ok = False
                continue
            parsed[key] = (DEFAULTS[key], {}, st.keyword.span)
            continue
        expr = ck.override(f"modules.{key}", written)
        if key == "split" and isinstance(expr, ast.Call) and expr.func.id == "at":
            got = _paths(ck, expr)
            parsed[key] = None if got is None else ("at", {"paths": got[0], "spans": got[1]}, expr.span)
        else:
            parsed[key] = _setting(ck, key, expr, table)
        ok = ok and parsed[key] is not None
    if not ok:
        return
    split, aux, transport, regime = (parsed[k] for k in SETTINGS)
    assert split and aux and transport and regime
    tr = transport[1]
    count = split[1].get("count", 0)
    mods = Modules(
        st.keyword.span, split[0], count, tuple(split[1].get("paths", ())), tuple(split[1].get("spans", ())),
        split[2], aux[0], dict(aux[1]), aux[2], transport[0], tr.get("tau", 0.1), tr.get("lambda0", 1.0),
        tr.get("h", 0.1), tr.get("every", 10), transport[2], regime[0], regime[1].get("epochs"),
        regime[1].get("laps", 1), regime[2], optimizers, opt_spans)
    k = mods.modules
    known = {f"m{i}" for i in range(k)}
    for name, span in opt_spans.items():
        if name not in known:
            ck.r.error(f"no module `{name}`: the modules are m0 … m{k - 1}" if k > 1 else
                       f"no module `{name}`: the one module is m0", span)
    if transport[0] == "doubled" and k < 2:
        ck.r.error("`doubled` halves τ for the first half of the modules: it needs two or more",
                   transport[2])
    ck.program["modules"] = mods


def _module_block(ck: Checker, st: ast.Statement, optimizers: dict[str, Component],
                  spans: dict[str, Span]) -> None:
    """`module m2 { optimizer adam(lr=0.001) }`: one module's own integrator."""
    target = st.target
    if not isinstance(target, ast.Name) or st.block is None or st.args:
        ck.r.error("a module's settings are written `module m1 { optimizer sgd(lr=0.05) }`", st.span)
        return
    name = target.id
    if name in spans:
        ck.r.error(f"module `{name}` is given twice", target.span, notes=[Note("first given here", spans[name])])
        return
    for item in st.block.items:
        if isinstance(item, ast.Statement) and item.keyword.id == "optimizer":
            if name in optimizers:
                ck.r.error("a module has one `optimizer`", item.keyword.span)
                continue
            comp = ck.component(item, "optimizer", registries()["optimizer"], key=f"modules.{name}.optimizer")
            if comp is not None:
                optimizers[name] = comp
        else:
            ck.r.error("a `module` block holds an `optimizer`", item.span)
    spans[name] = target.span


@finisher
def check_module_combinations(ck: Checker) -> None:
    """What module-wise training cannot be combined with (yet)."""
    mods: Modules | None = ck.program.get("modules")
    if mods is None:
        return
    if ck.program.get("first_fast_gradient") == "after_slow":
        ck.r.error("`multirate(first_fast_gradient = after_slow)` is not supported with `modules`",
                   mods.span, hint="each module takes one gradient point per step")
    from mrc.program import SelectRandom

    for part in ck.facts.get("partitions", []):
        if _has_random(part.selector, SelectRandom):
            ck.r.error("random-subset partitions are not supported with `modules` yet", part.span)
    if mods.regime != "parallel" and ck.facts.get("brains"):
        ck.r.error(f"brains train every module at once: the `{mods.regime}` regime is not "
                   "supported with brains", mods.regime_span or mods.span, hint="use `regime = parallel`")
    if mods.regime != "parallel" and ck.program.get("early_stopping") is not None:
        ck.r.error(f"early stopping ends the whole run, not a module's stage: not supported with "
                   f"the `{mods.regime}` regime", mods.regime_span or mods.span)
    train = ck.program.get("train")
    epochs = mods.epochs or (train.epochs if train is not None else None)
    if mods.regime != "parallel" and mods.epochs is None and (train is None or train.epochs is None):
        ck.r.error(f"the `{mods.regime}` regime needs the epochs each module trains",
                   mods.regime_span or mods.span, hint=f"write `regime = {mods.regime}(epochs=E)` "
                   "or give `train(epochs=E)`")
    elif mods.regime == "laps" and epochs is not None and epochs % mods.laps:
        ck.r.error(f"{epochs} epochs do not split into {mods.laps} laps: each module trains "
                   f"epochs/laps epochs per lap", mods.regime_span or mods.span,
                   hint="make `epochs` a multiple of `laps`")


def _has_random(sel: Any, cls: type) -> bool:
    if isinstance(sel, cls):
        return True
    return any(_has_random(getattr(sel, f), cls) for f in ("left", "right", "of") if hasattr(sel, f))

