"""Module-wise training end to end (issue 11): what a run writes, resume in the middle of any
stage of any regime, the diagnostics of broken `modules` blocks, and how modules compose with
partitions, per-module optimizers and brains (each shown by `mrc graph`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mrc.api import compile_spec, train
from mrc.cli import main
from mrc.diagnostics import CompileError
from mrc.ir.ops import Forward
from mrc.techniques.modules.tables import MODULES

SPEC = """
model resnet(depth=14, width=4)
data digits(shape=image, batch=64, val=0.2)
optimizer sgd(lr=0.05, momentum=0.9)
schedule cosine(warmup=3)
train(epochs={epochs}, seed=3, log_every=4)
{extra}
modules {{
  split = {split}
  aux = {aux}
  transport = {transport}
  regime = {regime}
  {inner}
}}
"""


def write(tmp_path: Path, *, split: str = "equal(3)", aux: str = "linear", transport: str = "fixed(tau=0.5)",
          regime: str = "parallel", epochs: int = 1, extra: str = "", inner: str = "", name: str = "m.mrs") -> Path:
    path = tmp_path / name
    path.write_text(SPEC.format(split=split, aux=aux, transport=transport, regime=regime, epochs=epochs,
                                extra=extra, inner=inner))
    return path


def test_a_run_writes_the_model_the_heads_each_modules_accuracy_and_its_memory(tmp_path: Path) -> None:
    path = write(tmp_path, aux="conv(width=8)")
    result = train(path, out=tmp_path / "run")
    s = result.summary
    assert list(s["modules"]) == ["m0", "m1", "m2"]
    assert all(0 <= m["val_acc"] <= 1 and m["params"] > 0 for m in s["modules"].values())
    assert s["modules"]["m2"]["val_acc"] == s["val_acc"]  # the last module's classifier is the model
    assert s["activation_memory"]["kind"] == "saved_tensors" and s["activation_memory"]["bytes"] > 0
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    aux = torch.load(tmp_path / "run" / "aux.pt", weights_only=True)
    assert not any(k.startswith("aux.") for k in final) and "head.weight" in final
    assert {k.split(".")[0] for k in aux} == {"0", "1"}  # the heads of m0 and m1
    rows = [r for r in result.metrics if "modules" in r]
    assert rows and set(rows[-1]["modules"]) == {"m0", "m1", "m2"}
    assert all({"loss", "transport", "tau"} <= set(v) for v in rows[-1]["modules"].values())


def test_module_wise_training_saves_activation_memory(tmp_path: Path) -> None:
    """Each module's activations are freed by its backward before the next module runs."""
    e2e = tmp_path / "e2e.mrs"
    e2e.write_text(SPEC.split("modules")[0].format(epochs=1, extra=""))
    whole = train(e2e, save=False, steps=2).summary["activation_memory"]["bytes"]
    parts = train(write(tmp_path, split="equal(4)", transport="none"), save=False, steps=2)
    assert parts.summary["activation_memory"]["bytes"] < 0.7 * whole


@pytest.mark.parametrize(("regime", "epochs", "stop"), [
    # 23 steps an epoch: stage m1 runs steps 46-91; lap 1 of m0 runs steps 69-91
    ("sequential(epochs=2)", 1, 60),
    ("laps(laps=2, epochs=2)", 1, 80),
    ("parallel", 2, 30),  # with multipliers (λ is checkpointed)
])
def test_resume_in_the_middle_of_a_stage_is_bit_identical(tmp_path: Path, regime: str, epochs: int,
                                                          stop: int) -> None:
    transport = "multipliers(lambda0=1, h=0.1, every=3)" if regime == "parallel" else "doubled(tau=0.5)"
    path = write(tmp_path, regime=regime, epochs=epochs, transport=transport)
    whole = train(path, out=tmp_path / "whole")
    train(path, out=tmp_path / "split", stop_at=stop)
    resumed = train(path, resume=tmp_path / "split")
    assert resumed.summary["steps"] == whole.summary["steps"] == resumed.summary["total_steps"]
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert whole.summary["modules"] == resumed.summary["modules"]


def test_sequential_stages_fix_the_runs_length(tmp_path: Path) -> None:
    compiled = compile_spec(write(tmp_path, regime="sequential(epochs=2)"))
    assert [(s.name, s.length, s.unit) for s in compiled.graph.stages] == [
        ("m0", 2, "epochs"), ("m1", 2, "epochs"), ("m2", 2, "epochs")]
    result = train(compiled, save=False)
    spe = compiled.bound.data.steps_per_epoch()
    assert result.summary["steps"] == 3 * 2 * spe


def bind_error(path: Path) -> tuple[str, tuple[int, int], str]:
    with pytest.raises(CompileError) as err:
        compile_spec(path)
    d = err.value.diagnostics[0]
    return d.message, (d.span.line, d.span.col), path.read_text().splitlines()[d.span.line - 1][
        d.span.col - 1:d.span.end_col - 1]


def test_a_cut_off_the_main_chain_is_reported_at_its_path(tmp_path: Path) -> None:
    msg, _, text = bind_error(write(tmp_path, split='at(["layer2", "layer2.0.branch"])'))
    assert "not on the main chain" in msg and text == '"layer2.0.branch"'
    msg, _, text = bind_error(write(tmp_path, split='at(["layer9"])'))
    assert "no module `layer9`" in msg and text == '"layer9"'


def test_more_modules_than_blocks_is_reported_at_the_split(tmp_path: Path) -> None:
    msg, _, text = bind_error(write(tmp_path, split="equal(9)"))
    assert "9" in msg and "block" in msg and text == "equal(9)"


def test_transport_needs_residual_blocks(tmp_path: Path) -> None:
    path = tmp_path / "mlp.mrs"
    path.write_text("model mlp(hidden=[16, 16])\ndata digits()\noptimizer sgd(lr=0.1)\n"
                    "modules { split = equal(2); transport = fixed(tau=0.1) }\n")
    msg, _, text = bind_error(path)
    assert "residual" in msg and text == "fixed(tau=0.1)"
    path.write_text("model mlp(hidden=[16, 16])\ndata digits()\noptimizer sgd(lr=0.1)\n"
                    "modules { split = equal(2); aux = conv(width=4) }\n")
    msg, _, text = bind_error(path)
    assert "m0" in msg and text == "conv(width=4)"
    path.write_text("model mlp(hidden=[16, 16])\ndata digits()\noptimizer sgd(lr=0.1)\n"
                    "modules { split = equal(2) }\n")
    assert compile_spec(path).graph.table(MODULES)  # VanGL needs no residual block


def test_check_reports_bad_settings_at_their_spans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, regime="laps(laps=3, epochs=4)", inner="module m7 { optimizer adam() }")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "4 epochs do not split into 3 laps" in err
    assert "no module `m7`: the modules are m0 … m2" in err
    assert "Traceback" not in err


def test_partitions_rates_and_optimizers_compose_with_modules(tmp_path: Path) -> None:
    path = write(tmp_path, extra='partition heads = module("aux") | module("head")\n'
                                 "partition body = rest { every = 2 }",
                 inner="module m1 { optimizer adam(lr=0.001) }")
    compiled = compile_spec(path)
    g = compiled.graph
    assert list(g.partitions) == ["heads@m0", "heads@m1", "heads@m2", "body@m0", "body@m1", "body@m2"]
    assert g.partitions["body@m1"].every == 2
    text = g.to_text()
    assert "adam(" in text and "@[module=m1]" in text
    # step 1: the body partitions do not move, the heads do; module m0's forward still feeds m1
    step1 = [op.text() for op in g.at(1)]
    assert any("grad {heads@m0}" in t for t in step1)
    assert not any("body@" in t for t in step1 if t.startswith("update"))
    result = train(compiled, save=False, steps=4)
    assert result.summary["status"] == "completed"


def test_brains_of_module_wise_networks(tmp_path: Path) -> None:
    path = write(tmp_path, split="equal(2)", extra="brain fast { every = 1 }\nbrain slow { every = 2 }\nmerge mean")
    compiled = compile_spec(path)
    scopes = {op.scope.text() for op in compiled.graph.ops()}
    assert {"brain=fast module=m0", "brain=slow module=m1"} <= scopes
    result = train(compiled, save=False, steps=4)
    assert set(result.summary["modules"]) == {"m0", "m1"} and set(result.summary["brains"]) == {"fast", "slow"}


def test_each_stage_runs_its_own_pattern(tmp_path: Path) -> None:
    """The trace of a sequential run: stage m0's steps run m0's ops, then m1's stage starts."""
    compiled = compile_spec(write(tmp_path, regime="sequential(epochs=1)", split="equal(2)"))
    spe = compiled.bound.data.steps_per_epoch()
    trace = tmp_path / "trace.txt"
    train(compiled, save=False, steps=spe + 2, trace=trace)
    lines = trace.read_text().splitlines()
    by_step: dict[int, list[str]] = {}
    for line in lines:
        step, op_id, _, _ = line.split(" ", 3)
        by_step.setdefault(int(step), []).append(op_id)
    for t, stage in ((0, 0), (spe - 1, 0), (spe, 1), (spe + 1, 1)):
        assert by_step[t] == [op.id for op in compiled.graph.stages[stage].patterns[0].ops()], t
    assert any(op.frozen for op in compiled.graph.stages[1].patterns[0].of_kind(Forward))


@pytest.mark.parametrize("transport", ["fixed(tau=0.5)", "none"])
def test_the_graphs_memory_estimate_is_what_a_step_measures(tmp_path: Path, transport: str) -> None:
    """`mrc graph`'s per-module activation bytes (what autograd saves, with the head, the
    transport's extra copy of each branch and the module's input) match the measured peak of a
    parallel step: the heaviest module is the step's peak."""
    compiled = compile_spec(write(tmp_path, split="balanced(3)", aux="conv(width=8)", transport=transport))
    estimate = max(info.bytes for info in compiled.graph.table(MODULES).values())
    measured = train(compiled, save=False, steps=2).summary["activation_memory"]["bytes"]
    assert abs(estimate - measured) <= 0.05 * measured, (estimate, measured)
