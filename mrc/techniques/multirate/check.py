"""Checks of multirate training: `partition` statements and their settings, the selectors that
pick their parameters (all but `random`, which random subsets add; `sample` picks a fixed
random subset of elements: element-level partitions), and `multirate(…)`.

Other techniques that give a partition more meaning add a check with `partition_rule`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mrc import ast
from mrc.check.expressions import Bad, Symbol
from mrc.check.registry import SELECTOR_WORDS, SELECTORS, finisher, selector, statement
from mrc.diagnostics import Note, Span
from mrc.program import Partition, Select, Selector, SelectRandom, SelectSample, SelectSet
from mrc.registry import Param, did_you_mean
from mrc.techniques.core.check import registries

if TYPE_CHECKING:
    from mrc.check.checker import Checker

PARTITION_KEYS = (
    Param("every", "int", 1, "the partition's rate: it updates once per `every` steps", lo=1),
    Param("lr", "float", None, "its step size (default: every × the base learning rate)", lo=0,
          nullable=True),
    Param("drift", "choice", "none", "multirate drift of a slow partition",
          choices=("none", "linear")),
)
MULTIRATE_PARAMS = (
    Param("first_fast_gradient", "choice", "shared",
          "where the first fast gradient of a slow step is taken",
          choices=("shared", "after_slow")),
)

PartitionRule = Callable[["Checker", Partition, dict[str, ast.Arg]], None]
PARTITION_RULES: list[PartitionRule] = []
"""Checks run on every partition with its settings (as written), added by other techniques."""


def partition_rule(fn: PartitionRule) -> PartitionRule:
    """Register a check of each partition (e.g. what a random-subset partition may not do)."""
    PARTITION_RULES.append(fn)
    return fn


SELECTOR_WORDS.update({"all": "every parameter", "rest": "every parameter no other partition has",
                       "weight": "weights (tensors of two or more dimensions)",
                       "bias": "biases (one-dimensional tensors)"})

_EXAMPLES = {"params": "layers.*.weight", "module": "head", "type": "Conv2d"}
SELECTOR_HINT = ('selectors are `all`, `rest`, `weight`, `bias`, `params("glob")`, '
                 '`module("path")`, `type("Linear")`, `depth(lo, hi)`, `random(fraction)`, '
                 '`sample(fraction)`, '
                 "combined with | & -")
_DEPTH_PARAMS = (Param("lo", "int", doc="first layer (negative counts from the end)"),
                 Param("hi", "int", None, "one past the last layer (none: to the end)",
                       nullable=True))


@statement("partition", "a named set of parameters with its own rate and integrator",
           technique="multirate", bind=True, block=True,
           usage="partition NAME = SELECTOR { settings }")
def check_partition(ck: Checker, st: ast.Statement | None) -> None:
    """`partition NAME = SELECTOR { every, lr, drift, optimizer }`, in source order (a later
    partition's selector may name an earlier partition)."""
    assert st is not None
    part = _partition(ck, st)
    if part is None:
        return
    spans: dict[str, Span] = ck.facts.setdefault("partition_spans", {})
    if part.name in spans:
        ck.r.error(f"partition `{part.name}` is defined twice", st.name.span,  # type: ignore[union-attr]
                   notes=[Note("first defined here", spans[part.name])])
        return
    spans[part.name] = st.name.span  # type: ignore[union-attr]
    ck.facts.setdefault("partitions", []).append(part)


def _partition(ck: Checker, st: ast.Statement) -> Partition | None:
    if not ck.form(st):
        return None
    assert st.name is not None and st.value is not None
    name = st.name.id
    if name in ("all", "rest"):
        ck.r.error(f"`{name}` is a selector word and cannot name a partition", st.name.span)
        return None
    try:
        sel: Selector | None = ck.selector(st.value)
    except Bad:
        sel = None
    settings: dict[str, ast.Arg] = {}
    optimizer = None
    for item in st.block.items if st.block else ():
        if isinstance(item, ast.Assign):
            if len(item.key) != 1:
                ck.r.error("partition settings are plain names", item.span)
                continue
            if item.key[0].id in settings:
                ck.r.error(f"`{item.key[0].id}` is given twice", item.key[0].span,
                           notes=[Note("first given here", settings[item.key[0].id].span)])
                continue
            settings[item.key[0].id] = ast.Arg(item.key[0], item.value, item.span)
        elif item.keyword.id == "optimizer":
            if optimizer is not None:
                ck.r.error("a partition has one `optimizer`", item.keyword.span)
                continue
            optimizer = ck.component(item, "optimizer", registries()["optimizer"],
                                     key=f"partition.{name}.optimizer") or None
        else:
            ck.r.error(f"`{item.keyword.id}` cannot appear inside a partition", item.keyword.span,
                       hint="a partition block holds `every`, `lr`, `drift` and an `optimizer`")
    values, _ = ck.arguments(f"partition `{name}`", PARTITION_KEYS, tuple(settings.values()),
                             st.span, f"partition.{name}.")
    if sel is None:
        return None
    part = Partition(name, sel, st.span, values.get("every", 1), values.get("lr"),
                     values.get("drift", "none"), optimizer)
    for rule in PARTITION_RULES:
        rule(ck, part, settings)
    return part


def evaluate_selector(ck: Checker, expr: ast.Expr) -> Selector:
    """Evaluate a partition's selector expression (words, calls, `|` `&` `-`)."""
    if isinstance(expr, ast.Name):
        if expr.id in SELECTOR_WORDS:
            return Select(expr.id, expr.span)
        if expr.id in ck.partition_names():
            return Select("partition", expr.span, pattern=expr.id)
        guess = did_you_mean(expr.id, list(SELECTOR_WORDS) + list(SELECTORS) + ck.partition_names())
        ck.r.error(f"`{expr.id}` is not a selector", expr.span,
                   hint=f"did you mean `{guess}`?" if guess else SELECTOR_HINT)
        raise Bad
    if isinstance(expr, ast.BinOp) and expr.op in ("|", "&", "-"):
        return SelectSet(expr.op, ck.selector(expr.left), ck.selector(expr.right), expr.span)
    if isinstance(expr, ast.Call):
        fn = SELECTORS.get(expr.func.id)
        if fn is not None:
            return fn(ck, expr)
        guess = did_you_mean(expr.func.id, list(SELECTORS))
        ck.r.error(f"unknown selector `{expr.func.id}`", expr.func.span,
                   hint=f"did you mean `{guess}`?" if guess else SELECTOR_HINT)
        raise Bad
    ck.r.error("this is not a parameter selector", expr.span, hint=SELECTOR_HINT)
    raise Bad


def _pattern(ck: Checker, expr: ast.Call) -> Select:
    fn = expr.func.id
    if len(expr.args) != 1 or expr.args[0].name is not None:
        ck.r.error(f"`{fn}` takes one pattern", expr.span, hint=f'write `{fn}("{_EXAMPLES[fn]}")`')
        raise Bad
    v = ck.value(expr.args[0].value)
    pattern = v.value.name if isinstance(v.value, Symbol) else v.value
    if not isinstance(pattern, str) or not pattern:
        ck.r.error(f"`{fn}` needs a pattern string", v.span, hint=f'write `{fn}("{_EXAMPLES[fn]}")`')
        raise Bad
    return Select(fn, expr.span, pattern=pattern)


for _name in ("params", "module", "type"):
    selector(_name)(_pattern)


@selector("depth")
def _depth(ck: Checker, expr: ast.Call) -> Select:
    values, _ = ck.arguments("`depth`", _DEPTH_PARAMS, expr.args, expr.span)
    if "lo" not in values or "hi" not in values:
        raise Bad
    return Select("depth", expr.span, lo=values["lo"], hi=values["hi"])


_SAMPLE_PARAMS = (Param("fraction", "float", doc="fraction of the elements drawn", lo=0, hi=1,
                        lo_open=True),
                  Param("per", "choice", "tensor", "draw per tensor or over all at once",
                        choices=("tensor", "global")))


def drawn_subset(ck: Checker, expr: ast.Call, what: str, params: tuple[Param, ...]) -> tuple[float, str, Selector]:
    """The arguments of a selector that draws a subset of elements — `NAME(fraction,
    per=tensor|global, of=SELECTOR)`, `of` defaulting to `weight` (`sample` here, `random` in
    random_subsets): (fraction, per, the selector drawn from)."""
    args = tuple(a for a in expr.args if not (a.name and a.name.id == "of"))
    of = next((a for a in expr.args if a.name and a.name.id == "of"), None)
    values, _ = ck.arguments(what, params, args, expr.span)
    inner = ck.selector(of.value) if of else Select("weight", expr.span)
    if "fraction" not in values or "per" not in values:
        raise Bad
    return values["fraction"], values["per"], inner


@selector("sample")
def _sample(ck: Checker, expr: ast.Call) -> SelectSample:
    """`sample(fraction, per=tensor|global, of=SELECTOR)`: a fixed random subset of elements,
    drawn once (element-level partitions); `of` defaults to `weight`."""
    return SelectSample(*drawn_subset(ck, expr, "`sample`", _SAMPLE_PARAMS), expr.span)


@partition_rule
def _sample_is_whole_selector(ck: Checker, part: Partition, settings: dict[str, ast.Arg]) -> None:
    """`sample(…)` is the whole selector of its partition (draw from a combination with `of=`)."""
    if not isinstance(part.selector, SelectSample) and _has_sample(part.selector):
        ck.r.error("`sample(…)` must be the whole selector of its partition", part.selector.span,
                   hint="select the tensors to draw from with `of=`: "
                   "`sample(0.5, of=weight - module(\"head\"))`")


def _has_sample(sel: Selector) -> bool:
    stack = [sel]
    while stack:
        s = stack.pop()
        if isinstance(s, SelectSample):
            return True
        if isinstance(s, SelectSet):
            stack += (s.left, s.right)
        elif isinstance(s, SelectRandom | SelectSample):
            stack.append(s.of)
    return False


@statement("multirate", "options of multirate training", technique="multirate", args=True,
           once=True, deferred=True)
def check_multirate(ck: Checker, st: ast.Statement | None) -> None:
    """`multirate(first_fast_gradient)`: where the first fast gradient of a slow step is taken."""
    if st is not None and not ck.form(st):
        st = None
    values, _ = ck.arguments("`multirate`", MULTIRATE_PARAMS, st.args if st else None,
                             st.span if st else None, "multirate.")  # type: ignore[arg-type]
    ck.program["first_fast_gradient"] = values.get("first_fast_gradient", "shared")


@finisher
def check_rest(ck: Checker) -> None:
    """At most one partition is `rest`, and `rest` stands alone; it is resolved last."""
    partitions: list[Partition] = ck.facts.get("partitions", [])
    rests = [p for p in partitions if isinstance(p.selector, Select) and p.selector.kind == "rest"]
    for extra in rests[1:]:
        ck.r.error("only one partition can be `rest`", extra.selector.span,
                   notes=[Note("the first is here", rests[0].selector.span)])
    for p in partitions:
        if _uses_rest(p.selector) and p not in rests:
            ck.r.error("`rest` stands alone: it cannot be combined with other selectors",
                       p.selector.span)
    ck.program["partitions"] = tuple([p for p in partitions if p not in rests] + rests[:1])


def _uses_rest(sel: Selector) -> bool:
    stack = [sel]
    while stack:
        s = stack.pop()
        if isinstance(s, Select):
            if s.kind == "rest":
                return True
        elif isinstance(s, SelectSet):
            stack += (s.left, s.right)
        elif isinstance(s, SelectRandom | SelectSample):
            stack.append(s.of)
    return False


@finisher
def check_sample_without_brains(ck: Checker) -> None:
    """Element-level partitions are not yet supported together with brains (a brain's replica
    layout, stacked or copied, moves whole tensors)."""
    if not ck.facts.get("brains"):
        return
    for p in ck.facts.get("partitions", []):
        if isinstance(p.selector, SelectSample):
            ck.r.error("element-level partitions (`sample(…)`) cannot be combined with brains yet",
                       p.selector.span, hint="split whole tensors (`params(…)`, `module(…)`) instead")
