"""The statement registry: each statement keyword, registered by its technique with its check.

A technique module (`mrc.techniques.*.check`) registers every statement it gives meaning to with
`@statement(...)`, every parameter selector it adds with `@selector(...)` and any whole-spec check
with `@finisher`. The driver (`mrc.check.checker`) knows none of them by name: it dispatches by
keyword, so adding a technique adds a module, not a branch to a central if-chain.

A statement's *shape* (which of target, `NAME = value`, arguments and block it takes) is declared
here too: `Checker.form` checks a statement against it, and a misspelt keyword is matched against
the statements whose shape fits.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mrc import ast
from mrc.diagnostics import Reporter

if TYPE_CHECKING:
    from mrc.check.checker import Checker
    from mrc.registry import Registry

StatementCheck = Callable[["Checker", "ast.Statement | None"], None]
SelectorCheck = Callable[["Checker", "ast.Call"], Any]
Finisher = Callable[["Checker"], None]


@dataclass(frozen=True, slots=True)
class StatementKind:
    """One statement keyword and how it is checked.

    target / bind / args / block: the parts the statement takes (`target` and `bind` are required
    when true; `args` and `block` are optional when allowed). once: it may appear once per spec.
    deferred: its check runs after every statement was seen (with None when absent), so it may use
    `let`s defined anywhere; otherwise it runs in source order. required: the spec must have it
    (`required_hint` says how). usage: the form shown in hints. targets: the registry its target
    names, for ranking did-you-mean suggestions.
    """

    keyword: str
    meaning: str
    check: StatementCheck
    technique: str
    target: bool = False
    bind: bool = False
    args: bool = False
    block: bool = False
    once: bool = False
    deferred: bool = False
    required: bool = False
    required_hint: str = ""
    usage: str = ""
    targets: Callable[[], Registry] | None = None

    def fits(self, st: ast.Statement) -> bool:
        """Whether `st` has the shape this statement takes."""
        return ((st.target is not None) == self.target and (st.name is not None) == self.bind
                and (st.args is None or self.args) and (st.block is None or self.block))


STATEMENTS: dict[str, StatementKind] = {}
"""Keyword → statement, in registration order (the order deferred checks run in)."""

SELECTORS: dict[str, SelectorCheck] = {}
"""Selector call name (`module`, `random`, …) → the function that evaluates it."""

SELECTOR_WORDS: dict[str, str] = {}
"""Selector words (`all`, `rest`, `weight`, `bias`) → what each selects."""

FINISHERS: list[Finisher] = []
"""Whole-spec checks run after every statement's check, in registration order."""


def statement(keyword: str, meaning: str, *, technique: str, **shape: Any) -> Callable[[StatementCheck],
                                                                                       StatementCheck]:
    """Register the decorated function as the check of `keyword` (see `StatementKind`)."""

    def wrap(fn: StatementCheck) -> StatementCheck:
        if keyword in STATEMENTS:
            raise ValueError(f"statement `{keyword}` registered twice")
        STATEMENTS[keyword] = StatementKind(keyword, meaning, fn, technique, **shape)
        return fn

    return wrap


def selector(name: str) -> Callable[[SelectorCheck], SelectorCheck]:
    """Register the decorated function as the evaluation of the selector call `name(…)`."""

    def wrap(fn: SelectorCheck) -> SelectorCheck:
        if name in SELECTORS:
            raise ValueError(f"selector `{name}` registered twice")
        SELECTORS[name] = fn
        return fn

    return wrap


def finisher(fn: Finisher) -> Finisher:
    """Register a whole-spec check (run once every statement has been checked)."""
    FINISHERS.append(fn)
    return fn


def suggest_statement(st: ast.Statement) -> str | None:
    """The statement a misspelt keyword most likely meant.

    Among the keywords close in spelling, one whose shape fits the statement wins, then one whose
    registry knows the target (`modle mlp(…)` is `model`, not `modules`), then the closest.
    """
    word = st.keyword.id
    close = difflib.get_close_matches(word, list(STATEMENTS), n=len(STATEMENTS), cutoff=0.6)
    if not close:
        lowered = {k.lower(): k for k in STATEMENTS}
        return lowered.get(word.lower())

    def score(kw: str) -> tuple[bool, bool, float]:
        kind = STATEMENTS[kw]
        known = False
        if kind.targets is not None and isinstance(st.target, ast.Name):
            known = st.target.id in kind.targets()
        return kind.fits(st), known, difflib.SequenceMatcher(None, word, kw).ratio()

    return max(close, key=score)


def check_form(r: Reporter, st: ast.Statement) -> bool:
    """Check that a statement has the parts its keyword takes; report the first one extra.

    Returns whether the shape is right (the statement's own check goes on only then).
    """
    kind = STATEMENTS[st.keyword.id]
    kw, shape = kind.keyword, kind.usage or kind.keyword
    ok = True
    if (st.target is not None) != kind.target and (kind.target or st.target is not None):
        where = st.target.span if st.target is not None else st.keyword.span
        r.error(f"`{kw}` {'needs a name after it' if kind.target else 'takes no name here'}",
                where, hint=f"write `{shape}`")
        ok = False
    elif (st.name is not None) != kind.bind:
        where = st.name.span if st.name is not None else st.keyword.span
        r.error(f"`{kw}` {'needs `NAME = value`' if kind.bind else 'takes no `= value`'}",
                where, hint=f"write `{shape}`")
        ok = False
    elif st.args is not None and not kind.args:
        r.error(f"`{kw}` takes no arguments", st.args[0].span if st.args else st.span,
                hint=f"write `{shape}`")
        ok = False
    elif st.block is not None and not kind.block:
        r.error(f"`{kw}` takes no `{{ … }}` block", st.block.span, hint=f"write `{shape}`")
        ok = False
    return ok
