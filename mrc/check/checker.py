"""The checker's driver: AST → Program.

It walks the spec's statements and dispatches each by keyword to the check its technique
registered (`mrc.check.registry`): statements that bind names (`let`, `partition`, `brain`) in
source order, the others once every statement was seen, in the techniques' order (the registry,
mrc/techniques). Then it runs the techniques' whole-spec checks, in the same order, reports
unused `--set` keys, and raises `CompileError` with *every* problem found, in source order, or
builds the `Program` from the fields the checks set. It never raises anything but `CompileError`.
docs/language.md is the reference for each statement.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mrc import ast
from mrc.check.arguments import Arguments, names
from mrc.check.expressions import Bad, CallValue, Symbol
from mrc.check.registry import (
    FINISHERS,
    SELECTOR_WORDS,
    SELECTORS,
    STATEMENTS,
    check_form,
    suggest_statement,
)
from mrc.diagnostics import CompileError, Note, Span
from mrc.program import Program, Selector
from mrc.techniques import techniques
from mrc.techniques.base import resolve
from mrc.techniques.multirate.check import evaluate_selector

_ORDER = {t.name: i for i, t in enumerate(techniques())}
for _technique in techniques():  # each technique's check module registers its statements
    if _technique.check:
        resolve(_technique.check)
DEFERRED = sorted((k for k in STATEMENTS.values() if k.deferred), key=lambda k: _ORDER.get(k.technique, len(_ORDER)))
"""The statements checked once every statement was seen, in the techniques' order."""
_CHECK_OF = {t.check: i for i, t in enumerate(techniques()) if t.check}
WHOLE_SPEC = sorted(FINISHERS, key=lambda f: _CHECK_OF.get(f.__module__, len(_CHECK_OF)))
"""The whole-spec checks, in the techniques' order (a technique's own in registration order)."""

KEYWORDS = STATEMENTS
"""Every statement keyword (a read-only view for tools and tests)."""
SELECTOR_CALLS = SELECTORS


class Checker(Arguments):
    """Checks one spec. Use `check(spec)`; constructor arguments are overrides (`--set`).

    Techniques' checks receive the checker: `value`, `arguments`, `component`, `form` and
    `selector` evaluate, `r` reports, `program` collects the `Program`'s fields and `facts` what
    techniques share while checking (the partitions and brains declared so far).
    """

    def __init__(self, overrides: Mapping[str, ast.Expr] | None = None) -> None:
        super().__init__(overrides)
        self.file = "<spec>"
        self.base_dir = Path(".")
        self.program: dict[str, Any] = {}
        self.facts: dict[str, Any] = {}
        self._seen: dict[str, Span] = {}
        self._selector_depth = 0
        self.spec: ast.Spec | None = None
        self.parts: dict[str, Any] = {}
        """What a technique's statements checked, where `Program` has no field of its own for it
        (a plugin's): `Program.parts`, by technique name."""
        self.in_sweep = False
        """A check of one sweep value (mrc/techniques/sweep/check.py): the sweep itself is skipped."""

    def form(self, st: ast.Statement) -> bool:
        """Check `st` has the parts its keyword takes (see `check_form`)."""
        return check_form(self.r, st)

    def given(self, keyword: str) -> bool:
        """Whether the spec has a `keyword` statement (of a keyword given once)."""
        return keyword in self._seen

    def partition_names(self) -> list[str]:
        """The partitions declared so far: later selectors may name them."""
        return [p.name for p in self.facts.get("partitions", [])]

    def selector(self, expr: ast.Expr) -> Selector:
        """Evaluate a partition's selector expression."""
        if self._selector_depth > ast.MAX_NESTING:  # only a hand-built AST: the parser stops first
            self.r.error(f"this selector nests more than {ast.MAX_NESTING} levels deep", expr.span)
            raise Bad
        self._selector_depth += 1
        try:
            return evaluate_selector(self, expr)
        finally:
            self._selector_depth -= 1

    def whole_statements(self, spec: ast.Spec) -> ast.Spec:
        """`--set optimizer=adam(lr=1e-3)`, `--set model=resnet(depth=32)`, `--set data="x.npz"`:
        an override keyed by a statement's keyword replaces what the statement names and its
        arguments (its block, if any, stays); the statement is then checked as if so written,
        and where it was written is recorded (`sites`) for config.mrs."""
        import dataclasses

        statements = []
        for st in spec.statements:
            expr = self.overrides.get(st.keyword.id)
            call = expr if isinstance(expr, ast.Call) else None
            target = call.func if call else expr if isinstance(expr, ast.Name | ast.Str) else None
            if target is not None and st.name is None and st.value is None and st.block is None:
                key = st.keyword.id
                self.used_overrides.add(key)
                self.settable.add(key)
                start = st.target.span if st.target is not None else st.keyword.span
                self.sites.setdefault(key, ("replace", Span(st.span.file, start.line, start.col, st.span.end_line,
                                                            st.span.end_col) if st.target is not None else
                                            Span(st.span.file, st.span.end_line, st.span.end_col,
                                                 st.span.end_line, st.span.end_col)))
                st = dataclasses.replace(st, target=target, args=call.args if call else None)
            statements.append(st)
        return dataclasses.replace(spec, statements=tuple(statements))

    def check(self, spec: ast.Spec, base_dir: Path) -> Program:
        """Check every statement; raise CompileError with all problems, or return the Program."""
        self.file, self.base_dir = spec.file, base_dir
        spec = self.whole_statements(spec)
        self.spec = spec
        found: dict[str, ast.Statement] = {}
        misspelt: set[str] = set()
        for st in spec.statements:
            kw = st.keyword.id
            kind = STATEMENTS.get(kw)
            if kind is None:
                guess = suggest_statement(st)
                if guess:
                    misspelt.add(guess)
                self.r.error(f"unknown statement `{kw}`", st.keyword.span,
                             hint=f"did you mean `{guess}`?" if guess else
                             f"statements are {names(list(STATEMENTS))}")
                continue
            if kind.once:
                if kw in self._seen:
                    self.r.error(f"`{kw}` is given twice", st.keyword.span,
                                 notes=[Note("first given here", self._seen[kw])])
                    continue
                self._seen[kw] = st.keyword.span
            if kind.deferred:
                found[kw] = st
            else:
                kind.check(self, st)
        for kind in STATEMENTS.values():
            # a misspelt statement (`dta digits()`) is reported as such, not also as missing
            if kind.required and kind.keyword not in self._seen and kind.keyword not in misspelt:
                self.r.error(f"the spec has no `{kind.keyword}` statement",
                             Span(spec.file, 1, 1, 1, 2), hint=kind.required_hint)
        for kind in DEFERRED:
            kind.check(self, found.get(kind.keyword))
        for finish in WHOLE_SPEC:
            finish(self)
        self.report_unused_overrides()
        self.r.raise_if_failed()
        return Program(file=spec.file, base_dir=base_dir,
                       lets={k: v.value for k, v in self.lets.items()}, parts=dict(self.parts), **self.program)


def check(spec: ast.Spec, base_dir: Path, overrides: Mapping[str, ast.Expr] | None = None) -> Program:
    """Check a parsed spec; raises CompileError listing every problem found."""
    return Checker(overrides).check(spec, base_dir)


__all__ = ["KEYWORDS", "SELECTOR_CALLS", "SELECTOR_WORDS", "CallValue", "Checker", "CompileError",
           "Symbol", "check"]
