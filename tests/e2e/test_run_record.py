"""A run is a record: no silent overwrites, the effective spec and the run's facts saved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mrc.api import compile_spec, train
from mrc.runtime.checkpoint import CheckpointError
from mrc.runtime.rundir import RunExists

ROOT = Path(__file__).resolve().parents[2]

SPEC = """let width = 16
model mlp(hidden=[width])
data digits(batch=32, val=0.2)
optimizer sgd(lr=0.05, momentum=0.9)
train(epochs=1, seed=0, log_every=5, checkpoint_every=5)
"""


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "small.mrs"
    path.write_text(SPEC)
    return path


def lines(run: Path) -> int:
    return len((run / "metrics.jsonl").read_text().splitlines())


def test_runs_of_one_spec_never_replace_each_other(spec: Path, tmp_path: Path) -> None:
    first = train(spec, steps=10).out_dir
    second = train(spec, steps=3).out_dir
    assert first != second and first.parent == second.parent == Path("runs") / "small"
    assert lines(first) > lines(second) >= 1  # the first run's log is whole
    assert (tmp_path / "runs" / "small" / "latest").resolve() == (tmp_path / second).resolve()


def test_an_out_dir_with_a_run_is_refused_unless_overwritten(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(spec, out=out, steps=10)
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(RunExists, match=r"holds a run already: `--resume .*` continues it, `--overwrite` replaces it"):
        train(spec, out=out, steps=3)
    assert (out / "metrics.jsonl").read_text() == before  # untouched
    done = subprocess.run([sys.executable, "-m", "mrc.cli", "train", str(spec), "--out", str(out), "--steps", "3"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"mrc train: {out} holds a run already: `--resume {out}` continues it, `--overwrite` replaces it, or give "
        "another --out (without --out each run gets a new folder)"]
    (out / "notes.txt").write_text("mine")
    train(spec, out=out, steps=3, overwrite=True)
    assert lines(out) < before.count("\n") and json.loads((out / "summary.json").read_text())["steps"] == 3
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_config_mrs_is_the_spec_the_run_ran(spec: Path, tmp_path: Path) -> None:
    overrides = ["width=24", "optimizer.lr=0.2", "train.seed=3", "data.val=0.25"]
    run = train(spec, out=tmp_path / "run", steps=2, overrides=overrides).out_dir
    config = run / "config.mrs"
    text = config.read_text()
    assert "--set width=24 optimizer.lr=0.2 train.seed=3 data.val=0.25" in text.splitlines()[1]
    assert "let width = 24" in text and "sgd(lr=0.2" in text and "seed=3" in text and "val=0.25" in text
    # as a spec of its own, it compiles to the graph the run compiled
    assert compile_spec(config).graph.to_text() == compile_spec(spec, overrides).graph.to_text()
    assert compile_spec(config).program.lets == compile_spec(spec, overrides).program.lets


def test_run_json_records_the_run_and_its_resumes(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(spec, out=out, stop_at=5, overrides=["optimizer.lr=0.1"])
    record = json.loads((out / "run.json").read_text())
    assert record["overrides"] == ["optimizer.lr=0.1"] and record["spec"] == str(spec.resolve())
    assert set(record["versions"]) == {"mrc", "torch", "python", "cuda"} and record["world"] == 1
    assert record["started"] and record["host"] and record["command"]
    train(spec, resume=out)
    again = json.loads((out / "run.json").read_text())
    assert again["started"] == record["started"] and len(again["resumes"]) == 1
    assert again["resumes"][0]["overrides"] == ["optimizer.lr=0.1"]


def test_wall_time_continues_across_a_resume(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    paused = train(spec, out=out, stop_at=20, overrides=["train.log_every=5"])
    at_checkpoint = max(r["time"] for r in paused.metrics if r["step"] <= 20)
    done = train(spec, resume=out)
    times = [r["time"] for r in done.metrics if "loss" in r]
    assert times == sorted(times) and times[-1] > at_checkpoint  # one clock, on from the pause
    first_after = min(r["time"] for r in done.metrics if "loss" in r and r["step"] > 20)
    assert first_after >= at_checkpoint
    s = done.summary
    assert s["wall_time_s"] >= at_checkpoint and s["steps"] == s["total_steps"]
    assert abs(s["steps_per_s"] - s["steps"] / s["wall_time_s"]) < 1e-9  # over the whole run


def test_resuming_a_finished_run_says_so_and_changes_nothing(spec: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    first = train(spec, out=out, steps=6)
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    again = train(spec, resume=out)
    assert "is finished (6 of 6 steps): nothing to resume, nothing changed" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files
    assert again.summary == json.loads(files["summary.json"]) and again.summary["steps_per_s"] > 0
    assert again.summary.get("activation_memory") == first.summary.get("activation_memory")
    for key, value in first.model.state_dict().items():
        assert again.model.state_dict()[key].equal(value)


def test_a_refused_resume_names_what_differs(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(spec, out=out, stop_at=5, overrides=["optimizer.lr=0.1"])
    with pytest.raises(CheckpointError, match=r"`optimizer\.lr` is 0\.1 in the run, 0\.2 now"):
        train(spec, resume=out, overrides=["optimizer.lr=0.2"])
    spec.write_text(SPEC.replace("momentum=0.9", "momentum=0.5"))  # the spec edited under the run
    with pytest.raises(CheckpointError, match=r"the schedule changed \(.*0\.5.*\): was the spec edited\?"):
        train(spec, resume=out)


def test_a_run_that_diverges_before_its_first_checkpoint_keeps_its_rows_and_claims_none(
        spec: Path, tmp_path: Path) -> None:
    from mrc.runtime.trainer import TrainingStopped

    out = tmp_path / "run"
    with pytest.raises(TrainingStopped) as stopped:
        train(spec, out=out, overrides=["optimizer.lr=1e30", "train.log_every=1", "train.checkpoint_every=1000"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[0]["step"] == 1  # every row logged before the divergence
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["last_checkpoint_step"] is None
    assert not (out / "checkpoint.pt").exists() and "checkpoint" not in str(stopped.value.args[0])
