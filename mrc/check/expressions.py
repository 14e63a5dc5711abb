"""Values of expressions: numbers, strings, lists, constants, `let` names, arithmetic, `--set`.

`Expressions` holds what a value may depend on (the `let` bindings seen so far and the `--set`
overrides) and evaluates one expression at a time. An expression that cannot be evaluated is
reported at its span and raises `Bad`, so callers skip it without reporting it again.
The `let` statement is checked here (`check_let`, registered by the core technique) because it
only binds a value.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mrc import ast
from mrc.check.registry import SELECTORS, STATEMENTS
from mrc.diagnostics import Note, Reporter, Span
from mrc.registry import did_you_mean

if TYPE_CHECKING:
    from mrc.check.checker import Checker


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


class Bad(Exception):
    """An expression that could not be evaluated; already reported."""


CONSTANTS = {"true": True, "false": False, "none": None, "inf": math.inf}

ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow,
}

MAX_INT_BITS = 4096
"""Integer arithmetic beyond this many bits is an error (and `9 ** 9 ** 9` never hangs)."""


class Expressions:
    """Evaluates expressions against the `let` bindings seen so far and the `--set` overrides."""

    def __init__(self, overrides: Mapping[str, ast.Expr] | None = None) -> None:
        self.r = Reporter()
        self.lets: dict[str, Value] = {}
        self.bad_lets: set[str] = set()  # lets whose value was an error (already reported)
        self.let_spans: dict[str, Span] = {}
        self.overrides = dict(overrides or {})
        self.used_overrides: set[str] = set()
        self.settable: set[str] = set()
        self.sites: dict[str, tuple[str, Span]] = {}
        """Per `--set` key, where its value is in the spec: ("replace", the value's span) or
        ("after", the span of the argument to write it after)."""
        self._depth = 0

    def value(self, expr: ast.Expr) -> Value:
        """Evaluate an expression to a plain value (numbers, strings, lists, symbols, calls)."""
        if self._depth > ast.MAX_NESTING:  # only a hand-built AST gets here: the parser stops first
            self.r.error(f"this expression nests more than {ast.MAX_NESTING} levels deep", expr.span)
            raise Bad
        self._depth += 1
        try:
            return self._value(expr)
        finally:
            self._depth -= 1

    def _value(self, expr: ast.Expr) -> Value:
        if isinstance(expr, ast.Num):
            return Value(expr.value, expr.span)
        if isinstance(expr, ast.Str):
            return Value(expr.value, expr.span)
        if isinstance(expr, ast.Name):
            if expr.id in self.bad_lets:  # reported at the `let`; do not report its uses too
                raise Bad
            if expr.id in self.lets:
                return Value(self.lets[expr.id].value, expr.span)
            if expr.id in CONSTANTS:
                return Value(CONSTANTS[expr.id], expr.span)
            return Value(Symbol(expr.id), expr.span)
        if isinstance(expr, ast.ListExpr):
            return Value([self.value(x).value for x in expr.items], expr.span)
        if isinstance(expr, ast.Neg):
            inner = self.value(expr.operand)
            if not is_num(inner.value):
                self.r.error(f"cannot negate {kind(inner.value)}", expr.span)
                raise Bad
            return Value(-inner.value, expr.span)
        if isinstance(expr, ast.BinOp):
            return self._binop(expr)
        if isinstance(expr, ast.Call):
            if expr.func.id in SELECTORS:
                self.r.error(f"`{expr.func.id}(…)` selects parameters and is only allowed in a "
                             "`partition` statement", expr.span)
                raise Bad
            args, kwargs = [], {}
            for a in expr.args:
                v = self.value(a.value).value
                if a.name is None:
                    args.append(v)
                else:
                    kwargs[a.name.id] = v
            return Value(CallValue(expr.func.id, tuple(args), kwargs), expr.span)
        raise AssertionError(f"unknown expression {expr!r}")

    def _binop(self, expr: ast.BinOp) -> Value:
        if expr.op in "|&":
            self.r.error(f"`{expr.op}` combines parameter selectors and is only allowed in a "
                         "`partition` statement", expr.span)
            raise Bad
        left, right = self.value(expr.left), self.value(expr.right)
        for side in (left, right):
            if isinstance(side.value, Symbol):
                self.unknown_name(side.value.name, side.span)
                raise Bad
            if not is_num(side.value):
                self.r.error(f"arithmetic needs numbers, not {kind(side.value)}", side.span)
                raise Bad
        if too_large(expr.op, left.value, right.value):
            self.r.error("the result of this is too large", expr.span)
            raise Bad
        try:
            result = ARITH[expr.op](left.value, right.value)
        except (ZeroDivisionError, OverflowError) as err:
            self.r.error(f"cannot compute this: {err}", expr.span)
            raise Bad from None
        if isinstance(result, complex):
            self.r.error("this power has no real value", expr.span)
            raise Bad
        if isinstance(result, float) and result.is_integer() and expr.op != "/" and \
                isinstance(left.value, int) and isinstance(right.value, int):
            result = int(result)
        return Value(result, expr.span)

    def unknown_name(self, name: str, span: Span) -> None:
        """Report a name that is neither a `let` nor a word the context accepts."""
        hint = did_you_mean(name, list(self.lets))
        self.r.error(f"unknown name `{name}`", span,
                     hint=f"did you mean `{hint}`?" if hint else "define it first with `let "
                     f"{name} = …`")

    def override(self, key: str, expr: ast.Expr | None) -> ast.Expr:
        """The `--set key=…` expression when there is one (marking it used), else `expr`. Every
        key asked for is settable; where the spec writes its value is recorded (`sites`), so a
        sweep can write its best values into the spec."""
        self.settable.add(key)
        if expr is not None:
            self.sites.setdefault(key, ("replace", expr.span))
        if key in self.overrides:
            self.used_overrides.add(key)
            return self.overrides[key]
        assert expr is not None
        return expr


def check_let(ck: Checker, st: ast.Statement | None) -> None:
    """`let NAME = EXPR`: bind a value (a `--set NAME=…` replaces the expression)."""
    assert st is not None
    if not ck.form(st):
        return
    assert st.name is not None and st.value is not None
    name = st.name.id
    if name in ck.lets:
        ck.r.error(f"`{name}` is defined twice", st.name.span,
                   notes=[Note("first defined here", ck.let_spans[name])])
        return
    if name in CONSTANTS or name in STATEMENTS:
        ck.r.error(f"`{name}` is a reserved word and cannot be redefined", st.name.span)
        return
    expr = ck.override(name, st.value)
    try:
        v = ck.value(expr)
    except Bad:
        v = Value(math.nan, st.name.span)
        ck.bad_lets.add(name)
    if isinstance(v.value, Symbol):
        ck.unknown_name(v.value.name, v.span)
        ck.bad_lets.add(name)
    ck.lets[name] = v
    ck.let_spans[name] = st.name.span


def too_large(op: str, left: Any, right: Any) -> bool:
    """Whether integer `left op right` would exceed `MAX_INT_BITS` (checked before computing it)."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return False
    if op == "**":
        return right > 0 and abs(left) > 1 and right * (abs(left).bit_length() - 1) > MAX_INT_BITS
    if op == "*":
        return abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS + 1
    return max(abs(left).bit_length(), abs(right).bit_length()) > MAX_INT_BITS


def is_num(v: Any) -> bool:
    """A number, and not a boolean."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def kind(v: Any) -> str:
    """What a value is, for messages: `a string`, `the name \\`x\\``, …"""
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


def plain(v: Any) -> Any:
    """Values handed to user code: symbols become strings."""
    if isinstance(v, Symbol):
        return v.name
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v
