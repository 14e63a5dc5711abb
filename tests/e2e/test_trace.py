"""The run executes the compiled graph, op by op: for every spec, one period of training with a
trace (`mrc.api.train(..., trace=FILE)`: one line `step op_id kind scope` per executed op) lists,
for each step t, exactly the ops of `graph.at(t)` in their canonical order — those of an
alternative path (an op with a condition, `when`: MGRIT's convergence control) where the run took it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from spec_runs import SPECS, data_missing, pretraining

from mrc.api import compile_spec, train
from mrc.cli import main
from mrc.ir.graph import ScheduleGraph

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["train.device=cpu", "data.limit=256"]


def expected(graph: ScheduleGraph, steps: int) -> list[str]:
    return [f"{t} {op.id} {op.kind} {op.scope.text() or '-'}" for t in range(steps) for op in graph.at(t)]


def runnable(spec: Path, tmp_path: Path) -> Path:
    """The spec itself, or — for a fine-tuning spec that loads `../runs/NAME/latest/final.pt` — a copy
    next to a short run of `specs/NAME.mrs` made for it. A spec whose data are not on this
    machine is skipped, saying why."""
    missing = data_missing(spec)
    if missing:
        pytest.skip(missing)
    pre = pretraining(spec)
    if pre is None:
        return spec
    (tmp_path / "specs").mkdir()
    copy = Path(shutil.copy(spec, tmp_path / "specs" / spec.name))
    out = tmp_path / "runs" / pre.stem / "latest"
    train(pre, steps=2, device="cpu", out=out, overrides=["data.limit=256"])
    assert (out / "final.pt").is_file()
    return copy


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_one_period_runs_exactly_the_graphs_ops(spec: Path, tmp_path: Path) -> None:
    spec = runnable(spec, tmp_path)
    compiled = compile_spec(spec, SMALL, training=True)
    graph = compiled.graph
    period = graph.period
    trace = tmp_path / "trace.txt"
    result = train(compiled, steps=period, device="cpu", out=tmp_path / "run", trace=trace)
    assert result.summary["status"] == "completed" and result.summary["steps"] == period
    lines = trace.read_text().splitlines()
    taken = set(lines)
    optional = {f"{t} {op.id}" for t in range(period) for op in graph.at(t) if getattr(op, "when", "")}
    assert lines == [line for line in expected(graph, period)
                     if line in taken or " ".join(line.split(" ")[:2]) not in optional]
    # every step of the period ran its pattern, and every pattern ran
    steps = [int(line.split(" ", 1)[0]) for line in lines]
    assert sorted(set(steps)) == [t for t in range(period) if graph.at(t)]
    ran = {(t, line.split(" ")[1]) for t, line in zip(steps, lines, strict=True)}
    for p in graph.stage.patterns:
        assert all((t, op.id) in ran for t in p.steps for op in p.ops() if not getattr(op, "when", ""))


def test_trace_of_a_multirate_spec_names_its_patterns(tmp_path: Path) -> None:
    compiled = compile_spec(ROOT / "specs" / "multirate_layers.mrs", SMALL, training=True)
    trace = tmp_path / "trace.txt"
    train(compiled, steps=5, device="cpu", out=tmp_path / "run", trace=trace)
    lines = trace.read_text().splitlines()
    assert lines == expected(compiled.graph, 5)  # a period and one step more: step 4 is step 0's pattern
    by_step: dict[int, list[str]] = {}
    for line in lines:
        t, op_id, *_ = line.split(" ")
        by_step.setdefault(int(t), []).append(op_id)
    assert by_step[4] == by_step[0] != by_step[1]
    assert "forward[0:1]" in by_step[2] and "forward[0:2]" in by_step[1]


def test_trace_shows_brain_scopes(tmp_path: Path) -> None:
    compiled = compile_spec(ROOT / "specs" / "brains_two.mrs", SMALL, training=True)
    trace = tmp_path / "trace.txt"
    train(compiled, steps=compiled.graph.period, device="cpu", out=tmp_path / "run", trace=trace)
    lines = trace.read_text().splitlines()
    assert "0 batch@fast batch brain=fast" in lines
    assert "0 forward@fast+slow forward brains=fast,slow" in lines
    assert lines[-1] == "3 merge.fast+slow merge -"


def _train_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    return capsys.readouterr().out


def test_cli_train_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if "--trace" not in _train_help(capsys):
        pytest.skip("`mrc train` has no --trace option (mrc/cli.py); the trace is only reachable "
                    "through mrc.api.train(trace=...)")
    spec = ROOT / "specs" / "multirate_layers.mrs"
    trace = tmp_path / "trace.txt"
    status = main(["train", str(spec), "--steps", "4", "--device", "cpu", "--out", str(tmp_path / "run"),
                   "--set", "data.limit=256", "--trace", str(trace)])
    assert status == 0, capsys.readouterr().err
    graph = compile_spec(spec, SMALL).graph
    assert trace.read_text().splitlines() == expected(graph, 4)
