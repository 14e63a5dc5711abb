"""Checks of layer-parallel training: `mgrit "STACK" { levels; coarsening; relax; forward_iters;
backward_iters; forward_tol; backward_tol; warm_start; buffer; on_divergence; check_every }`.

The settings are checked here, before any model exists; whether `STACK` names a residual stack of
the model, and whether its depth fits the hierarchy, is the binding's to report
(mrc/techniques/mgrit/bind.py) at the statement's target. `--set mgrit.STACK.KEY=…` sets one
setting (the stack's path with dots written as underscores: `mgrit.stack.levels=2`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrc import ast
from mrc.check.expressions import Bad, Symbol
from mrc.check.registry import finisher, statement
from mrc.diagnostics import Note, Span
from mrc.program import Mgrit
from mrc.registry import Param
from mrc.techniques.mgrit.grid import COARSEST, DEFAULT_GUESS, GUESSES, MORE_CAP

if TYPE_CHECKING:
    from mrc.check.checker import Checker

RELAX = ("F", "FCF")
"""`relax` (F or FCF, or a list of them: one per level transition) and `warm_start` (a word of
GUESSES, or true / false) are words, read apart from the other settings (KEYS lists them for the
hints)."""
KEYS = (
    Param("levels", "int", 0, "levels of the time grid hierarchy (1: serial propagation; 0: as many as "
          f"leave the coarsest level at most {COARSEST} points)", lo=0),
    Param("coarsening", "ints", [4], "coarsening factor, one for every level or one per level transition", lo=2),
    Param("relax", "any", "FCF", "F or FCF relaxation, one for every level or one per level transition"),
    Param("forward_iters", "int", 2, "MGRIT iterations of the forward solve (at most, with a tolerance)", lo=1),
    Param("backward_iters", "int", 1, "MGRIT iterations of the adjoint solve (at most, with a tolerance)", lo=1),
    Param("forward_tol", "float", 0.0, "stop the forward solve below this residual (0: run every iteration)", lo=0),
    Param("backward_tol", "float", 0.0, "stop the adjoint solve below this residual (0: run every iteration)", lo=0),
    Param("warm_start", "any", DEFAULT_GUESS, "each solve's initial guess: previous (the previous step's states; "
          "true), shifted (them moved by the change of y_0), coarse (a serial sweep of the coarsest level), "
          "cache (each example's own states from the last step that held it) or off (false)"),
    Param("buffer", "int", 0, "layers at each end of the stack propagated serially around the MGRIT solve", lo=0),
    Param("on_divergence", "choice", "warn", "what a solve whose measured convergence factor exceeds 1 does: "
          f"warn, more_iterations (double its iterations, up to {MORE_CAP}× the spec's) or serial (the stack "
          "runs serially from then on)", choices=("warn", "more_iterations", "serial")),
    Param("check_every", "int", 0, "every this many steps the solves run twice their iterations to measure "
          "the convergence factor (0: never)", lo=0),
)


@statement("mgrit", "layer-parallel training of a residual stack by MGRIT", technique="mgrit", target=True,
           block=True, usage='mgrit "STACK" { levels = 3; coarsening = 4; relax = FCF }')
def check_mgrit(ck: Checker, st: ast.Statement | None) -> None:
    """`mgrit "STACK" { … }`: see the module docstring and docs/language.md."""
    assert st is not None
    if not ck.form(st):
        return
    target = st.target
    if not isinstance(target, ast.Str | ast.Name):
        return
    path = target.value if isinstance(target, ast.Str) else target.id
    seen: dict[str, Span] = ck.facts.setdefault("mgrit_spans", {})
    if path in seen:
        ck.r.error(f"`mgrit` is given twice for the stack `{path}`", target.span,
                   notes=[Note("first given here", seen[path])])
        return
    seen[path] = target.span
    args: list[ast.Arg] = []
    for item in st.block.items if st.block else ():
        if isinstance(item, ast.Assign) and len(item.key) == 1:
            args.append(ast.Arg(item.key[0], item.value, item.span))
        else:
            ck.r.error("an `mgrit` block holds `key = value` settings", item.span,
                       hint="levels, coarsening, relax, forward_iters, backward_iters, forward_tol, "
                       "backward_tol, warm_start, buffer, on_divergence, check_every")
    prefix = f"mgrit.{path.replace('.', '_')}."
    # keys whose values are words or lists the generic argument check does not read: each its own parser
    parsers = {"relax": _relax, "warm_start": _warm_start}
    special = {key: next((a for a in args if a.name is not None and a.name.id == key), None) for key in parsers}
    others = tuple(a for a in args if all(a is not s for s in special.values()))
    values, spans = ck.arguments("`mgrit`", KEYS, others, st.span, prefix, own=frozenset(parsers))
    parsed: dict[str, object] = {"relax": ("FCF",), "warm_start": DEFAULT_GUESS}
    for key, arg in special.items():
        if arg is None and args:  # where a sweep writes it: after the block's last setting
            ck.sites.setdefault(f"{prefix}{key}", ("after", args[-1].span))
        if arg is None and f"{prefix}{key}" not in ck.overrides:
            continue
        expr = ck.override(f"{prefix}{key}", arg.value if arg else None)
        try:
            raw = ck.value(expr).value
        except Bad:
            return
        parsed[key] = parsers[key](ck, raw, expr.span)
        spans[key] = expr.span
    relax, warm = parsed["relax"], parsed["warm_start"]
    if relax is None or warm is None or len(values) != len(KEYS):
        return
    levels = values["levels"]
    coarsening = tuple(values["coarsening"])
    if not levels:  # automatic: a list of one per level transition says how many; else the binding
        levels = max(len(coarsening), len(relax)) + 1 if max(len(coarsening), len(relax)) > 1 else 0
    for key, items in (("coarsening", coarsening), ("relax", relax)):
        if levels and len(items) not in (1, max(1, levels - 1)):
            ck.r.error(f"`{key}` has {len(items)} entries: give one for every level, or one per level "
                       f"transition ({levels - 1} for {levels} levels)", spans.get(key, st.span))
            return
    if values["on_divergence"] != "warn" and not values["check_every"]:
        ck.r.error(f"`on_divergence = {values['on_divergence']}` acts on a measured convergence factor, and "
                   "`check_every` is 0 (never measure)", spans.get("on_divergence", st.span),
                   hint="add `check_every = 50`: every 50 steps that step's solves run twice their iterations")
        return
    ck.facts.setdefault("mgrit", []).append(Mgrit(
        path, st.keyword.span, target.span, levels, coarsening, relax, values["forward_iters"],
        values["backward_iters"], values["forward_tol"], values["backward_tol"], warm, spans, buffer=values["buffer"],
        on_divergence=values["on_divergence"], check_every=values["check_every"]))


def _warm_start(ck: Checker, raw: object, span: Span) -> str | None:
    """`warm_start`: a guess of mrc/techniques/mgrit/guess.py, or true (previous) / false (off)."""
    if isinstance(raw, bool):
        return "previous" if raw else "off"
    word = raw.name if isinstance(raw, Symbol) else raw
    if word not in GUESSES:
        ck.r.error(f"`warm_start` must be {', '.join(GUESSES[:-1])} or {GUESSES[-1]} (or true / false), "
                   f"not {word!r}", span)
        return None
    return str(word)


def _relax(ck: Checker, raw: object, span: Span) -> tuple[str, ...] | None:
    items = raw if isinstance(raw, list | tuple) else [raw]
    out = []
    for item in items:
        word = item.name if isinstance(item, Symbol) else item
        if word not in RELAX:
            ck.r.error(f"`relax` must be F or FCF (or a list of them), not {word!r}", span)
            return None
        out.append(str(word))
    return tuple(out)


@finisher
def check_mgrit_combinations(ck: Checker) -> None:
    """The stacks solved by MGRIT, and what they cannot be combined with (yet)."""
    solves: list[Mgrit] = ck.facts.get("mgrit", [])
    ck.program["mgrit"] = tuple(solves)
    if solves and ck.program.get("modules") is not None:
        ck.r.error("`mgrit` and `modules` cannot be combined yet", solves[0].span,
                   hint="module-wise training cuts the network the MGRIT solve spans")
    distributed = ck.program.get("distributed")
    for s in solves:
        if s.warm_start == "cache" and distributed is not None:
            ck.r.error(f"`warm_start = cache` is not supported with `distributed {distributed.mode}` yet: each rank "
                       "solves a part of the batch or of the layers, and the cache keeps one process's whole solve "
                       "of each example", s.spans.get("warm_start", s.span), hint="use `warm_start = shifted`")
        key = "on_divergence" if s.on_divergence != "warn" else "check_every" if s.check_every else ""
        if key and distributed is not None and distributed.mode == "layers":
            ck.r.error(f"`{key}` is not supported with `distributed layers` yet: each rank solves one block, and "
                       "the measuring iterations and the switch are written for one process's solve",
                       s.spans.get(key, s.span))

