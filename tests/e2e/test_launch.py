"""Launching a run on several processes (issue 15, item 1): `mrc train --nproc N` and
`torchrun … -m mrc train` run the spec on N ranks, rank 0 writes the run directory, and any
rank's failure — an error, a kill — ends the whole run promptly with one line naming that rank.

Each launch costs a few seconds (N Python processes importing torch on two cores), so the specs
are tiny and the tests few."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mrc.cli import main
from mrc.launch import RankFailure, describe, explain, report

SPEC = """model {model}
data digits(batch=32, val=0.2, normalize=true, limit=256)
optimizer sgd(lr=0.05, momentum=0.9)
train(steps={steps}, seed=0, log_every=1)
"""

MODEL = '''
import os
import time

import torch


def net(in_shape, classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_shape[0], classes))


def fails_on_rank_1(in_shape, classes):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("boom on rank 1")
    return net(in_shape, classes)


def tells_its_pid(in_shape, classes):
    with open(f"pid{os.environ.get('RANK')}", "w") as f:
        f.write(str(os.getpid()))
    return net(in_shape, classes)


def hangs(in_shape, classes):
    tells_its_pid(in_shape, classes)
    time.sleep(120)
'''
BOOM = MODEL.splitlines().index('        raise RuntimeError("boom on rank 1")') + 1  # its line in model.py


def spec(tmp_path: Path, model: str = "mlp(hidden=[8])", steps: int = 4) -> Path:
    (tmp_path / "model.py").write_text(MODEL)
    path = tmp_path / "s.mrs"
    path.write_text(SPEC.format(model=model, steps=steps))
    return path


def start(cwd: Path, *args: str, torchrun: bool = False) -> subprocess.Popen[str]:
    """`mrc train ARGS` (or `torchrun --standalone … -m mrc train ARGS`) in its own session, so
    a test that times out can end every process it started."""
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "mrc"] if torchrun else [sys.executable, "-m", "mrc"]
    return subprocess.Popen([*head, "train", *args], cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, out, err


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mrc train: error:")]


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    while not (path.is_file() and path.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)


# ---- mrc train --nproc ----------------------------------------------------------------------

def test_nproc_2_trains_rank_0_writes_the_run_and_it_resumes_on_2(tmp_path: Path) -> None:
    status, out, err = finish(start(tmp_path, spec(tmp_path).name, "--nproc", "2", "--out", "run"))
    assert status == 0, err
    run = tmp_path / "run"
    assert {"final.pt", "metrics.jsonl", "summary.json", "checkpoint.pt"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    assert json.loads((run / "summary.json").read_text())["world"] == {"size": 2, "mode": "data", "backend": "gloo"}
    assert out.count("mrc: completed: 4 steps") == 1, out  # rank 0 alone prints the summary
    assert "torch.distributed" not in err and "OMP_NUM_THREADS" not in err, err  # the launcher is quiet
    more = ("--resume", "run", "--steps", "6", "--change-length")
    status, out, err = finish(start(tmp_path, spec(tmp_path).name, *more, "--nproc", "2"))
    assert status == 0, err
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    status, _, err = finish(start(tmp_path, spec(tmp_path).name, *more))  # one process: refused
    assert status == 2 and "resume it with the same number" in err, err
    status, _, err = finish(start(tmp_path, spec(tmp_path).name, *more, "--nproc", "3"))  # refused once,
    assert status == 2 and err.strip().splitlines() == [  # before any process starts
        "mrc train: cannot resume run: it was written by a run of 2 processes; resume it with --nproc 2"], err


def test_a_failing_rank_ends_the_run_with_its_one_line(tmp_path: Path) -> None:
    path = spec(tmp_path, '"model.py:fails_on_rank_1"')
    status, _, err = finish(start(tmp_path, path.name, "--nproc", "2", "--out", "run"))
    assert status == 1
    assert errors(err)[0] == f"mrc train: error: rank 1 failed: s.mrs:1:7: model.py:{BOOM}: " \
        "RuntimeError: boom on rank 1", err
    assert "Traceback" not in err and "rank 1: error" not in err, err  # the launcher says it, once


def test_a_killed_rank_ends_the_run_and_is_named(tmp_path: Path) -> None:
    """Both ranks block (in the model's factory); SIGKILL rank 1: the launcher terminates rank 0
    and names rank 1 and the signal."""
    proc = start(tmp_path, spec(tmp_path, '"model.py:hangs"').name, "--nproc", "2", "--out", "run")
    wait_for(tmp_path / "pid1", proc)
    wait_for(tmp_path / "pid0", proc)
    os.kill(int((tmp_path / "pid1").read_text()), signal.SIGKILL)
    status, _, err = finish(proc, timeout=60)  # not the factory's 120 s sleep
    assert status == 1
    assert errors(err) == ["mrc train: error: rank 1 was killed by signal SIGKILL"], err
    assert not Path(f"/proc/{(tmp_path / 'pid0').read_text()}").exists()  # rank 0 was ended too


def test_a_rank_killed_while_training_ends_the_run(tmp_path: Path) -> None:
    """Rank 0 is in the step's all-reduce when its peer dies: it fails at once (a lost peer,
    listed after the root cause) or is terminated by the agent."""
    path = spec(tmp_path, '"model.py:tells_its_pid"', steps=100000)
    proc = start(tmp_path, path.name, "--nproc", "2", "--out", "run", "--no-tensorboard")
    wait_for(tmp_path / "run" / "metrics.jsonl", proc)  # rank 0 has trained a step
    os.kill(int((tmp_path / "pid1").read_text()), signal.SIGKILL)
    status, _, err = finish(proc, timeout=60)
    assert status == 1
    lines = errors(err)
    assert lines[0] == "mrc train: error: rank 1 was killed by signal SIGKILL", err
    assert all("rank 0 failed: lost contact with the other ranks" in line for line in lines[1:]), err


def test_a_bad_spec_or_flag_fails_once_before_any_process_starts(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.mrs"
    bad.write_text("model mlp(hidden=[8])\ndata digits()\noptimizer sgd(lr=0.05, momentun=0.9)\n")
    assert main(["train", str(bad), "--nproc", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "momentun" in err and "rank" not in err, err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(bad), "--nproc", "0"])
    assert exit_.value.code == 2
    assert "--nproc: must be at least 1" in capsys.readouterr().err


def test_nproc_under_torchrun_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", str(spec(tmp_path)), "--nproc", "2"]) == 2
    assert "under torchrun leave it out" in capsys.readouterr().err


# ---- torchrun -m mrc --------------------------------------------------------------------------

def test_torchrun_runs_mrc_as_a_module(tmp_path: Path) -> None:
    status, out, err = finish(start(tmp_path, spec(tmp_path).name, "--out", "run", torchrun=True))
    assert status == 0, err
    assert (tmp_path / "run" / "summary.json").is_file()
    assert out.count("mrc: completed: 4 steps") == 1, out


def test_under_torchrun_a_failing_rank_names_itself(tmp_path: Path) -> None:
    """Each rank's error line carries its rank, and torchrun's own failure summary shows that
    line (from the error file) instead of a pointer to its documentation."""
    path = spec(tmp_path, '"model.py:fails_on_rank_1"')
    status, _, err = finish(start(tmp_path, path.name, "--out", "run", torchrun=True))
    assert status != 0
    line = f"s.mrs:1:7: model.py:{BOOM}: RuntimeError: boom on rank 1"
    assert f"mrc train: rank 1: error: {line}" in err.splitlines(), err
    assert f"traceback : {line}" in err, err


# ---- the launcher's report (no processes) ---------------------------------------------------------

def own(message: str, at: float, lost_peer: bool = False) -> dict[str, object]:
    return {"message": {"message": message, "extraInfo": {"timestamp": str(int(at))}},
            "mrc": {"message": message, "time": at, "lost_peer": lost_peer}}


def test_report_puts_the_root_cause_first_and_leaves_out_the_terminated() -> None:
    failures = [describe(0, 1, own("lost contact with the other ranks (…)", 10.0, lost_peer=True), 12),
                describe(2, -signal.SIGTERM, None, 12),  # the agent's own cleanup
                describe(1, -signal.SIGKILL, None, 12),
                describe(3, 1, own("boom", 11.5), 12)]
    assert report(failures) == ["rank 3 failed: boom", "rank 1 was killed by signal SIGKILL",
                                "rank 0 failed: lost contact with the other ranks (…)"]
    assert report([describe(1, -signal.SIGTERM, None, 5)]) == ["rank 1 was killed by signal SIGTERM"]


def test_report_joins_ranks_that_failed_alike() -> None:
    failures = [describe(1, 2, own("s.mrs:1:1: bad", 3.0), 4), describe(0, 2, own("s.mrs:1:1: bad", 2.0), 4),
                describe(2, 7, {"message": "<NONE>"}, 5)]
    assert report(failures) == ["ranks 0, 1 failed: s.mrs:1:1: bad", "rank 2 exited with status 7"]
    assert describe(0, 130, None, 1) == RankFailure(0, "was interrupted", 1, interrupted=True)


def test_a_lost_peer_is_told_from_a_rank_s_own_error() -> None:
    closed = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by "
                          "peer [127.0.0.1]:39338. This is typically caused by a remote worker crashing. GLHF!")
    assert explain(closed) == ("lost contact with the other ranks (Connection closed by peer "
                               "[127.0.0.1]:39338)", True)
    waited = RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 2000ms for recv "
                          "operation to complete")
    assert explain(waited) == ("gave up waiting for the other ranks (Timed out waiting 2000ms for recv "
                               "operation to complete)", True)
    assert explain(RuntimeError("loss is nan\nmore")) == ("loss is nan", False)
    assert explain(ValueError()) == ("ValueError", False)


def test_a_placement_that_cannot_be_made_is_one_message_before_any_rank_starts(tmp_path: Path) -> None:
    """4 modules cannot fill 5 ranks: `--nproc 5` says so once, from the launcher, and starts nothing."""
    spec = Path(__file__).resolve().parents[2] / "specs" / "distributed_pipeline.mrs"
    done = subprocess.run([sys.executable, "-m", "mrc.cli", "train", str(spec), "--nproc", "5", "--steps", "2",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("4 modules cannot fill 5 ranks") == 1, done.stderr
    assert "failed" not in done.stderr and "rank 0" not in done.stderr, done.stderr  # no rank ran
    assert not (tmp_path / "run").exists()  # and no run directory was left
