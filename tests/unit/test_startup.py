"""Start-up: checking a spec reads the registries' tables only, so `mrc check` of a spec with
errors imports no torch; checking a valid one imports torch but none of the heavy packages a
run may need later (sympy, torch._dynamo, triton, …); the parser is loaded from tables made
for its grammar; shapes are recorded as torch.fx's ShapeProp records them; the digits load
without importing sklearn.datasets and equal its own; a run records its start-up."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import fx, nn

ROOT = Path(__file__).resolve().parents[2]

BAD = {
    "parse": "model mlp(hidden=[32]\n",
    "range": "model mlp\ndata digits\noptimizer sgd(lr = -1)\ntrain(epochs=1)\n",
    "unknown model": "model resnett\ndata digits\noptimizer sgd(lr = 0.1)\ntrain(epochs=1)\n",
    "bad augment": "model mlp\ndata fashion_mnist(augment = flip)\noptimizer adam\ntrain(epochs=1)\n",
    "bad loss": "model mlp\ndata digits\nloss mse(beta=1)\noptimizer adam\ntrain(epochs=1)\n",
    "bad schedule": "model mlp\ndata digits\noptimizer adam\nschedule cosine(warmup=-1)\ntrain(epochs=1)\n",
}

PROBE = """
import json, sys
from mrc.cli import main
status = main(["check", *sys.argv[2:]])
print(json.dumps({"status": status, "loaded": sorted(m for m in sys.argv[1].split(",") if m in sys.modules)}))
"""

HEAVY = ("sympy", "torch._dynamo", "triton", "matplotlib", "optuna", "tensorboard", "sklearn.datasets")
"""What checking a valid spec never needs: a run's optimizers import torch._dynamo (which imports
sympy and triton), its TensorBoard writer tensorboard, plots matplotlib, sweeps optuna."""


def probe(*specs: Path, watch: tuple[str, ...] = ("torch", "sklearn.datasets")) -> dict:
    """`mrc check SPECS` in a fresh process: its exit status, stderr and which of `watch` it imported."""
    done = subprocess.run([sys.executable, "-c", PROBE, ",".join(watch), *map(str, specs)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"stderr": done.stderr}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_spec_with_errors_is_reported_without_importing_torch(case: str, tmp_path: Path) -> None:
    spec = tmp_path / "bad.mrs"
    spec.write_text(BAD[case])
    got = probe(spec)
    assert got["status"] != 0 and "error" in got["stderr"], got  # the error is found…
    assert got["loaded"] == [], f"{case}: {got['loaded']} imported to report {got['stderr']!r}"  # …without torch


def test_every_spec_is_checked_without_importing_torch() -> None:
    """The checker alone (no binding) over every spec in specs/, in one process."""
    code = ("import sys; from pathlib import Path; from mrc.api import check_spec\n"
            "specs = sorted(Path('specs').rglob('*.mrs'))\n"
            "for s in specs: check_spec(s)\n"
            "print(len(specs), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    count, loaded = done.stdout.split()
    assert done.returncode == 0, done.stderr
    assert int(count) > 30 and loaded == "False"


def test_checking_a_valid_spec_imports_none_of_a_runs_heavy_packages() -> None:
    """Binding traces the model: torch.fx's ShapeProp imported sympy there (≈ 0.4 s)."""
    got = probe(ROOT / "specs" / "quickstart.mrs", watch=("torch", *HEAVY))
    assert got["status"] == 0, got["stderr"]
    assert got["loaded"] == ["torch"], f"`mrc check` of a valid spec imported {got['loaded']}"


def test_the_parser_tables_were_made_for_this_grammar() -> None:
    """grammar/mrs_tables.py is stale (the grammar, mrc.parser.OPTIONS or Lark changed since it
    was written): run `python -m mrc.grammar.regenerate`."""
    from mrc.grammar import mrs_tables

    from mrc.parser import grammar_text, tables_key

    assert mrs_tables.KEY == tables_key(grammar_text()), "run `python -m mrc.grammar.regenerate`"


def test_the_parser_is_loaded_from_its_tables_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from mrc import parser

    def build(grammar: str) -> None:
        raise AssertionError("the parser was built from the grammar although its tables are current")

    monkeypatch.setattr(parser, "build_parser", build)
    assert parser._lark.__wrapped__().parse("model mlp\n", start="start").children


def test_stale_tables_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables made for another grammar would parse another language: the grammar is built instead."""
    from mrc.grammar import mrs_tables

    from mrc import parser

    built = []
    monkeypatch.setattr(mrs_tables, "KEY", "made for another grammar")
    monkeypatch.setattr(parser, "build_parser", lambda grammar: built.append(grammar) or "built")
    assert parser._lark.__wrapped__() == "built" and built == [parser.grammar_text()]


BROKEN = ["model mlp(hidden=[32]\n", "model x = 'a'\n", "train(epochs=1) =\n", "@\n", "data d(a=1,,)\n",
          "let h = (1 + \n", 'model "unterminated\n', "partition p = module(\"a\") | \n", "x { a.b = }\n"]


def _outcome(lark: object, text: str, start: str) -> object:
    """What parsing `text` gives: the AST with every span (so positions count), or the error's
    kind, place and the terminals that could have come next."""
    from lark.exceptions import UnexpectedInput

    from mrc.parser import _Builder

    try:
        return _Builder("<t>").transform(lark.parse(text, start=start))  # type: ignore[attr-defined]
    except UnexpectedInput as err:
        return (type(err).__name__, err.line, err.column, sorted(getattr(err, "expected", None) or ()),
                sorted(getattr(err, "accepts", None) or ()))


def test_the_tables_parse_exactly_as_the_grammar_built_parser() -> None:
    """Every spec, some overrides and broken texts: the same trees, spans and errors."""
    from mrc.parser import _lark, build_parser, grammar_text

    loaded, built = _lark(), build_parser(grammar_text())
    texts = [(p.read_text(encoding="utf-8"), "start") for p in sorted((ROOT / "specs").rglob("*.mrs"))]
    texts += [(t, "start") for t in BROKEN]
    texts += [(t, "override") for t in ("0.1", "2 * h ** -1", "[64, 32]", '"a"', "adam(lr=1e-3)", "1 2", "")]
    assert len(texts) > 40
    for text, start in texts:
        assert _outcome(loaded, text, start) == _outcome(built, text, start), text


def test_regenerate_writes_tables_that_load_and_parse() -> None:
    from lark import Lark
    from mrc.grammar.regenerate import source

    from mrc.parser import grammar_text, tables_key

    module = ast.parse(source(grammar_text()))
    values = {node.targets[0].id: ast.literal_eval(node.value) for node in module.body
              if isinstance(node, ast.Assign)}  # data only: nothing in it runs
    assert values["KEY"] == tables_key(grammar_text())
    assert Lark.load(values["TABLES"]).parse("train(epochs=1)\n", start="start").children


class _TwoWays(nn.Module):
    """A model whose traced graph differs from its eager forward: traced in training mode, the
    graph keeps the training branch, which fails on the example batch; in eval mode (where the
    example batch runs) the model itself takes the other branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x @ torch.ones(3, 1)
        return x.sum(1, keepdim=True)


def test_a_node_failing_on_the_example_batch_is_told_in_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    from mrc.models import ForwardError, trace_model

    with pytest.raises(ForwardError) as err:
        trace_model(_TwoWays(), torch.zeros(2, 4))
    assert err.value.message.startswith("the traced model failed on an example batch of shape (2, 4) at `matmul`")
    assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied" in err.value.message
    assert "\n" not in err.value.message and "fx trace does not" in err.value.hint
    assert capfd.readouterr().err == ""  # no traceback printed on the way


class _Net(nn.Module):
    """Tensors in every memory format ShapeProp tells, nested in tuples."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        y = self.conv(x)
        return self.head(y.flatten(1)), (y.transpose(1, 2), y.to(memory_format=torch.channels_last))


def test_shapes_are_recorded_as_torch_fx_shapeprop_records_them() -> None:
    from torch.fx.passes.shape_prop import ShapeProp

    from mrc.models import trace_model

    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    ours = trace_model(_Net(), x)
    theirs = fx.symbolic_trace(_Net())
    with torch.no_grad():
        ShapeProp(theirs).propagate(x)
    metas = [n.meta.get("tensor_meta") for n in ours.graph.nodes]
    assert metas == [n.meta.get("tensor_meta") for n in theirs.graph.nodes]
    assert {m.memory_format for m in metas if hasattr(m, "memory_format")} >= {torch.channels_last, None}


def test_process_age_counts_from_the_start_of_the_process() -> None:
    code = "import time; time.sleep(0.3); from mrc.uptime import process_age; print(process_age())"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    wall = time.perf_counter() - start
    age = float(done.stdout)
    assert 0.3 <= age <= wall + 0.02  # the OS counts the start in 10 ms ticks


def test_a_run_records_when_its_first_step_started(tmp_path: Path) -> None:
    from mrc.api import train
    from mrc.uptime import process_age

    before = process_age()
    train(ROOT / "specs" / "quickstart.mrs", out=tmp_path / "run", steps=2, device="cpu")
    after = process_age()
    first = json.loads((tmp_path / "run" / "summary.json").read_text())["first_step_s"]
    assert before is not None and after is not None
    assert before < first < after  # this process's age, taken while it trained


def test_a_lazy_builder_resolves_and_shows_its_signature() -> None:
    import inspect

    from mrc.lazy import Lazy
    from mrc.models import MODELS

    build = MODELS.get("mlp").build
    assert isinstance(build, Lazy)
    assert list(inspect.signature(build).parameters)[:2] == ["in_shape", "classes"]
    model = build((8,), 3, hidden=[4])
    assert model.head.out_features == 3
    with pytest.raises(ValueError, match=r"package\.module:function"):
        Lazy("no_colon")


def test_digits_are_sklearns_digits() -> None:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from mrc.data.builtin import digits

    ours, theirs = digits(0, shape="image"), sklearn_datasets.load_digits()
    assert ours["x"].dtype == np.float32 and ours["y"].dtype == np.int64
    assert np.array_equal(ours["x"].reshape(len(ours["x"]), -1), np.asarray(theirs.data, np.float32) / 16.0)
    assert np.array_equal(ours["y"], theirs.target)
