"""Checks of the planned statement `sweep`: it is part of the language (docs/language.md fixes
its design) and reports "not supported yet" at its keyword until the technique that gives it
meaning arrives; that technique then replaces its entry here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrc import ast
from mrc.check.registry import STATEMENTS, statement

if TYPE_CHECKING:
    from mrc.check.checker import Checker

_ARRIVES_WITH = {"sweep": "hyper-parameter sweeps"}


def _not_supported_yet(ck: Checker, st: ast.Statement | None) -> None:
    assert st is not None
    kw = st.keyword.id
    ck.r.error(f"`{kw}` ({STATEMENTS[kw].meaning}) is not supported yet", st.keyword.span,
               hint=f"it is specified in docs/language.md and arrives with {_ARRIVES_WITH[kw]}")


statement("sweep", "a hyper-parameter search", technique="planned", target=True, args=True,
          block=True, once=True, usage="sweep METHOD(args…) { KEY = SPACE … }")(_not_supported_yet)
