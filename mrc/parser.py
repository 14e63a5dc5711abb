"""Text → AST with the Lark grammar in grammar/mrs.lark; syntax errors become diagnostics.

Building the LALR parser from the grammar costs ≈ 0.3 s (Lark analyses the grammar and, in
strict mode, checks every pair of terminals for collisions), more than the rest of `mrc check`
but torch. So the parser is loaded from its tables, grammar/mrs_tables.py: Python literals that
`python -m mrc.grammar.regenerate` writes from the grammar (no pickle: nothing mrc reads back
runs code). The tables carry the key they were made for (the grammar's text, `OPTIONS` and the
Lark version); where the key differs (a grammar edited since, another Lark) the parser is built
from the grammar as before, and tests/unit/test_startup.py fails until the tables are remade.
"""

from __future__ import annotations

import functools
import hashlib
import pkgutil
from collections.abc import Mapping, Sequence
from typing import Any

import lark
from lark import Lark, Token, Transformer_NonRecursive, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from mrc import ast
from mrc.diagnostics import SOURCES, CompileError, Diagnostic, Span, clip

# Human names for the grammar's terminals, used in "expected …" messages.
TERMINAL_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "LPAR": "`(`", "RPAR": "`)`",
    "LSQB": "`[`", "RSQB": "`]`", "LBRACE": "`{`", "RBRACE": "`}`", "COMMA": "`,`",
    "SEMICOLON": "`;`", "EQUAL": "`=`", "DOT": "`.`", "PLUS": "`+`", "MINUS": "`-`",
    "STAR": "`*`", "SLASH": "`/`", "__ANON_0": "`**`", "VBAR": "`|`", "AMPERSAND": "`&`",
    "$END": "the end of the file",
}


OPTIONS: dict[str, Any] = {"parser": "lalr", "propagate_positions": True, "strict": True,
                           "maybe_placeholders": True, "start": ["start", "override"]}
"""How Lark builds the parser; part of the tables' key."""


def grammar_text() -> str:
    """The text of grammar/mrs.lark."""
    data = pkgutil.get_data("mrc.grammar", "mrs.lark")
    assert data is not None, "mrc.grammar is a package installed with its mrs.lark"
    return data.decode("utf-8")


def tables_key(grammar: str) -> str:
    """What parse tables are valid for: the grammar's text, `OPTIONS` and the Lark version."""
    return hashlib.sha256(repr((grammar, sorted(OPTIONS.items()), lark.__version__)).encode()).hexdigest()


def build_parser(grammar: str) -> Lark:
    """The parser built from the grammar's text (what the tables are made from)."""
    return Lark(grammar, **OPTIONS)


def parser_tables(parser: Lark) -> dict[str, Any]:
    """The parser's tables as plain data (dicts, lists, strings, numbers), for `Lark.load`."""
    from lark.grammar import Rule
    from lark.lexer import TerminalDef

    data, memo = parser.memo_serialize([TerminalDef, Rule])
    return {"data": data, "memo": memo}


@functools.cache
def _lark() -> Lark:
    """The parser: loaded from grammar/mrs_tables.py when they were made for this grammar,
    options and Lark, else built from the grammar (see the module docstring)."""
    from mrc.grammar import mrs_tables

    grammar = grammar_text()
    if mrs_tables.KEY == tables_key(grammar):
        return Lark.load(mrs_tables.TABLES)
    return build_parser(grammar)


def _span(file: str, meta: Any) -> Span:
    return Span(file, meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_span(file: str, tok: Token) -> Span:
    return Span(file, tok.line, tok.column, tok.end_line, tok.end_column)


def _unquote(text: str) -> str:
    body = text[1:-1]
    return body.encode("latin-1", "backslashreplace").decode("unicode_escape") if "\\" in body else body


def _number(text: str) -> int | float:
    if any(c in text for c in ".eE"):
        return float(text)
    return int(text)


class _Builder(Transformer_NonRecursive):
    """Builds frozen AST records bottom-up; one method per grammar alias.

    Non-recursive, so no nesting depth can exhaust Python's stack here; `_too_deep` keeps what
    it builds within `ast.MAX_NESTING` for the stages after it."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def _s(self, meta: Any) -> Span:
        return _span(self.file, meta)

    def _name(self, tok: Token) -> ast.Name:
        return ast.Name(str(tok), _tok_span(self.file, tok))

    # statements
    def start(self, items: list[Any]) -> tuple[ast.Statement, ...]:
        return tuple(items)

    def override(self, items: list[Any]) -> ast.Expr:
        return items[0]

    @v_args(meta=True)
    def decl_target(self, meta: Any, c: list[Any]) -> ast.Statement:
        kw, target, args, block = c
        return ast.Statement(self._name(kw), target, None, None, args, block, self._s(meta))

    @v_args(meta=True)
    def decl_bind(self, meta: Any, c: list[Any]) -> ast.Statement:
        kw, name, value, block = c
        return ast.Statement(self._name(kw), None, self._name(name), value, None, block, self._s(meta))

    @v_args(meta=True)
    def decl_args(self, meta: Any, c: list[Any]) -> ast.Statement:
        kw, args, block = c
        return ast.Statement(self._name(kw), None, None, None, args, block, self._s(meta))

    @v_args(meta=True)
    def decl_block(self, meta: Any, c: list[Any]) -> ast.Statement:
        kw, block = c
        return ast.Statement(self._name(kw), None, None, None, None, block, self._s(meta))

    def target_name(self, c: list[Token]) -> ast.Name:
        return self._name(c[0])

    def target_string(self, c: list[Token]) -> ast.Str:
        return self._str(c[0])

    def _str(self, tok: Token) -> ast.Str:
        span = _tok_span(self.file, tok)
        try:
            return ast.Str(_unquote(str(tok)), span)
        except UnicodeDecodeError as err:  # "\x", "\u12", "\N{nonsense}"
            raise CompileError([Diagnostic(f"bad escape in string: {err.reason}", span,
                                           hint="write a backslash itself as `\\\\`")]) from None

    def args(self, c: list[Any]) -> tuple[ast.Arg, ...]:
        return tuple(a for a in c if a is not None)

    @v_args(meta=True)
    def kwarg(self, meta: Any, c: list[Any]) -> ast.Arg:
        return ast.Arg(self._name(c[0]), c[1], self._s(meta))

    @v_args(meta=True)
    def posarg(self, meta: Any, c: list[Any]) -> ast.Arg:
        return ast.Arg(None, c[0], self._s(meta))

    @v_args(meta=True)
    def block(self, meta: Any, c: list[Any]) -> ast.Block:
        return ast.Block(tuple(c), self._s(meta))

    @v_args(meta=True)
    def assign(self, meta: Any, c: list[Any]) -> ast.Assign:
        return ast.Assign(c[0], c[1], self._s(meta))

    def key(self, c: list[Token]) -> tuple[ast.Name, ...]:
        return tuple(self._name(t) for t in c)

    # expressions
    def _bin(op: str):  # type: ignore[no-redef]
        @v_args(meta=True)
        def method(self: _Builder, meta: Any, c: list[Any]) -> ast.BinOp:
            return ast.BinOp(op, c[0], c[1], self._s(meta))
        return method

    union, intersect, add, sub = _bin("|"), _bin("&"), _bin("+"), _bin("-")
    mul, div, pow = _bin("*"), _bin("/"), _bin("**")

    @v_args(meta=True)
    def neg(self, meta: Any, c: list[Any]) -> ast.Neg:
        return ast.Neg(c[0], self._s(meta))

    def number(self, c: list[Token]) -> ast.Num:
        span = _tok_span(self.file, c[0])
        try:
            return ast.Num(_number(str(c[0])), str(c[0]), span)
        except ValueError:  # Python refuses to convert integers of more than 4300 digits
            raise CompileError([Diagnostic("this number has too many digits", span)]) from None

    def string(self, c: list[Token]) -> ast.Str:
        return self._str(c[0])

    def name(self, c: list[Token]) -> ast.Name:
        return self._name(c[0])

    def dotted(self, c: list[Token]) -> ast.Name:
        """`clean.acc`: one name whose parts are joined by dots (e.g. a metric of an eval set)."""
        first, last = _tok_span(self.file, c[0]), _tok_span(self.file, c[-1])
        return ast.Name(".".join(str(t) for t in c), first.to(last))

    @v_args(meta=True)
    def call(self, meta: Any, c: list[Any]) -> ast.Call:
        return ast.Call(self._name(c[0]), c[1], self._s(meta))

    @v_args(meta=True)
    def list(self, meta: Any, c: list[Any]) -> ast.ListExpr:
        return ast.ListExpr(tuple(x for x in c if x is not None), self._s(meta))


NESTING = frozenset({"union", "intersect", "add", "sub", "mul", "div", "pow", "neg", "call", "list",
                     "block"})
"""The tree nodes that count as one level of nesting: operators, calls, lists and blocks."""


def _too_deep(file: str, tree: Tree) -> Diagnostic | None:
    """A diagnostic at the first place that nests more than `ast.MAX_NESTING` levels, if any."""
    stack: list[tuple[Any, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, Tree):
            continue
        if node.data in NESTING:
            depth += 1
            if depth > ast.MAX_NESTING:
                return Diagnostic(f"this nests more than {ast.MAX_NESTING} levels deep", _span(file, node.meta),
                                  hint=f"brackets, operators, calls and blocks nest at most {ast.MAX_NESTING} "
                                  "levels; name parts with `let`")
        stack += ((child, depth) for child in reversed(node.children))
    return None


OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "__ANON_0", "VBAR", "AMPERSAND"}


def _expected(names: set[str]) -> str:
    """Human list of what could come next; operators are left out when anything else fits."""
    if names - OPERATORS:
        names = names - OPERATORS
    human = sorted({TERMINAL_NAMES.get(n, f"`{n.lower()}`") for n in names})
    if len(human) > 6:
        human = [*human[:6], "…"]
    return ", ".join(human[:-1]) + (" or " if len(human) > 1 else "") + human[-1] if human else "nothing"


def _syntax_error(file: str, text: str, err: UnexpectedInput) -> Diagnostic:
    line, col = max(err.line, 1), max(err.column, 1)
    # `accepts` is exact; LALR's `expected` may list tokens of merged states that cannot follow.
    expected = set(getattr(err, "accepts", None) or getattr(err, "expected", ()))
    if isinstance(err, UnexpectedToken) and err.token.type == "$END":
        if err.token.end_line and err.token.end_column:  # Lark's $END borrows the last token's place
            line, col = err.token.end_line, err.token.end_column  # just after the last token
        else:  # no token at all: the end of the text, with lines counted as Lark counts them
            lines = text.split("\n")
            if len(lines) > 1 and not lines[-1]:
                lines.pop()
            line, col = len(lines), len(lines[-1].rstrip("\r")) + 1
        span = Span(file, line, col, line, col + 1)
        return Diagnostic(f"unexpected end of file; expected {_expected(expected)}", span)
    if isinstance(err, UnexpectedToken):
        tok = err.token
        span = Span(file, tok.line, tok.column, tok.end_line or tok.line,
                    tok.end_column or tok.column + len(str(tok)))
        what = {"NAME": "name", "NUMBER": "number", "STRING": "string"}.get(tok.type)
        text = clip(str(tok), 40)  # a token may be megabytes long
        shown = f"{what} `{text}`" if what else f"`{text}`"
        hint = None
        if tok.type == "EQUAL":
            hint = "a setting `key = value` belongs inside a `{ … }` block or a call's `( … )`"
        return Diagnostic(f"unexpected {shown}; expected {_expected(expected)}", span,
                          hint=hint)
    if isinstance(err, UnexpectedCharacters):
        ch = err.char
        hint = "strings use double quotes" if ch == "'" else None
        if ch == '"':
            return Diagnostic("unterminated string", Span(file, line, col, line, col + 1),
                              hint="close the string with `\"` on the same line")
        shown = f"`{ch}`" if ch.isprintable() else f"U+{ord(ch):04X}"
        return Diagnostic(f"unexpected character {shown}", Span(file, line, col, line, col + 1),
                          hint=hint)
    if isinstance(err, UnexpectedEOF):
        return Diagnostic("unexpected end of file", Span(file, line, col, line, col + 1))
    return Diagnostic(str(err).splitlines()[0], Span(file, line, col, line, col + 1))


def parse(text: str, file: str = "<spec>") -> ast.Spec:
    """Parse spec text. Raises CompileError with a syntax diagnostic when the text is malformed."""
    return ast.Spec(file, _parse(text, file, "start"))


def parse_expr(text: str, file: str) -> ast.Expr:
    """Parse a single expression (the value of a `--set key=value` override)."""
    return _parse(text, file, "override")


def _parse(text: str, file: str, start: str) -> Any:
    SOURCES.add(file, text)
    try:
        tree = _lark().parse(text, start=start)
    except UnexpectedInput as err:
        diag = _syntax_error(file, text, err)
        if start == "override" and isinstance(err, UnexpectedToken) and "$END" in err.expected \
                and err.token.type != "$END":
            diag = Diagnostic(diag.message.split(";")[0] + " after the value", diag.span,
                              hint="a value is one expression, e.g. 0.1, 2 * h, [64, 32] or \"text\"")
        raise CompileError([diag]) from None
    deep = _too_deep(file, tree)
    if deep is not None:
        raise CompileError([deep])
    try:
        return _Builder(file).transform(tree)
    except VisitError as err:  # a bug in the builder, not the user's input: surface the cause
        raise err.orig_exc from None


def parse_overrides(overrides: Mapping[str, str] | Sequence[str] | None) -> dict[str, ast.Expr]:
    """`--set key=value` items (or a mapping) → parsed expressions, each with its own span."""
    if not overrides:
        return {}
    items = overrides.items() if isinstance(overrides, Mapping) else [_split(s) for s in overrides]
    out: dict[str, ast.Expr] = {}
    errors: list[Diagnostic] = []
    for key, value in items:
        key = key.strip()
        name = f"<--set {key}>"
        if not key or not all(part.isidentifier() for part in key.split(".")):
            errors.append(Diagnostic(f"`--set {key}={value}`: the key must be a name such as "
                                     "`optimizer.lr` or a `let` name", None))
            continue
        text = str(value)
        try:  # parsed in place after `KEY=`, so a caret falls under the key or the value as typed
            out[key] = parse_expr(" " * (len(key) + 1) + text, name)
        except CompileError as err:
            errors.extend(err.diagnostics)
        SOURCES.add(name, f"{key}={text}")
    if errors:
        raise CompileError(errors)
    return out


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise CompileError([Diagnostic(f"`--set {item}` needs the form key=value", None)])
    key, _, value = item.partition("=")
    return key, value
