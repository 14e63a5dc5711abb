"""The checker: Program values, `--set` overrides, one run reporting every error, selectors,
statements that are not supported yet, and required / duplicate statements."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mrc.api import check_spec, parse_overrides
from mrc.check.checker import check
from mrc.diagnostics import CompileError, Diagnostic, Span, render
from mrc.parser import parse
from mrc.program import Program, Select, SelectRandom, SelectSet

BASE = "model mlp()\ndata digits()\noptimizer sgd(lr=0.1)\n"

FULL = """\
let h = 0.1
let k = 4
model mlp(hidden=[32, 16], activation=tanh)
data digits(batch=16, limit=64, normalize=true)
optimizer sgd(lr=h / k, momentum=0.9)
schedule cosine(warmup=k * 5)
train(epochs=2, seed=3, label_smoothing=0.1)
early_stopping(metric=val_acc, patience=k - 1)
partition head = module("head") { optimizer adam(lr=2e-3) }
partition body = rest
"""


def program(text: str, file: str = "c.mrs") -> Program:
    return check(parse(text, file), Path("."))


def errors(text: str, file: str = "c.mrs") -> list[Diagnostic]:
    with pytest.raises(CompileError) as info:
        program(text, file)
    diags = list(info.value.diagnostics)
    assert diags and all(d.severity == "error" for d in diags)
    return diags


def one_error(text: str) -> Diagnostic:
    diags = errors(text)
    assert len(diags) == 1, [d.message for d in diags]
    return diags[0]


def at(d: Diagnostic) -> tuple[int, int]:
    assert d.span is not None
    return d.span.line, d.span.col


@pytest.fixture
def full(tmp_path: Path) -> Path:
    path = tmp_path / "full.mrs"
    path.write_text(FULL)
    return path


# ---- Program values -------------------------------------------------------------------------


def test_full_spec_values(full: Path) -> None:
    p = check_spec(full)
    assert p.file == str(full) and p.base_dir == full.parent and p.name == "full"
    assert p.lets == {"h": 0.1, "k": 4}
    assert p.model.name == "mlp" and not p.model.user
    assert p.model.kwargs == {"hidden": [32, 16], "activation": "tanh", "dropout": 0.0}
    assert p.data.name == "digits"
    assert p.data.kwargs["batch"] == 16 and p.data.kwargs["limit"] == 64
    assert p.data.kwargs["normalize"] is True
    assert p.data.kwargs["val"] == 0.2 and p.data.kwargs["shuffle"] is True  # defaults filled
    assert p.optimizer.name == "sgd"
    assert p.optimizer.kwargs["lr"] == pytest.approx(0.025)  # h / k
    assert p.optimizer.kwargs["momentum"] == 0.9
    assert p.optimizer.kwargs["weight_decay"] == 0.0 and p.optimizer.kwargs["nesterov"] is False
    assert p.schedule.name == "cosine" and p.schedule.kwargs["warmup"] == 20
    assert type(p.schedule.kwargs["warmup"]) is int
    assert (p.train.epochs, p.train.steps, p.train.seed) == (2, None, 3)
    assert p.train.label_smoothing == 0.1 and p.train.log_every == 10
    assert p.train.device == "auto" and p.train.dtype == "float32"
    assert p.early_stopping is not None
    assert (p.early_stopping.metric, p.early_stopping.patience) == ("val_acc", 3)
    assert p.early_stopping.mode == "max" and p.early_stopping.restore_best is True
    assert p.init is None
    head, body = p.partitions
    assert head.name == "head" and head.selector == Select("module", head.selector.span, "head")
    assert head.every == 1 and head.lr is None and head.drift == "none"
    assert head.optimizer is not None and head.optimizer.name == "adam"
    assert head.optimizer.kwargs["lr"] == 0.002
    assert body.name == "body" and isinstance(body.selector, Select)
    assert body.selector.kind == "rest" and body.optimizer is None
    # spans point back into the spec
    assert p.optimizer.arg_spans["lr"] == Span(str(full), 5, 18, 5, 23)
    assert p.model.span == Span(str(full), 3, 7, 3, 10)


def test_defaults_when_optional_statements_are_absent() -> None:
    p = program(BASE)
    assert p.schedule.name == "constant"
    assert p.train.epochs == 1 and p.train.steps is None and p.train.seed == 0
    assert p.early_stopping is None and p.init is None and p.partitions == () and p.lets == {}
    assert p.model.kwargs["hidden"] == [128]
    assert p.data.kwargs["batch"] == 64


@pytest.mark.parametrize(("expr", "value", "kind"), [
    ("7 / 7", 1.0, float), ("2 ** 3", 8, int), ("2 ** -1", 0.5, float), ("3 * 4 - 2", 10, int),
    ("1 + 0.5", 1.5, float), ("-a", -3, int), ("a * 2.0", 6.0, float), ("10 - a * 2", 4, int),
    ("(a + 1) ** 2", 16, int), ("-2 ** 2", -4, int), ("1e-3 * 1000", 1.0, float),
    ("a / 2", 1.5, float), ("true", True, bool), ("none", None, type(None)),
])
def test_let_arithmetic(expr: str, value: object, kind: type) -> None:
    p = program(BASE + f"let a = 3\nlet x = {expr}\n")
    assert p.lets["x"] == value and type(p.lets["x"]) is kind


def test_lets_flow_into_arguments_with_the_parameters_type() -> None:
    p = program(BASE + "let n = 4\nlet e = n / 2\ntrain(epochs=e, seed=n * 2)\n")
    assert p.lets["e"] == 2.0
    assert p.train.epochs == 2 and type(p.train.epochs) is int  # 2.0 is accepted as an integer
    assert p.train.seed == 8


def test_inf_lists_and_strings_as_values() -> None:
    p = program(BASE + 'let a = inf\nlet b = [1, 2.5, "x"]\nlet c = "text"\n')
    assert p.lets["a"] == math.inf
    assert p.lets["b"] == [1, 2.5, "x"] and p.lets["c"] == "text"


def test_positional_arguments_fill_parameters_in_order() -> None:
    p = program(BASE + "schedule step(10, 0.5)\n")
    assert p.schedule.kwargs["every"] == 10 and p.schedule.kwargs["gamma"] == 0.5


def test_positional_after_named_is_an_error() -> None:
    d = one_error(BASE + "schedule step(every=10, 0.5)\n")
    assert d.message.startswith("a positional argument cannot follow a named one")
    assert at(d) == (4, 25)


@pytest.mark.parametrize(("text", "message", "where"), [
    ("let a = 9 ** 9 ** 9", "the result of this is too large", (4, 9)),
    ("let a = 10 ** 400\ntrain(grad_clip=a)", "`grad_clip` is too large", (5, 17)),
    ("let a = 1 / 0", "cannot compute this", (4, 9)),
    ("let a = (-8) ** 0.5", "this power has no real value", (4, 9)),
    ('let a = "x" + 1', "arithmetic needs numbers, not a string", (4, 9)),
    ("let a = -[1]", "cannot negate a list", (4, 9)),
    ("let a = b", "unknown name `b`", (4, 9)),
    ("let a = 1 | 2", "`|` combines parameter selectors", (4, 9)),
    ('let a = module("x")', "`module(…)` selects parameters", (4, 9)),
    ("let true = 1", "`true` is a reserved word", (4, 5)),
    ("let a = 1\nlet a = 2", "`a` is defined twice", (5, 5)),
    ("train(epochs=2.5)", "`epochs` must be an integer, not 2.5", (4, 14)),
    ("train(epochs=1, steps=2)", "give `epochs` or `steps`, not both", (4, 1)),
    ("train(device=gpu)", "`device` must be one of `auto`, `cpu`, `cuda`", (4, 14)),
    ("train(epocs=2)", "unknown argument `epocs` for `train`", (4, 7)),
    ("schedule step(gamma=0.5)", "schedule `step` needs `every`", (4, 1)),
    ("early_stopping(patience=0)", "`patience` = 0 is out of range", (4, 25)),
    ("init x", "`init` needs the path of a state_dict file as a string", (4, 6)),
    ('init "a.pt" { x = 1 }', "`init` takes no `{ … }` block", (4, 13)),
    ("let x", "`let` takes no name here", (4, 5)),
    ("train { epochs = 1 }", "`train` takes no `{ … }` block", (4, 7)),
    ("model2 x", "unknown statement `model2`", (4, 1)),
])
def test_single_errors(text: str, message: str, where: tuple[int, int]) -> None:
    d = one_error(BASE + text + "\n")
    assert d.message.startswith(message), d.message
    assert at(d) == where
    assert "error:" in render(d)


def test_misspelt_names_get_did_you_mean() -> None:
    assert one_error(BASE + "trian(epochs=1)\n").hint == "did you mean `train`?"
    assert one_error(BASE + "train(epocs=2)\n").hint == "did you mean `epochs`?"
    assert one_error(BASE + "let k = 2\nlet x = kk\n").hint == "did you mean `k`?"
    assert one_error(BASE + "train(device=cdua)\n").hint == "did you mean `cuda`?"


# ---- overrides ------------------------------------------------------------------------------


def test_overrides_change_values(full: Path) -> None:
    p = check_spec(full, ["optimizer.lr=0.5", "h=2", "train.epochs=3"])
    assert p.optimizer.kwargs["lr"] == 0.5
    assert p.lets["h"] == 2 and p.train.epochs == 3
    assert p.optimizer.arg_spans["lr"].file == "<--set optimizer.lr>"
    # the partition's own optimizer is not the base optimizer
    assert p.partitions[0].optimizer.kwargs["lr"] == 0.002  # type: ignore[union-attr]


def test_let_override_flows_into_later_expressions(full: Path) -> None:
    p = check_spec(full, {"h": "2", "k": "2 * 4"})
    assert p.lets == {"h": 2, "k": 8}
    assert p.optimizer.kwargs["lr"] == 0.25  # h / k
    assert p.schedule.kwargs["warmup"] == 40  # k * 5
    assert p.early_stopping is not None and p.early_stopping.patience == 7


def test_overrides_of_defaults_nested_and_partition_settings(full: Path) -> None:
    p = check_spec(full, ["data.val=0.5", "model.hidden=[4, 2]", "partition.head.lr=0.3",
                          "partition.head.optimizer.lr=0.25", "optimizer.nesterov=true",
                          "schedule.end=0.01"])
    assert p.data.kwargs["val"] == 0.5
    assert p.model.kwargs["hidden"] == [4, 2]
    head = p.partitions[0]
    assert head.lr == 0.3
    assert head.optimizer is not None and head.optimizer.kwargs["lr"] == 0.25
    assert p.optimizer.kwargs["lr"] == pytest.approx(0.025)  # untouched
    assert p.optimizer.kwargs["nesterov"] is True
    assert p.schedule.kwargs["end"] == 0.01


def test_mgrit_words_are_set_as_the_spec_writes_them() -> None:
    """`--set mgrit.stack.warm_start=cache` and `--set mgrit.stack.relax=[F, FCF]` take bare words, as the spec
    does, whether the block writes the key (relax) or not (warm_start: it was read as an unknown `let` name)."""
    path = Path(__file__).resolve().parents[2] / "specs" / "mgrit_levelsets.mrs"
    p = check_spec(path, ["mgrit.stack.warm_start=cache", "mgrit.stack.relax=[F, FCF]"])
    (m,) = p.mgrit
    assert (m.warm_start, m.relax) == ("cache", ("F", "FCF"))
    with pytest.raises(CompileError, match="`warm_start` must be previous"):
        check_spec(path, ["mgrit.stack.warm_start=cahce"])


def _override_error(path: Path, overrides: list[str]) -> Diagnostic:
    with pytest.raises(CompileError) as info:
        check_spec(path, overrides)
    (d,) = info.value.diagnostics
    return d


def test_unknown_override_key_points_into_the_override(full: Path) -> None:
    d = _override_error(full, ["optimizer.lrr=0.1"])
    assert d.message == "`--set optimizer.lrr` matches no setting of this spec"
    assert d.span == Span("<--set optimizer.lrr>", 1, 1, 1, 14)  # the caret under the key
    assert render(d).splitlines()[1:4] == [" 1 | optimizer.lrr=0.1", "   | ^^^^^^^^^^^^^",
                                           "hint: did you mean `optimizer.lr`?"]


@pytest.mark.parametrize(("key", "guess"), [("optimizer.learning_rate", "optimizer.lr"),
                                            ("optimizer.weight_decy", "optimizer.weight_decay"),
                                            ("optimzer.lr", "optimizer.lr"), ("data.batch_size", "data.batch")])
def test_an_unknown_override_key_gets_the_closest_key_of_its_statement(full: Path, key: str, guess: str) -> None:
    d = _override_error(full, [f"{key}=1"])
    assert d.hint == f"did you mean `{guess}`?"


def test_bad_override_value_points_into_the_override(full: Path) -> None:
    d = _override_error(full, ["optimizer.lr=-1"])
    assert d.message.startswith("`lr` = -1 is out of range")
    assert d.span == Span("<--set optimizer.lr>", 1, 14, 1, 16)  # the value, after `optimizer.lr=`
    assert render(d).splitlines()[1:3] == [" 1 | optimizer.lr=-1", "   |              ^^"]
    d = _override_error(full, ["train.epochs=2.5"])
    assert d.message == "`epochs` must be an integer, not 2.5"
    assert d.span is not None and d.span.file == "<--set train.epochs>"
    d = _override_error(full, ["h=nope"])
    assert d.message == "unknown name `nope`" and d.span == Span("<--set h>", 1, 3, 1, 7)


def test_unparsable_override_points_into_the_override(full: Path) -> None:
    d = _override_error(full, ["optimizer.lr=(0.1"])
    assert d.span == Span("<--set optimizer.lr>", 1, 18, 1, 19)
    assert d.message.startswith("unexpected end of file")
    d = _override_error(full, ["optimizer.lr=0.1 0.2"])
    assert d.span == Span("<--set optimizer.lr>", 1, 18, 1, 21)
    d = _override_error(full, ["optimizer.lr="])
    assert d.span is not None and d.span.file == "<--set optimizer.lr>"


def test_override_without_equals_or_with_a_bad_key(full: Path) -> None:
    d = _override_error(full, ["optimizer.lr"])
    assert d.message == "`--set optimizer.lr` needs the form key=value"
    d = _override_error(full, ["1x=2"])
    assert "`--set 1x=2`: the key must be a name" in d.message
    d = _override_error(full, ["=2"])
    assert "the key must be a name" in d.message


def test_every_bad_override_is_reported(full: Path) -> None:
    with pytest.raises(CompileError) as info:
        check_spec(full, ["optimizer.lr=-1", "train.seed=x", "nope=1"])
    messages = sorted(d.message for d in info.value.diagnostics)
    assert len(messages) == 3
    assert messages[0].startswith("`--set nope` matches no setting")
    assert messages[1].startswith("`lr` = -1 is out of range")
    assert messages[2].startswith("unknown name `x`")


# ---- one run reports every error ------------------------------------------------------------


def test_five_errors_in_one_run_sorted_by_position() -> None:
    text = (
        "model mlp(hiden=[32])\n"           # 1:11 unknown argument
        "data digits(batch=0)\n"            # 2:19 out of range
        "optimizer sgd(lr=0.1, momentum=1.5)\n"  # 3:32 out of range
        "partition head = modul(\"head\")\n"    # 4:18 unknown selector
        "train(epochs=2, sed=1)\n"          # 5:17 unknown argument
    )
    diags = errors(text)
    assert [at(d) for d in diags] == [(1, 11), (2, 19), (3, 32), (4, 18), (5, 17)]
    assert [d.message.split(" ")[0] for d in diags] == ["unknown", "`batch`", "`momentum`",
                                                       "unknown", "unknown"]
    rendered = str(CompileError(diags))
    assert rendered.count("error:") == 5 and rendered.endswith("5 errors found")


def test_errors_are_sorted_even_when_found_out_of_order() -> None:
    # statement-level errors are found first, argument errors later: the output is in file order
    text = "optimizer sgd(lr=-1)\nmodel mlp(hidden=x)\ndata digits()\nmodel mlp()\nbogus()\n"
    diags = errors(text)
    assert [at(d) for d in diags] == sorted(at(d) for d in diags)
    assert len(diags) == 4


def test_an_error_in_a_let_is_reported_once_not_at_every_use() -> None:
    diags = errors(BASE + "let a = 1 / 0\nlet b = a * 2\ntrain(seed=b, epochs=a)\n")
    assert [(d.message, at(d)) for d in diags] == [("cannot compute this: division by zero",
                                                    (4, 9))]
    diags = errors(BASE + "let a = nope\ntrain(seed=a)\n")
    assert [(d.message, at(d)) for d in diags] == [("unknown name `nope`", (4, 9))]


# ---- selectors ------------------------------------------------------------------------------


def selector(text: str, before: str = ""):
    p = program(BASE + before + f"partition p = {text}\npartition other = rest\n")
    part = next(x for x in p.partitions if x.name == "p")
    return part.selector


def test_selector_set_algebra() -> None:
    sel = selector('bias | weight & module("head") - type("Linear")')
    assert isinstance(sel, SelectSet) and sel.op == "|"
    assert sel.left == Select("bias", sel.left.span)
    assert isinstance(sel.right, SelectSet) and sel.right.op == "&"
    assert isinstance(sel.right.right, SelectSet) and sel.right.right.op == "-"
    assert sel.describe() == '(bias | (weight & (module("head") - type("Linear"))))'
    assert sel.span == Span("c.mrs", 4, 15, 4, 62)


@pytest.mark.parametrize(("text", "kind", "pattern", "lo", "hi", "described"), [
    ("all", "all", "", None, None, "all"),
    ("weight", "weight", "", None, None, "weight"),
    ("bias", "bias", "", None, None, "bias"),
    ('params("layers.*.weight")', "params", "layers.*.weight", None, None,
     'params("layers.*.weight")'),
    ('module("layer1")', "module", "layer1", None, None, 'module("layer1")'),
    ('type("Conv2d")', "type", "Conv2d", None, None, 'type("Conv2d")'),
    ("type(Conv2d)", "type", "Conv2d", None, None, 'type("Conv2d")'),
    ("depth(0, 2)", "depth", "", 0, 2, "depth(0, 2)"),
    ("depth(-1)", "depth", "", -1, None, "depth(-1, end)"),
    ("depth(lo=1, hi=-1)", "depth", "", 1, -1, "depth(1, -1)"),
])
def test_leaf_selectors(text: str, kind: str, pattern: str, lo: int | None, hi: int | None,
                        described: str) -> None:
    sel = selector(text)
    assert isinstance(sel, Select)
    assert (sel.kind, sel.pattern, sel.lo, sel.hi) == (kind, pattern, lo, hi)
    assert sel.describe() == described


def test_partition_names_are_selectors() -> None:
    p = program(BASE + 'partition head = module("head")\npartition hb = head | bias\n'
                "partition other = rest\n")
    sel = p.partitions[1].selector
    assert isinstance(sel, SelectSet)
    assert sel.left == Select("partition", sel.left.span, pattern="head")
    assert sel.describe() == "(head | bias)"


def test_rest_is_resolved_last() -> None:
    p = program(BASE + "partition other = rest\npartition b = bias\n")
    assert [x.name for x in p.partitions] == ["b", "other"]


def test_random_selector_values() -> None:
    sel = selector('random(0.25, per=global, of=weight - module("head"))')
    assert isinstance(sel, SelectRandom)
    assert sel.fraction == 0.25 and sel.per == "global"
    assert isinstance(sel.of, SelectSet) and sel.of.op == "-"


@pytest.mark.parametrize(("text", "message", "col"), [
    ("modul(\"head\")", "unknown selector `modul`", 15),
    ("baias", "`baias` is not a selector", 15),
    ("later", "`later` is not a selector", 15),
    ("1 + all", "this is not a parameter selector", 15),
    ('module("x") & "y"', "this is not a parameter selector", 29),
    ("module()", "`module` takes one pattern", 15),
    ("params(1)", "`params` needs a pattern string", 22),
    ('module("")', "`module` needs a pattern string", 22),
    ("depth()", "`depth` needs `lo`", 15),
    ("depth(0, hi=x)", "unknown name `x`", 27),
    ('depth(0, "x")', "`hi` must be an integer", 24),
    ("random(0.5, per=foo)", "`per` must be one of `tensor`, `global`", 31),
    ("random(0)", "`fraction` = 0 is out of range", 22),
    ("all | rest", "`rest` stands alone", 15),
])
def test_selector_errors(text: str, message: str, col: int) -> None:
    diags = errors(BASE + f"partition p = {text}\npartition later = bias\n")
    d = next(d for d in diags if d.message.startswith(message))
    assert at(d) == (4, col), d


def test_misspelt_selector_gets_did_you_mean() -> None:
    d = one_error(BASE + "partition p = baias\n")
    assert d.hint == "did you mean `bias`?"
    d = one_error(BASE + 'partition p = modul("x")\n')
    assert d.hint == "did you mean `module`?"


def test_partition_errors() -> None:
    d = one_error(BASE + "partition all = bias\n")
    assert d.message == "`all` is a selector word and cannot name a partition"
    diags = errors(BASE + "partition a = bias\npartition a = weight\n")
    assert [(d.message, at(d)) for d in diags] == [("partition `a` is defined twice", (5, 11))]
    assert diags[0].notes[0].message == "first defined here"
    assert diags[0].notes[0].span == Span("c.mrs", 4, 11, 4, 12)
    diags = errors(BASE + "partition a = rest\npartition b = rest\n")
    assert diags[0].message == "only one partition can be `rest`" and at(diags[0]) == (5, 15)
    d = one_error(BASE + "partition a = all { x.y = 2 }\n")
    assert d.message == "partition settings are plain names"
    d = one_error(BASE + "partition a = all { train(epochs=1) }\n")
    assert d.message == "`train` cannot appear inside a partition"
    d = one_error(BASE + "partition a = all { lr = 1, lr = 2 }\n")
    assert d.message == "`lr` is given twice" and at(d) == (4, 29)
    d = one_error(BASE + "partition a = all { optimizer sgd(lr=1); optimizer sgd(lr=2) }\n")
    assert d.message == "a partition has one `optimizer`"
    d = one_error(BASE + 'partition a = all { lr = "x" }\n')
    assert d.message == '`lr` must be a number, not "x"'
    d = one_error(BASE + "partition a = all { every = 0 }\n")
    assert d.message.startswith("`every` = 0 is out of range")
    d = one_error(BASE + "partition a = all { optimizer adamm(lr=1) }\n")
    assert d.message == "unknown optimizer `adamm`" and d.hint == "did you mean `adam`?"


# ---- statements that are not supported yet --------------------------------------------------


# ---- required and duplicate statements ------------------------------------------------------


def test_required_statements() -> None:
    diags = errors("train(epochs=1)\n")
    assert [d.message for d in diags] == [f"the spec has no `{kw}` statement"
                                          for kw in ("model", "data", "optimizer")]
    assert all(at(d) == (1, 1) for d in diags)
    assert diags[0].hint == "add e.g. `model mlp(hidden=[128])`"
    diags = errors("")
    assert len(diags) == 3
    d = one_error("model mlp()\ndata digits()\n")
    assert d.message == "the spec has no `optimizer` statement"


@pytest.mark.parametrize("statement", ["model mlp()", "data digits()", "optimizer adam()",
                                       "schedule constant()", "train(epochs=1)",
                                       "early_stopping()", 'init "x.pt"',
                                       "multirate()"])
def test_single_statements_cannot_repeat(statement: str) -> None:
    text = BASE + f"{statement}\n{statement}\n"
    if statement.startswith(("model", "data", "optimizer")):
        text = BASE + f"{statement}\n"
    diags = errors(text)
    dup = [d for d in diags if d.message.endswith("is given twice")]
    assert len(dup) == 1 and len(diags) == 1
    assert dup[0].notes and dup[0].notes[0].message == "first given here"
    assert dup[0].notes[0].span is not None
    assert dup[0].notes[0].span.line < dup[0].span.line  # type: ignore[union-attr]


def test_user_references_keep_their_text_and_arguments() -> None:
    p = program('model "nets/net.py:build"(width=3, act=relu)\n'
                'data "my_data.npz"(batch=8, scale=2)\noptimizer sgd(lr=0.1)\n')
    assert p.model.user and p.model.name == "nets/net.py:build"
    assert p.model.kwargs == {"width": 3, "act": "relu"}
    assert p.model.describe() == '"nets/net.py:build"(width=3, act=relu)'
    assert p.data.user and p.data.name == "my_data.npz"
    assert p.data.kwargs["batch"] == 8 and p.data.kwargs["scale"] == 2
    d = one_error('model "n.py:f"(3)\ndata digits()\noptimizer sgd(lr=0.1)\n')
    assert d.message == "arguments of user code must be named"


def test_average_momentum_with_partitions_in_brains_is_refused(tmp_path) -> None:
    from mrc.api import check_spec
    from mrc.diagnostics import CompileError

    path = tmp_path / "s.mrs"
    path.write_text("model mlp()\ndata digits()\noptimizer sgd(lr=0.1)\npartition head = module(\"head\")\n"
                    "partition body = rest\nbrain a { every = 1 }\nbrain b { every = 2 }\n"
                    "merge mean(momentum=average)\n")
    try:
        check_spec(path)
    except CompileError as err:
        assert [str(d.span) for d in err.diagnostics] == [f"{path}:8:1"]
        assert "momentum=average` with partitions inside brains" in err.diagnostics[0].message
    else:
        raise AssertionError("expected a diagnostic")


def test_train_kernels_and_threads() -> None:
    p = program(BASE)
    assert p.train.kernels == "auto" and p.train.threads == 0
    p = program(BASE + 'train(kernels="torch.optim", threads=4)\n')
    assert p.train.kernels == "torch.optim" and p.train.threads == 4
    p = program(BASE + 'train(kernels="triton")\n')
    assert p.train.kernels == "triton"
    d = one_error(BASE + "train(kernels=cuda)\n")
    assert d.message.startswith("`kernels` must be one of `auto`, `torch`, `triton`, `torch.optim`")
    d = one_error(BASE + "train(threads=-1)\n")
    assert d.message.startswith("`threads` = -1 is out of range") and at(d) == (4, 15)


# ---- front-end faults (issue 10) ------------------------------------------------------------


def test_a_deep_hand_built_expression_is_a_diagnostic_not_a_crash() -> None:
    from mrc import ast

    base = parse(BASE, "c.mrs")
    here = Span("c.mrs", 4, 1, 4, 2)
    value: ast.Expr = ast.Num(1, "1", here)
    for _ in range(5000):
        value = ast.Neg(value, here)
    sel: ast.Expr = ast.Name("bias", here)
    for _ in range(5000):
        sel = ast.BinOp("|", sel, ast.Name("weight", here), here)
    let = ast.Statement(ast.Name("let", here), None, ast.Name("a", here), value, None, None, here)
    part = ast.Statement(ast.Name("partition", here), None, ast.Name("p", here), sel, None, None,
                         here)
    with pytest.raises(CompileError) as info:
        check(ast.Spec("c.mrs", (*base.statements, let, part)), Path("."))
    assert sorted(d.message for d in info.value.diagnostics) == [
        f"this expression nests more than {ast.MAX_NESTING} levels deep",
        f"this selector nests more than {ast.MAX_NESTING} levels deep"]


def test_nesting_at_the_limit_is_checked() -> None:
    p = program(BASE + "let a = " + "-" * 199 + "1\n")
    assert p.lets["a"] == -1
    p = program(BASE + "partition p = " + " | ".join(["bias"] * 200) + "\npartition q = rest\n")
    assert p.partitions[0].selector.describe().count("bias") == 200


@pytest.mark.parametrize(("text", "hint"), [
    ("modle mlp(hidden=[16])\ndata digits()\noptimizer sgd(lr=0.1)\n", "model"),
    ("model mlp()\ndta digits(batch=8)\noptimizer sgd(lr=0.1)\n", "data"),
    ("dta digits(batch=8)\nmodel mlp()\noptimizer sgd(lr=0.1)\n", "data"),
    ("model mlp()\ndata digits()\noptimiser sgd(lr=0.1)\n", "optimizer"),
    (BASE + "modl { split = 2 }\n", "modules"),
    (BASE + "sweeep random(trials=2) { }\n", "sweep"),
    (BASE + "partiton p = bias\n", "partition"),
    (BASE + "brian a { every = 1 }\n", "brain"),
    (BASE + "trian(epochs=1)\n", "train"),
])
def test_a_misspelt_statement_gets_the_statement_that_fits(text: str, hint: str) -> None:
    # and a misspelt required statement is not also reported as missing
    d = one_error(text)
    assert d.message.startswith("unknown statement") and d.hint == f"did you mean `{hint}`?"


def test_a_missing_statement_is_still_reported_when_nothing_is_its_misspelling() -> None:
    diags = errors("model mlp()\nxyzzy digits()\noptimizer sgd(lr=0.1)\n")
    assert [(d.message, at(d)) for d in diags] == [
        ("the spec has no `data` statement", (1, 1)), ("unknown statement `xyzzy`", (2, 1))]


@pytest.mark.parametrize(("text", "message", "where"), [
    ("optimizer sgd(lr=1e999)", "`lr` must be a finite number, not inf", (3, 18)),
    ("optimizer sgd(lr=0.1, momentum=-1e999)", "`momentum` must be a finite number, not -inf",
     (3, 32)),
    ("let x = 1e308 * 10\ntrain(grad_clip=x)", "`grad_clip` must be a finite number, not inf",
     (5, 17)),
    ("train(grad_clip=inf)", "`grad_clip` must be a finite number, not inf", (4, 17)),
    ("train(epochs=1e999)", "`epochs` must be an integer, not inf", (4, 14)),
    ("let x = inf - inf\ntrain(grad_clip=x)", "`grad_clip` must be a number, not nan", (5, 17)),
    ("partition p = bias { lr = 1e999 }", "`lr` must be a finite number, not inf", (4, 27)),
    ("brain a { every = 1 }\nbrain b { every = 2 }\nmerge weighted(weights=[1, 1e999])",
     "`weights` must be a finite number, not inf", (6, 24)),
])
def test_non_finite_numbers_are_errors(text: str, message: str, where: tuple[int, int]) -> None:
    d = one_error(BASE.replace("optimizer sgd(lr=0.1)\n", "") + text + "\n"
                  if text.startswith("optimizer") else BASE + text + "\n")
    assert d.message == message and at(d) == where


def test_non_finite_overrides_are_errors(full: Path) -> None:
    d = _override_error(full, ["optimizer.lr=1e999"])
    assert d.message == "`lr` must be a finite number, not inf"
    assert d.span is not None and d.span.file == "<--set optimizer.lr>"


def test_param_validation_refuses_non_finite_numbers() -> None:
    from mrc.registry import Param

    assert Param("x", "float").validate(math.inf)[1] == "`x` must be a finite number, not inf"
    assert Param("x", "float", hi=1).validate(-math.inf)[1] == "`x` must be a finite number, not -inf"
    assert Param("x", "floats").validate([1.0, math.inf])[1] == "`x` must be a finite number, not inf"
    assert Param("x", "int").validate(math.inf)[1] == "`x` must be an integer, not inf"
    assert Param("x", "float").validate(1e308) == (1e308, None)


def test_a_whole_statement_can_be_overridden(full: Path) -> None:
    p = check(parse(full.read_text(), str(full)), full.parent,
              parse_overrides(["optimizer=adam(lr=1e-3)", "model=mlp(hidden=[8, 4])"]))
    assert p.optimizer.name == "adam" and p.optimizer.kwargs["lr"] == 1e-3
    assert "momentum" not in p.optimizer.kwargs  # the statement's own arguments went with it
    assert p.model.name == "mlp" and p.model.kwargs["hidden"] == [8, 4]
    d = _override_error(full, ["optimizer=adamm(lr=1e-3)"])
    assert d.message == "unknown optimizer `adamm`" and d.hint == "did you mean `adam`?"
    assert d.span == Span("<--set optimizer>", 1, 11, 1, 16)
