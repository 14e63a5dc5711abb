"""`mrc sweep` end to end, on tiny runs (`mlp(hidden=[16])` on digits, one or two epochs):
a random search with two workers, a grid with two workers, resume after kill -9, two independent
processes on one journal file, pruning, a diverging trial, and bad input in one line."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mrc.api import check_spec
from mrc.cli import main

ROOT = Path(__file__).resolve().parents[2]

BASE = """model mlp(hidden=[16])
data digits(batch=64, val=0.2)
optimizer sgd(lr=0.05, momentum=0.9)
train(epochs={epochs}, seed=0, eval_every={every})
"""


def write(tmp_path: Path, sweep: str, epochs: int = 1, every: int = 0, name: str = "s.mrs") -> Path:
    spec = tmp_path / name
    spec.write_text(BASE.format(epochs=epochs, every=every) + sweep)
    return spec


def sweep_cmd(spec: Path, *args: str, plots: bool = False) -> list[str]:
    return [sys.executable, "-m", "mrc.cli", "sweep", str(spec), "--no-progress", *args,
            *([] if plots else ["--no-plots"])]


def cli(spec: Path, *args: str, plots: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sweep_cmd(spec, *args, plots=plots), capture_output=True, text=True, timeout=240, cwd=ROOT)


def load(journal: Path, name: str = "s") -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=name,
                             storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))))


def test_a_random_sweep_with_two_jobs_gives_distinct_trials_and_every_result(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweep random(trials=4, seed=0) {\n  optimizer.lr = loguniform(1e-3, 0.3)\n"
                           "  optimizer.momentum = uniform(0.5, 0.9)\n}\n")
    out = tmp_path / "sw"
    done = cli(spec, "--jobs", "2", "--out", str(out), plots=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    study = load(out / "study.log")
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    points = {tuple(sorted(t.params.items())) for t in trials}
    assert len(points) == 4  # no duplicate draws across the two workers
    assert {t.user_attrs["worker"] for t in trials} <= {0, 1}
    for t in trials:
        run = out / f"trial-{t.number:04d}"
        assert t.user_attrs["run_dir"] == str(run.resolve())
        assert {"final.pt", "metrics.jsonl", "summary.json"} <= {p.name for p in run.iterdir()}
        assert json.loads((run / "summary.json").read_text())["val_acc"] == pytest.approx(t.value)
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 5 and "params_optimizer.lr" in rows[0]
    assert {"history.png", "slice.png", "parallel_coordinate.png"} <= {p.name for p in (out / "plots").iterdir()}
    best = study.best_trial
    assert f"best: trial {best.number}" in done.stderr
    program = check_spec(out / "best.mrs")  # runnable as it is, with the best values written in
    assert program.sweep is None
    assert program.optimizer.kwargs["lr"] == best.params["optimizer.lr"]
    assert program.optimizer.kwargs["momentum"] == best.params["optimizer.momentum"]
    assert main(["train", str(out / "best.mrs"), "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["val_acc"] == pytest.approx(best.value, abs=0.006)  # same seed, CPU: the best trial again


def test_a_two_by_two_grid_runs_each_point_once_even_with_two_jobs(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweep grid() {\n  optimizer.lr = [0.01, 0.1]\n  data.batch = [32, 64]\n}\n")
    out = tmp_path / "sw"
    done = cli(spec, "--jobs", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    trials = load(out / "study.log").get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    got = sorted((t.params["optimizer.lr"], t.params["data.batch"]) for t in trials)
    assert got == sorted(itertools.product(["0.01", "0.1"], ["32", "64"]))
    # the same command again: the grid is done, nothing runs twice
    again = cli(spec, "--jobs", "2", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert len(load(out / "study.log").get_trials()) == 4


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_kill_9_in_a_trial_then_the_same_command_continues_the_study(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweep random(trials=3, seed=1) {\n  optimizer.lr = loguniform(1e-3, 0.3)\n}\n",
                 epochs=6, every=20)
    out = tmp_path / "sw"
    proc = subprocess.Popen(sweep_cmd(spec, "--out", str(out)), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:  # once trial 0 has finished and trial 1 has started, kill -9 the worker and the command
        deadline = time.time() + 120
        while not ((out / "trial-0000" / "summary.json").exists() and (out / "trial-0001" / "log.txt").exists()):
            assert time.time() < deadline and proc.poll() is None, "the sweep did not get to trial 1"
            time.sleep(0.02)
        for pid in _children(proc.pid):
            os.kill(pid, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    study = load(out / "study.log")
    before = {t.number: t for t in study.get_trials()}
    assert before[0].state == TrialState.COMPLETE
    assert before[1].state == TrialState.RUNNING, "the kill came after trial 1 had finished"
    done = cli(spec, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "trial 1 was interrupted" in done.stderr
    trials = load(out / "study.log").get_trials()
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == before[0].value  # kept, not re-run
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["interrupted"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == before[1].params and retry[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3 and len(trials) == 4


def test_two_independent_sweeps_on_one_journal_make_one_study_without_duplicates(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweep random(trials=4, seed=0) {\n  optimizer.lr = loguniform(1e-3, 0.3)\n}\n",
                 epochs=2)
    journal = tmp_path / "shared.log"
    procs = [subprocess.Popen(sweep_cmd(spec, "--storage", str(journal), "--out", str(tmp_path / d)),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for d in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    trials = load(journal).get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.params["optimizer.lr"] for t in trials}) == 4
    dirs = [Path(t.user_attrs["run_dir"]) for t in trials]
    assert all(d.parent in (tmp_path / "a", tmp_path / "b") and (d / "final.pt").exists() for d in dirs)
    assert (tmp_path / "a" / "best.mrs").exists() and (tmp_path / "b" / "best.mrs").exists()


def test_pruning_stops_bad_trials_early_and_a_diverging_trial_fails_with_its_reason(tmp_path: Path) -> None:
    # the grid's shuffle (seed 0) puts the good rate first; the tiny rates then fall below its
    # median at their first evaluation, and lr = 1e30 diverges at once: FAIL, and the sweep goes on
    spec = write(tmp_path, "sweep grid(pruning=median(warmup=0, startup=1)) {\n"
                           "  optimizer.lr = [0.2, 0.0001, 0.0002, 1e30]\n}\n", epochs=2, every=10)
    out = tmp_path / "sw"
    done = cli(spec, "--out", str(out), plots=True)
    assert done.returncode == 0, done.stderr
    trials = {t.params["optimizer.lr"]: t for t in load(out / "study.log").get_trials()}
    assert set(trials) == {"0.2", "0.0001", "0.0002", "1e30"}
    assert trials["0.2"].state == TrialState.COMPLETE and trials["0.2"].intermediate_values
    pruned = [t for t in trials.values() if t.state == TrialState.PRUNED]
    assert pruned, [(t.params, t.state, t.intermediate_values) for t in trials.values()]
    for t in pruned:
        assert t.intermediate_values and t.params["optimizer.lr"] in ("0.0001", "0.0002")
        summary = json.loads((out / f"trial-{t.number:04d}" / "summary.json").read_text())
        assert summary["status"] == "stopped" and summary["steps"] < summary["total_steps"]
    bad = trials["1e30"]
    assert bad.state == TrialState.FAIL and "the loss became nan" in bad.user_attrs["reason"]
    assert not bad.user_attrs.get("interrupted")
    assert "failed" in done.stdout and "Traceback" not in done.stdout + done.stderr
    assert (out / "plots" / "intermediate.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--storage", "postgresql://nobody@127.0.0.1:1/x"], "cannot open storage postgresql://"),
    (["--storage", "sqlite:////nonexistent/dir/x.db"], "cannot open storage sqlite:"),
    (["--storage", "/nonexistent/dir/study.log"], "cannot use journal file"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          args: list[str], message: str) -> None:
    spec = write(tmp_path, "sweep random(trials=2) {\n  optimizer.lr = loguniform(1e-3, 0.3)\n}\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "sw"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("mrc sweep: "), err
    assert not (tmp_path / "sw").exists()  # no empty output directory left behind


def test_a_spec_without_a_sweep_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    spec = ROOT / "specs" / "quickstart.mrs"
    assert main(["sweep", str(spec)]) == 2
    assert capsys.readouterr().err.strip() == f"mrc sweep: {spec} has no `sweep` statement"
