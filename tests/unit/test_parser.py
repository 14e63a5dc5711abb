"""The parser: every statement shape and expression form, spans, and syntax diagnostics."""

from __future__ import annotations

import re

import pytest

from mrc import ast
from mrc.diagnostics import SOURCES, CompileError, Diagnostic, Span, render
from mrc.parser import TERMINAL_NAMES, _lark, parse, parse_expr

F = "t.mrs"


def one(text: str) -> ast.Statement:
    spec = parse(text, F)
    assert len(spec.statements) == 1
    return spec.statements[0]


def expr(text: str) -> ast.Expr:
    return parse_expr(text, "<e>")


def sp(line: int, col: int, end_line: int, end_col: int, file: str = F) -> Span:
    return Span(file, line, col, end_line, end_col)


def shape(e: ast.Expr) -> object:
    """An expression as nested tuples, without spans, to compare trees compactly."""
    if isinstance(e, ast.Num | ast.Str):
        return e.value
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.BinOp):
        return (e.op, shape(e.left), shape(e.right))
    if isinstance(e, ast.Neg):
        return ("neg", shape(e.operand))
    if isinstance(e, ast.ListExpr):
        return ["list", *(shape(x) for x in e.items)]
    if isinstance(e, ast.Call):
        return ("call", e.func.id, tuple((a.name.id if a.name else None, shape(a.value))
                                         for a in e.args))
    raise AssertionError(e)


def syntax_error(text: str) -> Diagnostic:
    with pytest.raises(CompileError) as info:
        parse(text, F)
    assert len(info.value.diagnostics) == 1
    return info.value.diagnostics[0]


# ---- statement shapes -----------------------------------------------------------------------


def test_target_with_args_and_spans() -> None:
    st = one("model mlp(hidden=[128, 64], activation=relu)")
    assert st.keyword == ast.Name("model", sp(1, 1, 1, 6))
    assert st.target == ast.Name("mlp", sp(1, 7, 1, 10))
    assert st.name is None and st.value is None and st.block is None
    assert st.span == sp(1, 1, 1, 45)
    assert st.args is not None and len(st.args) == 2
    hidden, act = st.args
    assert hidden.name == ast.Name("hidden", sp(1, 11, 1, 17))
    assert hidden.span == sp(1, 11, 1, 27)
    assert isinstance(hidden.value, ast.ListExpr)
    assert hidden.value.span == sp(1, 18, 1, 27)
    assert [(n.value, n.text, n.span) for n in hidden.value.items] == [  # type: ignore[union-attr]
        (128, "128", sp(1, 19, 1, 22)), (64, "64", sp(1, 24, 1, 26))]
    # the span of a kwarg's value: `relu` at columns 40..43
    assert act.value == ast.Name("relu", sp(1, 40, 1, 44))
    assert act.span == sp(1, 29, 1, 44)


def test_string_target_and_positional_args() -> None:
    st = one('data "runs/x.npz"(32, val=0.1)')
    assert st.target == ast.Str("runs/x.npz", sp(1, 6, 1, 18))
    assert st.args is not None
    assert st.args[0].name is None and st.args[0].value == ast.Num(32, "32", sp(1, 19, 1, 21))
    assert st.args[0].span == sp(1, 19, 1, 21)
    assert st.args[1].name is not None and st.args[1].name.id == "val"


def test_bare_target_has_no_args() -> None:
    st = one("model mlp")
    assert st.target == ast.Name("mlp", sp(1, 7, 1, 10))
    assert st.args is None and st.block is None


def test_empty_args_are_an_empty_tuple_not_none() -> None:
    st = one("model mlp()")
    assert st.args == ()


def test_bind_form_with_block() -> None:
    st = one('partition head = module("head") { every = 2; lr = 0.1 }')
    assert st.keyword.id == "partition" and st.target is None and st.args is None
    assert st.name == ast.Name("head", sp(1, 11, 1, 15))
    assert isinstance(st.value, ast.Call) and st.value.func.id == "module"
    assert st.value.span == sp(1, 18, 1, 32)
    assert st.value.args[0].value == ast.Str("head", sp(1, 25, 1, 31))
    assert st.block is not None and st.block.span == sp(1, 33, 1, 56)
    every, lr = st.block.items
    assert isinstance(every, ast.Assign) and every.dotted == "every"
    assert every.value == ast.Num(2, "2", sp(1, 43, 1, 44))
    assert every.span == sp(1, 35, 1, 44)
    assert isinstance(lr, ast.Assign) and lr.value == ast.Num(0.1, "0.1", sp(1, 51, 1, 54))


def test_let_is_a_bind_without_block() -> None:
    st = one("let h = 0.1")
    assert st.keyword.id == "let" and st.name == ast.Name("h", sp(1, 5, 1, 6))
    assert st.value == ast.Num(0.1, "0.1", sp(1, 9, 1, 12))
    assert st.block is None and st.span == sp(1, 1, 1, 12)


def test_args_form() -> None:
    st = one("train(epochs=10, seed=0)")
    assert st.keyword.id == "train" and st.target is None and st.name is None
    assert st.args is not None and [a.name.id for a in st.args if a.name] == ["epochs", "seed"]


def test_block_form_with_nested_statement_and_dotted_key() -> None:
    text = "sweep {\n  optimizer adam(lr=1e-3)\n  optimizer.lr = 0.5\n}"
    st = one(text)
    assert st.target is None and st.args is None and st.name is None
    assert st.block is not None and st.block.span == sp(1, 7, 4, 2)
    nested, assign = st.block.items
    assert isinstance(nested, ast.Statement)
    assert nested.keyword == ast.Name("optimizer", sp(2, 3, 2, 12))
    assert nested.target == ast.Name("adam", sp(2, 13, 2, 17))
    assert nested.span == sp(2, 3, 2, 26)
    assert nested.args is not None and nested.args[0].value == ast.Num(0.001, "1e-3",
                                                                       sp(2, 21, 2, 25))
    assert isinstance(assign, ast.Assign)
    assert assign.key == (ast.Name("optimizer", sp(3, 3, 3, 12)), ast.Name("lr", sp(3, 13, 3, 15)))
    assert assign.dotted == "optimizer.lr"
    assert assign.span == sp(3, 3, 3, 21)
    assert assign.value == ast.Num(0.5, "0.5", sp(3, 18, 3, 21))


def test_target_args_and_block_together() -> None:
    st = one('mgrit "stack"(x=1) { levels = 3 }')
    assert st.target == ast.Str("stack", sp(1, 7, 1, 14))
    assert st.args is not None and len(st.args) == 1
    assert st.block is not None and len(st.block.items) == 1


def test_multi_line_statement_span() -> None:
    st = one("model mlp(\n  hidden=[1,\n 2]\n)")
    assert st.span == sp(1, 1, 4, 2)
    assert st.args is not None and st.args[0].value.span == sp(2, 10, 3, 4)


@pytest.mark.parametrize("sep", ["\n", ";", ",", "; ", " ", ",\n", ";\n"])
def test_block_separators(sep: str) -> None:
    st = one(f"modules {{ a = 1{sep}b = 2{sep}c.d = x }}")
    assert st.block is not None
    assert [i.dotted for i in st.block.items] == ["a", "b", "c.d"]  # type: ignore[union-attr]
    assert [shape(i.value) for i in st.block.items] == [1, 2, "x"]  # type: ignore[union-attr]


def test_dotted_name_is_one_name_with_its_whole_span() -> None:
    st = one("early_stopping(metric = clean.acc)")
    assert st.args is not None
    value = st.args[0].value
    assert isinstance(value, ast.Name) and value.id == "clean.acc"
    assert (value.span.col, value.span.end_col) == (25, 34)


def test_block_trailing_separator_and_empty_block() -> None:
    assert one("modules { a = 1; }").block.items[0].dotted == "a"  # type: ignore[union-attr]
    assert one("modules { a = 1, }").block is not None
    assert one("modules {}").block == ast.Block((), sp(1, 9, 1, 11))


def test_trailing_commas_in_args_and_lists() -> None:
    st = one("model mlp(hidden=[1, 2,], act=relu,)")
    assert st.args is not None and len(st.args) == 2
    assert shape(st.args[0].value) == ["list", 1, 2]
    assert shape(expr("[1,]")) == ["list", 1]
    assert shape(expr("[]")) == ["list"]
    assert shape(expr("f(1, a=2,)")) == ("call", "f", ((None, 1), ("a", 2)))
    assert shape(expr("f()")) == ("call", "f", ())


def test_comments_and_blank_lines_are_ignored() -> None:
    text = "# header\n\nmodel mlp  # trailing # still comment\n   # indented\ndata digits\n"
    spec = parse(text, F)
    assert [s.keyword.id for s in spec.statements] == ["model", "data"]
    assert spec.statements[1].keyword.span == sp(5, 1, 5, 5)
    assert parse("# only a comment", F).statements == ()
    assert parse("", F).statements == ()


def test_many_statements_keep_order_and_file() -> None:
    spec = parse("let a = 1\nlet b = 2\nlet c = 3", "x/y.mrs")
    assert spec.file == "x/y.mrs"
    assert [s.name.id for s in spec.statements if s.name] == ["a", "b", "c"]
    assert all(s.span.file == "x/y.mrs" for s in spec.statements)


def test_keywords_are_plain_names() -> None:
    st = one("frobnicate thing(1)")
    assert st.keyword.id == "frobnicate" and st.target == ast.Name("thing", sp(1, 12, 1, 17))


# ---- expressions ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "tree"), [
    ("a - b * c ** d", ("-", "a", ("*", "b", ("**", "c", "d")))),
    ("x | y & z - w", ("|", "x", ("&", "y", ("-", "z", "w")))),
    ("a | b | c", ("|", ("|", "a", "b"), "c")),
    ("a & b & c", ("&", ("&", "a", "b"), "c")),
    ("a - b - c", ("-", ("-", "a", "b"), "c")),
    ("a / b * c", ("*", ("/", "a", "b"), "c")),
    ("a ** b ** c", ("**", "a", ("**", "b", "c"))),
    ("a + b * c", ("+", "a", ("*", "b", "c"))),
    ("(a + b) * c", ("*", ("+", "a", "b"), "c")),
    ("(a | b) & c", ("&", ("|", "a", "b"), "c")),
    ("a & b | c", ("|", ("&", "a", "b"), "c")),
    ("-a", ("neg", "a")),
    ("--a", ("neg", ("neg", "a"))),
    ("-2 ** 2", ("neg", ("**", 2, 2))),
    ("2 ** -1", ("**", 2, ("neg", 1))),
    ("-a * b", ("*", ("neg", "a"), "b")),
    ("a - -b", ("-", "a", ("neg", "b"))),
    ("h / k", ("/", "h", "k")),
    ("bias - module(\"head\")", ("-", "bias", ("call", "module", ((None, "head"),)))),
    ("f(g(1), x=[a, -1])", ("call", "f", ((None, ("call", "g", ((None, 1),))),
                                          ("x", ["list", "a", ("neg", 1)])))),
    ("[[1], []]", ["list", ["list", 1], ["list"]]),
])
def test_precedence_and_associativity(text: str, tree: object) -> None:
    assert shape(expr(text)) == tree


def test_binop_spans_cover_both_operands() -> None:
    e = expr("a - b * c ** d")
    assert isinstance(e, ast.BinOp) and e.span == sp(1, 1, 1, 15, "<e>")
    assert isinstance(e.right, ast.BinOp) and e.right.span == sp(1, 5, 1, 15, "<e>")
    assert isinstance(e.right.right, ast.BinOp) and e.right.right.span == sp(1, 9, 1, 15, "<e>")
    assert e.right.right.right == ast.Name("d", sp(1, 14, 1, 15, "<e>"))
    neg = expr("-x")
    assert isinstance(neg, ast.Neg) and neg.span == sp(1, 1, 1, 3, "<e>")
    assert neg.operand.span == sp(1, 2, 1, 3, "<e>")


@pytest.mark.parametrize(("text", "value"), [
    ("3", 3), ("0", 0), ("007", 7), ("0.1", 0.1), (".5", 0.5), ("2.", 2.0), ("1e-3", 0.001),
    ("1E3", 1000.0), ("2E+4", 20000.0), ("2.5e+4", 25000.0), ("2.5E-1", 0.25), ("1e400", float("inf")),
])
def test_numbers(text: str, value: float) -> None:
    num = expr(text)
    assert isinstance(num, ast.Num)
    assert num.value == value and num.text == text
    # integer exactly when there is no `.` and no exponent
    assert type(num.value) is (int if re.fullmatch(r"\d+", text) else float)


def test_number_directly_followed_by_a_name_is_two_tokens() -> None:
    # `2e` is not a complete exponent: the number `2`, then the name `e` starting a new statement
    d = syntax_error("let x = 2e\n")
    assert d.span == sp(1, 11, 1, 12)
    assert d.message.startswith("unexpected end of file; expected `(`, `{`, a name or a string")
    assert shape(expr("2e3")) == 2000.0


@pytest.mark.parametrize(("source", "value"), [
    (r'"plain"', "plain"),
    (r'""', ""),
    (r'"a\"b"', 'a"b'),
    (r'"back\\slash"', "back\\slash"),
    (r'"tab\tnew\nline"', "tab\tnew\nline"),
    (r'"\u00e9t\u00e9"', "été"),
    ('"été → ok"', "été → ok"),
    (r'"é\n→"', "é\n→"),
    (r'"# not a comment"', "# not a comment"),
    (r'"runs/pretrain/final.pt"', "runs/pretrain/final.pt"),
])
def test_strings_and_escapes(source: str, value: str) -> None:
    s = expr(source)
    assert isinstance(s, ast.Str) and s.value == value
    assert s.span == sp(1, 1, 1, len(source) + 1, "<e>")


@pytest.mark.parametrize("source", [r'"\x"', r'"\u12"', r'"\N{no such name}"', r'"ok\x4"'])
def test_bad_escapes_are_diagnostics(source: str) -> None:
    d = syntax_error(f"data {source}")
    assert d.message.startswith("bad escape in string")
    assert d.span == sp(1, 6, 1, 6 + len(source))


def test_integer_with_too_many_digits_is_a_diagnostic() -> None:
    d = syntax_error("let x = " + "9" * 5000)
    assert d.message == "this number has too many digits"
    assert d.span == sp(1, 9, 1, 5009)


# ---- parse_expr (--set values) -------------------------------------------------------------


def test_parse_expr_spans_are_relative_to_the_override_text() -> None:
    e = parse_expr("h / 2", "<--set lr>")
    assert isinstance(e, ast.BinOp)
    assert e.span == Span("<--set lr>", 1, 1, 1, 6)
    assert e.left == ast.Name("h", Span("<--set lr>", 1, 1, 1, 2))
    assert e.right == ast.Num(2, "2", Span("<--set lr>", 1, 5, 1, 6))
    lst = parse_expr("[64, 32]", "<s>")
    assert isinstance(lst, ast.ListExpr) and lst.items[1].span == Span("<s>", 1, 6, 1, 8)
    assert SOURCES.line("<s>", 1) == "[64, 32]"


def test_parse_expr_syntax_error_points_into_the_override() -> None:
    with pytest.raises(CompileError) as info:
        parse_expr("(0.1", "<--set optimizer.lr>")
    (d,) = info.value.diagnostics
    assert d.span == Span("<--set optimizer.lr>", 1, 5, 1, 6)
    assert d.message.startswith("unexpected end of file; expected `)`")
    with pytest.raises(CompileError) as info:
        parse_expr("0.1 0.2", "<--set x>")
    (d,) = info.value.diagnostics
    assert d.span == Span("<--set x>", 1, 5, 1, 8)
    assert "number `0.2`" in d.message


@pytest.mark.parametrize("text", ["", "   ", "a = 1", "model mlp", "1,2"])
def test_parse_expr_takes_exactly_one_expression(text: str) -> None:
    with pytest.raises(CompileError, match=r"<x>:1:\d+: error: unexpected"):
        parse_expr(text, "<x>")


# ---- syntax errors --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "line", "col", "message"), [
    ("model mlp(hidden=[128, 64)", 1, 26, "unexpected `)`; expected `,` or `]`"),
    ("lr = 0.1", 1, 4, "unexpected `=`; expected `(`, `{`, a name or a string"),
    ("model mlp\ndata digits(\n  batch=32,,\n)", 3, 12,
     "unexpected `,`; expected `(`, `)`, `[`, a name, a number or a string"),
    ("optimizer sgd(lr=0.1", 1, 21, "unexpected end of file; expected `)` or `,`"),
    # at the end of the file, the caret goes just after the last token, not on blank lines or
    # comments after it
    ("optimizer sgd(lr=0.1\n\n# done\n\n", 1, 21, "unexpected end of file; expected `)` or `,`"),
    ("modules {\n  a = 1\n", 2, 8, "unexpected end of file; expected `,`, `;`, `}` or a name"),
    ("model mlp(a=1 2)", 1, 15, "unexpected number `2`; expected `)` or `,`"),
    ("a(b=c.)", 1, 7, "unexpected `)`; expected a name"),
    ("a(b=1)) ", 1, 7, "unexpected `)`; expected `{`, a name or the end of the file"),
    ("modules { a. = 1 }", 1, 14, "unexpected `=`; expected a name"),
    ("modules { a = }", 1, 15, "unexpected `}`; expected `(`, `[`, a name, a number or a string"),
    ("let x = 1 ** ", 1, 13, "unexpected end of file; expected `(`, `[`, a name, a number or a"),
    ('let x = "abc', 1, 9, "unterminated string"),
    ("model 'mlp'", 1, 7, "unexpected character `'`"),
    ("model mlp @", 1, 11, "unexpected character `@`"),
    ("let x = 1 % 2", 1, 11, "unexpected character `%`"),
    ("model mlp\r\n@", 2, 1, "unexpected character `@`"),
    ("a\x0c@", 1, 3, "unexpected character `@`"),
    ("a\rb\r@", 1, 5, "unexpected character `@`"),
    ("model\x0bmlp", 1, 6, "unexpected character U+000B"),
    ("a\u2028b", 1, 2, "unexpected character U+2028"),
    ("model mlp(\n  hidden=[1,\n  2)", 3, 4, "unexpected `)`; expected `,` or `]`"),
])
def test_syntax_errors(text: str, line: int, col: int, message: str) -> None:
    d = syntax_error(text)
    assert (d.span.line, d.span.col) == (line, col), d  # type: ignore[union-attr]
    assert d.message.startswith(message), d.message
    assert d.severity == "error" and d.span is not None and d.span.file == F


def test_unexpected_token_span_covers_the_token_and_renders() -> None:
    d = syntax_error("model mlp(hidden=[1, 2] 345)")
    assert d.span == sp(1, 25, 1, 28)
    text = render(d)
    assert text.splitlines() == [
        "t.mrs:1:25: error: unexpected number `345`; expected `)` or `,`",
        " 1 | model mlp(hidden=[1, 2] 345)",
        "   |                         ^^^",
    ]


def test_assignment_at_top_level_has_a_hint() -> None:
    d = syntax_error("epochs = 3")
    assert d.hint is not None and "inside a `{ … }` block" in d.hint


def test_single_quote_hint_and_unterminated_string_hint() -> None:
    assert syntax_error("model 'mlp'").hint == "strings use double quotes"
    d = syntax_error('data "abc\n"')
    assert d.message == "unterminated string" and d.span == sp(1, 6, 1, 7)
    assert d.hint is not None and "same line" in d.hint


def test_quoted_line_follows_lark_line_numbers() -> None:
    # a form feed is whitespace, not a line break: the quoted line is the one the span is on
    d = syntax_error("model mlp\x0c\nlet x = @")
    assert (d.span.line, d.span.col) == (2, 9)  # type: ignore[union-attr]
    assert render(d).splitlines()[1] == " 2 | let x = @"


def test_every_terminal_has_a_human_name() -> None:
    ignored = {"WS", "COMMENT"}
    for term in _lark().terminals:
        if term.name not in ignored:
            assert term.name in TERMINAL_NAMES, term.name
    assert "$END" in TERMINAL_NAMES


@pytest.mark.parametrize("text", [
    "model mlp(", "model mlp(a=", "model mlp(a=1 ** )", "let x = (1", "let x = [1, 2",
    "a { b = 1 2 }", "a b c", "a { b. }", "x = y", "a(b=c d)", "a(1) )", "let = 2", "a(|)",
    "a { b = c & }", "a b = 1 ** ** 2", "a [", "a { model mlp ) }",
])
def test_expected_lists_use_human_names(text: str) -> None:
    d = syntax_error(text)
    assert "expected" in d.message
    assert not re.search(r"__ANON|\b[A-Z]{3,}\b|\$END", d.message), d.message


# ---- deep nesting and long lines ------------------------------------------------------------

DEEP = 5000


@pytest.mark.parametrize(("text", "col"), [
    ("let a = " + "[" * DEEP + "1" + "]" * DEEP, 209),       # the 201st bracket
    ("let a = " + "-" * DEEP + "1", 209),                     # the 201st minus sign
    ("partition p = " + ' | '.join(['module("head")'] * DEEP), 15),  # left-deep: all start here
    ("let a = " + "2 ** " * DEEP + "1", 1009),
    ("let a = " + "f(" * DEEP + "1" + ")" * DEEP, 409),
    ("let a = " + " + ".join(["1"] * DEEP), 9),
    ("x " + "{ y " * DEEP + "{}" + "}" * DEEP, 803),
])
def test_deep_nesting_is_a_diagnostic_not_a_crash(text: str, col: int) -> None:
    d = syntax_error(text)
    assert d.message == f"this nests more than {ast.MAX_NESTING} levels deep"
    assert d.span is not None and (d.span.line, d.span.col) == (1, col)
    assert d.hint is not None and "let" in d.hint


def test_nesting_up_to_the_limit_parses() -> None:
    n = ast.MAX_NESTING
    e = expr("[" * n + "1" + "]" * n)
    for _ in range(n):
        assert isinstance(e, ast.ListExpr)
        e = e.items[0]
    assert e == ast.Num(1, "1", sp(1, n + 1, 1, n + 2, "<e>"))
    assert isinstance(expr("-" * n + "1"), ast.Neg)
    assert isinstance(expr(" | ".join(["a"] * (n + 1))), ast.BinOp)  # n operators
    assert isinstance(expr("(" * DEEP + "1" + ")" * DEEP), ast.Num)  # parentheses are no level
    syntax_error("let a = " + " | ".join(["a"] * (n + 2)))


def test_a_long_line_is_quoted_as_a_window_around_the_caret() -> None:
    text = "let a = [" + "1, " * 1_700_000 + "1 2]\n"  # a 5 MB line
    d = syntax_error(text)
    assert d.message == "unexpected number `2`; expected `,` or `]`"
    shown = render(d)
    assert len(shown) < 1000
    _, line, carets = shown.splitlines()
    assert line.startswith(" 1 | …") and line.endswith("1 2]")
    assert carets.index("^") == line.index("2]") and carets.count("^") == 1
    d = syntax_error("let a = [1, 2) " + "x" * 5_000_000)
    _, line, carets = render(d).splitlines()
    assert line.startswith(" 1 | let a = [1, 2) xxx") and line.endswith("x…")
    assert carets.index("^") == line.index(")")


def test_a_huge_token_is_clipped_in_the_message() -> None:
    d = syntax_error("model mlp() " + "y" * 5_000_000 + " = 1")
    assert d.message.startswith("unexpected `=`")
    d = syntax_error("let a = [1 " + "y" * 5_000_000 + "]")
    assert len(d.message) < 200 and "…" in d.message
    assert len(render(d)) < 1000
