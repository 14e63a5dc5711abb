"""Fuzzing the front end: no input makes mrc raise anything but CompileError, and no input makes
`mrc check` print a traceback.

(a) random text and random token soups (built from the grammar's own terminals and the words the
checker knows) through parse + check; (b) mutations of the real specs in specs/ through parse +
check; (c) a handful of deterministic mutations through the whole `mrc check` command, which also
builds the data and the model and traces it.
"""

from __future__ import annotations

import random
import re
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrc.check.checker import KEYWORDS, SELECTOR_CALLS, SELECTOR_WORDS, check
from mrc.cli import main
from mrc.data import DATA_OPTIONS, DATASETS
from mrc.diagnostics import CompileError, render
from mrc.models import MODELS
from mrc.optim import OPTIMIZERS, SCHEDULES
from mrc.parser import _lark, parse

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.mrs"))
SPEC_TEXTS = {p.name: p.read_text() for p in SPECS}

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RAW_TERMINAL = re.compile(r"__ANON|\b(?:LPAR|RPAR|LSQB|RSQB|LBRACE|RBRACE|COMMA|SEMICOLON|EQUAL|"
                          r"VBAR|AMPERSAND|PLUS|MINUS|STAR|SLASH|DOT|NAME|NUMBER|STRING)\b|\$END")


def front_end(text: str) -> None:
    """Parse and check `text`: success, or a CompileError whose every diagnostic renders."""
    try:
        check(parse(text, "fuzz.mrs"), ROOT)
    except CompileError as err:
        assert err.diagnostics
        for d in err.diagnostics:
            shown = render(d)
            assert d.severity != "error" or "error:" in shown
            if "; expected" in d.message:  # a syntax error names tokens the human way
                assert not RAW_TERMINAL.search(d.message), d.message
        assert "error:" in str(err)


# ---- (a) random text and token soups --------------------------------------------------------

PUNCTUATION = "(){}[]=,;.+-*/|&\"'#\\:_ \n\t"
text_chars = st.sampled_from(string.printable + PUNCTUATION * 3 + "éλ→\x0c\r\x00\u2028")


@FUZZ
@given(st.text(text_chars, max_size=120))
def test_random_text(text: str) -> None:
    front_end(text)


def _literal_terminals() -> list[str]:
    out = []
    for term in _lark().terminals:
        pattern = term.pattern
        if pattern.type == "str":
            out.append(pattern.value)
    return out


WORDS = sorted({*KEYWORDS, *SELECTOR_WORDS, *SELECTOR_CALLS, *MODELS.names(), *DATASETS.names(),
                *OPTIMIZERS.names(), *SCHEDULES.names(), *(p.name for p in DATA_OPTIONS),
                "epochs", "steps", "seed", "every", "lr", "drift", "linear", "none", "true",
                "false", "inf", "hidden", "momentum", "head", "body", "rest", "of", "per",
                "tensor", "global", "exclude", "strict", "x", "h", "k", "first_fast_gradient",
                "after_slow", "label_smoothing", "device", "cuda", "dtype", "float64"})
NUMBERS = ["0", "1", "2", "3", "16", "2.5", "0.1", ".5", "1e-3", "2E+4", "1e400", "99999",
           "123456789012345678901234567890", "4096", "0.999"]
STRINGS = ['"head"', '"layers.*.weight"', '"Conv2d"', '"x.py:f"', '"a.pt"', '""', '"\\x"',
           '"\\n"', '"runs/none/final.pt"', '"é"']
TOKENS = _literal_terminals() + WORDS + NUMBERS + STRINGS + ["# c\n", "\n"]


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40),
       st.lists(st.sampled_from([" ", "\n", "", "  "]), min_size=40, max_size=40))
def test_token_soup(tokens: list[str], gaps: list[str]) -> None:
    front_end("".join(t + g for t, g in zip(tokens, gaps, strict=False)))


# A shallow grammar: random statements of the language's four shapes with random expressions,
# so checking (not only parsing) gets random input.

names = st.sampled_from(WORDS)
atoms = st.one_of(names, st.sampled_from(NUMBERS), st.sampled_from(STRINGS),
                  st.integers(-5, 300).map(str))


def _exprs(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "**", "|", "&"]), inner).map(
            lambda t: f"{t[0]} {t[1]} {t[2]}"),
        inner.map(lambda e: f"-{e}"),
        inner.map(lambda e: f"({e})"),
        st.lists(inner, max_size=3).map(lambda xs: f"[{', '.join(xs)}]"),
        st.tuples(names, st.lists(inner, max_size=3)).map(
            lambda t: f"{t[0]}({', '.join(t[1])})"),
    )


exprs = st.recursive(atoms, _exprs, max_leaves=6)
arg_lists = st.lists(st.one_of(exprs, st.tuples(names, exprs).map(lambda t: f"{t[0]}={t[1]}")),
                     max_size=4).map(lambda xs: f"({', '.join(xs)})")
blocks = st.lists(st.tuples(names, exprs).map(lambda t: f"{t[0]} = {t[1]}"), max_size=3).map(
    lambda xs: "{ " + "; ".join(xs) + " }")
statements = st.one_of(
    st.tuples(names, st.one_of(names, st.sampled_from(STRINGS)), st.one_of(st.just(""), arg_lists),
              st.one_of(st.just(""), blocks)).map(lambda t: f"{t[0]} {t[1]}{t[2]} {t[3]}"),
    st.tuples(names, names, exprs, st.one_of(st.just(""), blocks)).map(
        lambda t: f"{t[0]} {t[1]} = {t[2]} {t[3]}"),
    st.tuples(names, arg_lists).map(lambda t: f"{t[0]}{t[1]}"),
    st.tuples(names, blocks).map(lambda t: f"{t[0]} {t[1]}"),
)
VALID_HEAD = "model mlp(hidden=[8])\ndata digits(limit=64)\noptimizer sgd(lr=0.1)\n"


@FUZZ
@given(st.lists(statements, max_size=6), st.booleans())
def test_random_statements(stmts: list[str], with_head: bool) -> None:
    front_end((VALID_HEAD if with_head else "") + "\n".join(stmts))


@pytest.mark.parametrize("text", [
    "let x = 9 ** 9 ** 9",
    "let a = 10 ** 4000\nlet b = a * a * a * a",
    "train(seed=" + "9" * 5000 + ")",
    'data "\\N{nonsense}"',
    "a\x1cb @",
    "\x0b",
    "partition p = random(0.5, per=foo)",
    "partition p = depth(0, hi=x)",
    "let a = 10 ** 400\ntrain(grad_clip=a)",
    "schedule step(gamma=0.5, 10)",
])
def test_inputs_that_once_crashed_the_front_end(text: str) -> None:
    with pytest.raises(CompileError):
        check(parse(VALID_HEAD + text, "fuzz.mrs"), ROOT)


# ---- (b) mutations of the real specs --------------------------------------------------------

TOKEN_RE = re.compile(r'"(?:\\.|[^"\\\n])*"|#[^\n]*|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+|\*\*|'
                      r"[A-Za-z_]\w*|\S")
NUMBER_RE = re.compile(r"(?<![\w.])(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+)(?![\w.])")


def random_number(rng: random.Random, bounded: bool) -> str:
    choices = [str(rng.randint(-3, 300)), f"{rng.uniform(-2, 2):.3g}", "0", "-1", '"7"', "none",
               "true", "[]", f"[{rng.randint(0, 9)}]", ".5", "1e-3"]
    if not bounded:
        choices += ["1e400", str(10 ** rng.randint(5, 60)), "-1e400", "inf", "2 ** 100000"]
    return rng.choice(choices)


def mutate(text: str, rng: random.Random, bounded: bool = False) -> str:
    """One random edit of a spec: a token or line deleted, duplicated or swapped, a number
    replaced, or a keyword inserted."""
    kind = rng.choice(["del_token", "dup_token", "swap_tokens", "del_line", "dup_line",
                       "swap_lines", "number", "number", "keyword"])
    if kind in ("del_line", "dup_line", "swap_lines"):
        lines = text.split("\n")
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        if kind == "del_line":
            del lines[i]
        elif kind == "dup_line":
            lines.insert(j, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if kind == "number":
        found = list(NUMBER_RE.finditer(text))
        if found:
            m = rng.choice(found)
            return text[:m.start()] + random_number(rng, bounded) + text[m.end():]
    tokens = [m for m in TOKEN_RE.finditer(text) if not m.group().startswith("#")]
    a, b = rng.choice(tokens), rng.choice(tokens)
    if kind == "del_token":
        return text[:a.start()] + text[a.end():]
    if kind == "dup_token":
        return text[:a.end()] + " " + a.group() + text[a.end():]
    if kind == "swap_tokens" and a.start() != b.start():
        a, b = sorted((a, b), key=lambda m: m.start())
        return (text[:a.start()] + b.group() + text[a.end():b.start()] + a.group()
                + text[b.end():])
    word = rng.choice([*KEYWORDS, "model", "partition", "let", "rest", "=", "{", "(", "-"])
    return text[:a.start()] + word + " " + text[a.start():]


@FUZZ
@given(st.sampled_from(sorted(SPEC_TEXTS)), st.randoms(use_true_random=False),
       st.integers(1, 3))
def test_mutated_specs(name: str, rng: random.Random, edits: int) -> None:
    text = SPEC_TEXTS[name]
    for _ in range(edits):
        text = mutate(text, rng)
    front_end(text)


def test_unmutated_specs_check() -> None:
    for text in SPEC_TEXTS.values():
        front_end(text)
        check(parse(text, "spec.mrs"), ROOT)  # and they are valid


# ---- (c) the whole `mrc check` on mutated specs ---------------------------------------------

SMALL_DATA = re.compile(r"\bdata (\w+)\(")


def small(text: str) -> str:
    """The spec with at most 64 training examples (`limit` is an option of every data set)."""
    return SMALL_DATA.sub(r"data \1(limit=64, ", text)


def test_mutated_specs_through_mrc_check(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    statuses = []
    names = sorted(SPEC_TEXTS)
    for seed in range(10):
        rng = random.Random(seed)
        name = names[seed % len(names)]
        text = small(SPEC_TEXTS[name])
        for _ in range(rng.randint(1, 2)):
            text = mutate(text, rng, bounded=True)
        path = tmp_path / f"m{seed}_{name}"
        path.write_text(text)
        status = main(["check", str(path)])
        out = capsys.readouterr()
        assert status in (0, 2), (name, text, out.err)
        assert "Traceback" not in out.err, out.err
        assert out.out == ""
        if status == 2:
            assert f"{path}:" in out.err or "error:" in out.err, out.err
            assert re.search(r"\d+ errors? found", out.err), out.err
        statuses.append(status)
    assert set(statuses) == {0, 2}, statuses  # both valid and broken mutants were exercised
