"""Checks of hyper-parameter search: `sweep METHOD(ARGS) { KEY = SPACE … }`.

METHOD is `grid()`, `random(trials, seed)` or `bayes(trials, seed)`, each with `metric`
(`val_acc`, `val_loss`, or an evaluation set's `NAME.acc` / `NAME.loss`), `direction`
(`maximize` | `minimize`; default: maximise accuracies, minimise losses) and `pruning`
(`none` | `median(warmup, startup)` | `hyperband(min_resource, reduction)`). Each KEY is a
`--set` key (`optimizer.lr`, `data.batch`, `partition.slow.every`, `modules.transport.tau`,
`mgrit.stack.forward_iters`, a `let` name) and each SPACE `choice([…])`, `uniform(a, b)`,
`loguniform(a, b)`, `int(a, b[, step])` or a plain list (a grid's axis; a choice elsewhere).

Every key is checked exactly as `--set` checks it, and so is every value a grid or a choice can
take and both ends of a range: the spec is checked again with that one value set (its own
expression from the sweep line as the override), so an unknown key, a value of the wrong type
or out of range is reported at the sweep line, with did-you-mean over the spec's settable keys,
before any trial runs. A spec with a `sweep` trains its own values under `mrc train`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mrc import ast
from mrc.check.arguments import suggest_key
from mrc.check.expressions import Bad
from mrc.check.registry import finisher, statement
from mrc.diagnostics import CompileError, Note, Span
from mrc.program import Sweep, SweepSpace
from mrc.registry import Param, did_you_mean

if TYPE_CHECKING:
    from mrc.check.checker import Checker

METHODS: dict[str, tuple[Param, ...]] = {
    "grid": (),
    "random": (Param("trials", "int", 20, "trials to run", lo=1), Param("seed", "int", 0, "the sampler's seed", lo=0)),
    "bayes": (Param("trials", "int", 30, "trials to run", lo=1), Param("seed", "int", 0, "the sampler's seed", lo=0)),
}
COMMON = (
    Param("metric", "any", "val_acc", "what the search optimises (val_acc, val_loss, NAME.acc, NAME.loss)"),
    Param("direction", "choice", None, "maximize or minimize (default: by the metric)",
          choices=("maximize", "minimize"), nullable=True),
    Param("pruning", "any", "none", "none, median(warmup, startup) or hyperband(min_resource, reduction)"),
)
PRUNERS: dict[str, tuple[Param, ...]] = {
    "none": (),
    "median": (Param("warmup", "int", 1, "evaluations before a trial can be pruned", lo=0),
               Param("startup", "int", 5, "trials completed before pruning starts", lo=0)),
    "hyperband": (Param("min_resource", "int", 1, "evaluations of the smallest bracket", lo=1),
                  Param("reduction", "int", 3, "the reduction factor", lo=2)),
}
SPACES = ("choice", "uniform", "loguniform", "int")


@statement("sweep", "a hyper-parameter search", technique="sweep", target=True, args=True, block=True,
           once=True, deferred=True, usage="sweep random(trials=20, seed=0) { optimizer.lr = loguniform(1e-4, 1e-1) }")
def check_sweep(ck: Checker, st: ast.Statement | None) -> None:
    """`sweep METHOD(ARGS) { KEY = SPACE … }`: see the module docstring."""
    ck.program["sweep"] = None
    if st is None or ck.in_sweep or not ck.form(st):
        return
    target = st.target
    method = target.id if isinstance(target, ast.Name) else ""
    if method not in METHODS:
        guess = did_you_mean(method, list(METHODS))
        ck.r.error(f"unknown search method `{method}`", target.span,  # type: ignore[union-attr]
                   hint=f"did you mean `{guess}`?" if guess else "methods are `grid`, `random`, `bayes`")
        return
    pruning_arg = next((a for a in st.args or () if a.name is not None and a.name.id == "pruning"), None)
    metric_arg = next((a for a in st.args or () if a.name is not None and a.name.id == "metric"), None)
    others = tuple(a for a in st.args or () if a is not pruning_arg and a is not metric_arg)
    values, _ = ck.arguments(f"`sweep {method}`", METHODS[method] + COMMON, others, st.span, "sweep.")
    metric = _metric(ck, metric_arg)
    pruner = _pruner(ck, pruning_arg)
    if metric is None or pruner is None:
        return
    direction = values.get("direction") or _direction(ck, metric)
    spaces: list[SweepSpace] = []
    seen: dict[str, Span] = {}
    for item in st.block.items if st.block else ():
        if not isinstance(item, ast.Assign):
            ck.r.error("a `sweep` block holds `KEY = SPACE` lines", item.span,
                       hint="e.g. `optimizer.lr = loguniform(1e-4, 1e-1)`")
            continue
        key = ".".join(k.id for k in item.key)
        if key in seen:
            ck.r.error(f"`{key}` is searched twice", item.key[0].span, notes=[Note("first given here", seen[key])])
            continue
        seen[key] = item.key[0].span
        space = _space(ck, key, item.value, method)
        if space is not None:
            spaces.append(space)
    if not spaces and not ck.r.failed:
        ck.r.error("the sweep searches nothing", st.span, hint="add e.g. `optimizer.lr = [0.01, 0.1]` to its block")
        return
    sites = _check_values(ck, spaces, st)
    if sites is None:
        return
    ck.program["sweep"] = Sweep(method, st.keyword.span, tuple(spaces), values.get("trials"), values.get("seed", 0),
                                metric, direction, pruner[0], pruner[1], sites)


def _metric(ck: Checker, arg: ast.Arg | None) -> str | None:
    """The metric the sweep optimises (default: `val_acc`, or `val_loss` for a loss without
    accuracy), one the spec reports (`mrc.techniques.core.check.watchable`)."""
    from mrc.techniques.core.check import watchable

    known = watchable(ck)
    if arg is None:
        return "val_acc" if "val_acc" in known else "val_loss"
    v = arg.value
    # a string, or a name (the parser reads a dotted name such as `clean.acc` as one Name)
    text = v.value if isinstance(v, ast.Str) else v.id if isinstance(v, ast.Name) else None
    if not text or not (text in known or ("." in text and text.rpartition(".")[2] in
                                          {m.partition(".")[2] or m.removeprefix("val_") for m in known})):
        guess = did_you_mean(text or "", known)
        ck.r.error(f"`metric` is one of {', '.join(f'`{m}`' for m in known if '.' not in m)}, or an "
                   "evaluation set's NAME.loss / NAME.acc / NAME.METRIC", v.span,
                   hint=f"did you mean `{guess}`?" if guess else None)
        return None
    return text


def _direction(ck: Checker, metric: str) -> str:
    from mrc.losses import metric_mode

    modes = {m.name: m.mode for m in ck.facts.get("metrics", ())}
    return "maximize" if metric_mode(metric, modes) == "max" else "minimize"


def _pruner(ck: Checker, arg: ast.Arg | None) -> tuple[str, dict[str, Any]] | None:
    if arg is None:
        return "none", {}
    expr = arg.value
    call = expr if isinstance(expr, ast.Call) else None
    word = call.func if call is not None else expr
    name = word.id if isinstance(word, ast.Name) else ""
    if name not in PRUNERS:
        guess = did_you_mean(name, list(PRUNERS))
        ck.r.error(f"unknown pruner `{name}`", expr.span,
                   hint=f"did you mean `{guess}`?" if guess else "pruners are `none`, `median(…)`, `hyperband(…)`")
        return None
    values, _ = ck.arguments(f"`{name}`", PRUNERS[name], call.args if call else (), expr.span, f"sweep.pruning.{name}.")
    return name, values


def _number(ck: Checker, expr: ast.Expr) -> float | None:
    try:
        v = ck.value(expr).value
    except Bad:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        ck.r.error("a range's ends are numbers", expr.span)
        return None
    return float(v)


def _space(ck: Checker, key: str, expr: ast.Expr, method: str) -> SweepSpace | None:
    """One `KEY = SPACE` line; its values are checked against the spec later (_check_values)."""
    text = ck_source(ck)
    if isinstance(expr, ast.ListExpr):
        items = expr.items
    elif isinstance(expr, ast.Call) and expr.func.id == "choice" and len(expr.args) == 1 \
            and isinstance(expr.args[0].value, ast.ListExpr):
        items = expr.args[0].value.items
    elif isinstance(expr, ast.Call) and expr.func.id in SPACES:
        if method == "grid":
            ck.r.error(f"a grid takes lists of values, not `{expr.func.id}(…)`", expr.span,
                       hint="write e.g. `optimizer.lr = [0.01, 0.03, 0.1]`, or use random(…) or bayes(…)")
            return None
        return _range(ck, key, expr)
    else:
        ck.r.error(f"`{key}` needs a space: a list, choice([…]), uniform(a, b), loguniform(a, b) or int(a, b)",
                   expr.span)
        return None
    if not items:
        ck.r.error(f"the space of `{key}` is empty", expr.span)
        return None
    choices = [_slice(text, i.span) for i in items]
    for item, choice in zip(items, choices, strict=True):
        if choice is None:
            ck.r.error("a sweep value must be written on one line", item.span)
            return None
    return SweepSpace(key, "choice", expr.span, tuple(c for c in choices if c is not None))


def _range(ck: Checker, key: str, call: ast.Call) -> SweepSpace | None:
    kind = call.func.id
    if kind == "choice":
        ck.r.error("`choice` takes one list: choice([a, b, c])", call.span)
        return None
    want = (2, 3) if kind == "int" else (2,)
    if len(call.args) not in want or any(a.name is not None for a in call.args):
        form = f"{kind}(a, b{', step' if kind == 'int' else ''})"
        ck.r.error(f"`{kind}` takes {' or '.join(map(str, want))} numbers: {form}", call.span)
        return None
    ends = [_number(ck, a.value) for a in call.args]
    if any(e is None for e in ends):
        return None
    lo, hi = ends[0], ends[1]
    assert lo is not None and hi is not None
    if not lo < hi:
        ck.r.error(f"the range of `{key}` is empty: {lo:g} is not below {hi:g}", call.span)
        return None
    if kind == "loguniform" and lo <= 0:
        ck.r.error("`loguniform` needs a positive lower end", call.args[0].span)
        return None
    step = 1
    if kind == "int":
        if not all(float(e).is_integer() for e in ends if e is not None):
            ck.r.error("`int` takes whole numbers", call.span)
            return None
        step = int(ends[2]) if len(ends) == 3 and ends[2] is not None else 1
        if step < 1:
            ck.r.error("`int`'s step must be at least 1", call.args[2].span)
            return None
    return SweepSpace(key, kind, call.span, (), lo, hi, step)


def ck_source(ck: Checker) -> list[str]:
    """The spec's lines (for the source text of each choice): the text the parser read (the
    diagnostics' source registry), else the file; split at "\n" only, as the parser counts lines."""
    cached = ck.facts.get("source_lines")
    if cached is None:
        from pathlib import Path

        from mrc.diagnostics import SOURCES

        text = SOURCES.texts.get(ck.file)
        if text is None:
            try:
                text = Path(ck.file).read_text(encoding="utf-8")
            except OSError:
                text = ""
        cached = [line.rstrip("\r") for line in text.split("\n")] if text else []
        ck.facts["source_lines"] = cached
    return cached


def _slice(lines: list[str], span: Span) -> str | None:
    """The source text at `span`, or None when it spans lines (or the text is unknown)."""
    if not lines or span.line != span.end_line or span.line > len(lines):
        return None
    return lines[span.line - 1][span.col - 1:span.end_col - 1]


def _check_values(ck: Checker, spaces: list[SweepSpace], st: ast.Statement) -> dict[str, tuple[str, Span]] | None:
    """Check the spec with each candidate value set; report at the value. Returns each key's
    site in the spec (where its value is written, or the argument to write it after)."""
    from mrc.check.checker import Checker as Inner

    assert ck.spec is not None and st.block is not None
    exprs: dict[str, list[ast.Expr]] = {}
    for item in st.block.items:
        if isinstance(item, ast.Assign):
            key = ".".join(k.id for k in item.key)
            v = item.value
            if isinstance(v, ast.ListExpr):
                exprs[key] = list(v.items)
            elif isinstance(v, ast.Call) and v.func.id == "choice" and v.args \
                    and isinstance(v.args[0].value, ast.ListExpr):
                exprs[key] = list(v.args[0].value.items)
            elif isinstance(v, ast.Call):
                exprs[key] = [a.value for a in v.args[:2]]
                if v.func.id == "int":  # the ends, as whole numbers
                    exprs[key] = [_as_int(e) for e in exprs[key]]
    sites: dict[str, tuple[str, Span]] = {}
    ok = True
    for space in spaces:
        for expr in exprs.get(space.key, []):
            inner = Inner({space.key: expr})
            inner.in_sweep = True
            try:
                inner.check(ck.spec, ck.base_dir)
            except CompileError as err:
                mine = [d for d in err.diagnostics if d.span is not None and _within(d.span, expr.span)]
                for d in mine:
                    ok = False
                    if "matches no setting" in d.message:
                        guess = suggest_key(space.key, sorted(inner.settable | set(inner.lets)))
                        ck.r.error(f"`{space.key}` is not a setting of this spec", _key_span(st, space.key),
                                   hint=f"did you mean `{guess}`?" if guess else
                                   "keys are `--set` keys: statement.argument (e.g. `optimizer.lr`) or a `let` name")
                        break
                    ck.r.diagnostics.append(d)
                if mine and "matches no setting" in mine[0].message:
                    break
                continue
            site = inner.sites.get(space.key)
            if site is not None:
                sites.setdefault(space.key, site)
    return sites if ok else None


def _as_int(e: ast.Expr) -> ast.Expr:
    if isinstance(e, ast.Num) and isinstance(e.value, float) and e.value.is_integer():
        return ast.Num(int(e.value), str(int(e.value)), e.span)
    return e


def _within(inner: Span, outer: Span) -> bool:
    return inner.file == outer.file and (inner.line, inner.col) >= (outer.line, outer.col) and \
        (inner.end_line, inner.end_col) <= (outer.end_line, outer.end_col)


def _key_span(st: ast.Statement, key: str) -> Span:
    for item in st.block.items if st.block else ():
        if isinstance(item, ast.Assign) and ".".join(k.id for k in item.key) == key:
            first, last = item.key[0].span, item.key[-1].span
            return Span(first.file, first.line, first.col, last.end_line, last.end_col)
    return st.span


@finisher
def check_sweep_metric(ck: Checker) -> None:
    """The sweep's metric names an evaluation set the spec has."""
    sweep: Sweep | None = ck.program.get("sweep")
    if sweep is None or "." not in sweep.metric:
        return
    names_ = {e.name for e in ck.program.get("evals", ())}
    name = sweep.metric.rpartition(".")[0]
    if name not in names_:
        ck.r.error(f"the sweep's metric names evaluation set `{name}`, which the spec does not have", sweep.span)

