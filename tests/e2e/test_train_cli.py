"""`mrc train` end to end: every spec trains, outputs are written, failures are one clear line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from spec_runs import SPECS, data_missing, pretraining

from mrc.api import train
from mrc.cli import main
from mrc.runtime.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mrc.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_every_spec_trains_a_few_steps(spec: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    missing = data_missing(spec)
    if missing:
        pytest.skip(missing)
    pre = pretraining(spec)
    if pre is not None:  # a fine-tuning spec: make its pretraining run first
        import shutil

        (tmp_path / "specs").mkdir()
        spec = Path(shutil.copy(spec, tmp_path / "specs" / spec.name))
        assert main(["train", str(pre), "--steps", "3", "--out", str(tmp_path / "runs" / pre.stem / "latest"),
                     "--set", "data.limit=256"]) == 0
        tmp_path = tmp_path / "run"
        tmp_path.mkdir()
    status = main(["train", str(spec), "--steps", "3", "--out", str(tmp_path), "--set",
                   "data.limit=256"])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert {"final.pt", "metrics.jsonl", "summary.json", "checkpoint.pt"} <= {
        p.name for p in tmp_path.iterdir()}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["status"] == "completed"
    # a regression loss has no accuracy (and reports none)
    regression = any(line.split()[:2] in (["loss", "mse"], ["loss", "l1"], ["loss", "smooth_l1"])
                     for line in spec.read_text().splitlines())
    assert ("val_acc" in summary) != regression
    for key in ("train_loss", "val_loss", "wall_time_s", "steps_per_s", "peak_memory_mib",
                *(() if regression else ("train_acc", "val_acc"))):
        assert summary[key] is not None, key
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 3
    state = torch.load(tmp_path / "final.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_quickstart_reaches_95_percent(tmp_path: Path) -> None:
    result = train(ROOT / "specs" / "quickstart.mrs", out=tmp_path)
    assert result.summary["val_acc"] >= 0.95
    assert result.summary["status"] == "completed"


def test_python_api_returns_model_and_metrics(tmp_path: Path) -> None:
    result = train(ROOT / "specs" / "quickstart.mrs", steps=20, save=False,
                   overrides={"optimizer.lr": "0.1"})
    assert isinstance(result.model, torch.nn.Module)
    assert result.out_dir is None
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    assert len(losses) == 2 and all(v > 0 for v in losses)
    # the run (20 steps) is shorter than the warm-up (50), which then spans the whole run
    assert result.metrics[0]["lr"]["all"] == pytest.approx(0.1 * (10 / 20))


NAN_DATA = '''
import numpy as np

def make(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    x[4 * 7 + 1, 0] = -1000.0  # inside batch 8 (steps count from 1) when not shuffled
    return {"x": x, "y": y, "x_test": x[:8], "y_test": y[:8]}
'''

FRAGILE_MODEL = '''
import torch
from torch import nn

class Fragile(nn.Module):
    """A linear classifier whose output is NaN for an input whose first feature is below -100
    (finite data, so the loader accepts it; the model diverges on it)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) + 0.0 * torch.sqrt(x[:, :1] + 100.0)

def make():
    return Fragile()
'''


def test_nan_loss_stops_with_the_step_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "nandata.py").write_text(NAN_DATA)
    (tmp_path / "fragile.py").write_text(FRAGILE_MODEL)
    spec = tmp_path / "nan.mrs"
    spec.write_text('model "fragile.py:make"\ndata "nandata.py:make"(batch=4, shuffle=false)\n'
                    "optimizer sgd(lr=0.1)\ntrain(steps=20, checkpoint_every=5)\n")
    out = tmp_path / "run"
    proc = run_cli("train", str(spec), "--out", str(out))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "at step 8" in proc.stderr and "last good checkpoint (step 5)" in proc.stderr
    assert load_checkpoint(out)["step"] == 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert not (out / "final.pt").exists()


def test_ctrl_c_writes_a_checkpoint_and_resume_continues(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mrc.cli", "train",
                             str(ROOT / "specs" / "quickstart.mrs"), "--steps", "200000",
                             "--out", str(out), "--set", "train.log_every=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or metrics.stat().st_size < 200):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    assert f"mrc: to continue: mrc train {ROOT / 'specs' / 'quickstart.mrs'} --resume {out}" in err
    state = load_checkpoint(out)
    assert 0 < state["step"] < 200000
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    resumed = run_cli("train", str(ROOT / "specs" / "quickstart.mrs"), "--resume", str(out),
                      "--steps", str(state["step"] + 5), "--change-length")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == state["step"] + 5


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "optimizer.lr=-1"], "<--set optimizer.lr>:1:14: error: `lr` = -1 is out of range"),
    (["--set", "optimizer.lrr=0.1"], "`--set optimizer.lrr` matches no setting of this spec"),
    (["--set", "optimizer.lr"], "`--set optimizer.lr` needs the form key=value"),
    (["--set", "optimizer.lr=(0.1"], "<--set optimizer.lr>:1:18: error: unexpected end of file"),
    (["--set", "train.epochs=2.5"], "`epochs` must be an integer, not 2.5"),
])
def test_set_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["train", str(ROOT / "specs" / "quickstart.mrs"), *args])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err, err
    assert "Traceback" not in err


def test_set_changes_the_run(tmp_path: Path) -> None:
    result = train(ROOT / "specs" / "quickstart.mrs", steps=2, save=False,
                   overrides=["optimizer.lr=0.2", "schedule.warmup=0"])
    logged = [m for m in result.metrics if "lr" in m]
    # cosine over 2 steps, logged at t = 1: 0.2 · (1 + cos(π/2)) / 2
    assert logged[-1]["lr"]["all"] == pytest.approx(0.1)


@pytest.mark.parametrize(("args", "message"), [
    (["train", "specs/quickstart.mrs", "--steps", "0"], "must be at least 1"),
    (["train", "specs/quickstart.mrs", "--steps", "x"], "expected a whole number"),
    (["train", "specs/quickstart.mrs", "--device", "tpu"], "invalid choice"),
    (["train", "specs/nope.mrs"], "specs/nope.mrs: error: cannot read spec: No such file"),
    (["train", "specs/quickstart.mrs", "--resume", "/nonexistent/run"],
     "cannot resume: /nonexistent/run is not a directory"),
    (["graph", "specs/quickstart.mrs", "--after", "nope"], "is not in the pipeline"),
])
def test_bad_flags_and_files_give_one_line(args: list[str], message: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_from_a_directory_without_checkpoint(tmp_path: Path) -> None:
    proc = run_cli("train", "specs/quickstart.mrs", "--resume", str(tmp_path))
    assert proc.returncode == 2
    assert f"cannot resume: {tmp_path} holds no checkpoint.pt" in proc.stderr


def test_early_stopping_restores_best(tmp_path: Path) -> None:
    spec = tmp_path / "early.mrs"
    spec.write_text("model mlp(hidden=[64])\ndata digits(batch=32)\n"
                    "optimizer sgd(lr=2.0, momentum=0.9)\n"
                    "train(epochs=30, eval_every=10)\n"
                    "early_stopping(metric=val_loss, patience=2)\n")
    result = train(spec, out=tmp_path / "run")
    assert result.status == "stopped_early"
    evals = [m for m in result.metrics if "val_loss" in m]
    best = min(m["val_loss"] for m in evals)
    assert result.summary["val_loss"] == pytest.approx(best, rel=1e-6)
    assert result.summary["steps"] < 30 * 45


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_trains_on_cuda(tmp_path: Path) -> None:
    result = train(ROOT / "specs" / "quickstart.mrs", out=tmp_path, device="cuda")
    assert result.summary["device"].startswith("cuda")
    assert result.summary["val_acc"] >= 0.95


def test_missing_initial_weights_warn_in_check_and_fail_in_train(tmp_path: Path) -> None:
    spec = tmp_path / "ft.mrs"
    spec.write_text('model mlp()\ndata digits(limit=64)\noptimizer sgd(lr=0.1)\n'
                    'init "runs/none/final.pt"\n')
    check = run_cli("check", str(spec))
    assert check.returncode == 0
    assert "ft.mrs:4:6: warning: cannot read initial weights: no file runs/none/final.pt" in check.stderr
    proc = run_cli("train", str(spec), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "ft.mrs:4:6: error: cannot read initial weights: no file runs/none/final.pt" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("arrays", "message"), [
    ("x[3, 1] = np.nan", "bad.npz: `x` has a non-finite value (nan) at index [3, 1]"),
    ("y[7] = 10**12", "bad.npz: `y` has label 1000000000000 at index 7"),
])
def test_bad_data_values_fail_check_at_the_data_statement(tmp_path: Path, arrays: str,
                                                         message: str) -> None:
    """NaN inputs used to pass `mrc check` and stop training as a "divergence"; a huge label
    used to fail as "cannot build model". Both are data errors, shown at `data`."""
    subprocess.run([sys.executable, "-c",
                    "import numpy as np\nx = np.zeros((40, 4), dtype=np.float32)\n"
                    f"y = np.arange(40) % 2\n{arrays}\nnp.savez('bad.npz', x=x, y=y)\n"],
                   cwd=tmp_path, check=True)
    spec = tmp_path / "bad.mrs"
    spec.write_text('model mlp(hidden=[8])\ndata "bad.npz"(batch=4)\noptimizer sgd(lr=0.1)\n'
                    "train(steps=5)\n")
    for command in ("check", "train"):
        proc = run_cli(command, str(spec), *(["--out", str(tmp_path / "run")]
                                             if command == "train" else []))
        assert proc.returncode == 2, proc.stderr
        assert f"bad.mrs:2:6: error: {message}" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and "cannot build model" not in proc.stderr


# ---- the run directory: checked before compiling; files get the umask's mode ----------------

BROKEN_SPEC = "model mlp(hidden=[8])\ndata digits()\noptimizer sgd(lr=0.1\n"
"""A spec the compiler rejects: a run-directory error printed instead proves it came first."""


@pytest.mark.parametrize(("out", "message"), [
    ("precious.txt", "precious.txt: it is a file, not a directory"),
    ("precious.txt/run", "precious.txt/run: {tmp}/precious.txt is a file, not a directory"),
])
def test_an_out_dir_in_a_files_way_fails_first_and_leaves_the_file(tmp_path: Path, out: str,
                                                                   message: str) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    spec = tmp_path / "broken.mrs"
    spec.write_text(BROKEN_SPEC)
    proc = run_cli("train", str(spec), "--out", str(tmp_path / out))
    assert proc.returncode == 2
    expected = f"mrc train: cannot write the run to {tmp_path}/{message.format(tmp=tmp_path)}"
    assert proc.stderr.strip() == expected, proc.stderr
    assert precious.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mrs", "precious.txt"]


def test_an_out_dir_on_a_read_only_file_system(tmp_path: Path) -> None:
    """A read-only bind mount inside a private mount namespace (`unshare`), so nothing leaks."""
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    spec = tmp_path / "broken.mrs"
    spec.write_text(BROKEN_SPEC)
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount --bind -o ro {frozen} {frozen} && touch {frozen}/x"],
                           capture_output=True, text=True)
    if "Read-only file system" not in probe.stderr:
        pytest.skip(f"cannot make a read-only bind mount here: {probe.stderr.strip()}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c",
                           f"mount --bind -o ro {frozen} {frozen} && exec {sys.executable} -m "
                           f"mrc.cli train {spec} --out {frozen}/run"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"mrc train: cannot write the run to {frozen}/run: the file "
                                   f"system is read-only"), proc.stderr


def test_an_out_dir_without_write_permission() -> None:
    """A directory without write permission. Root writes there anyway, so as root (CI) the run
    is started as `nobody` with setpriv; the folder is made world-readable for that user."""
    import shutil
    import tempfile

    command = [sys.executable, "-m", "mrc.cli", "train"]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and without setpriv (util-linux) to drop to an ordinary user")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        probe = subprocess.run([*command[:4], sys.executable, "-c", "import mrc"], capture_output=True, text=True,
                               cwd="/")
        if probe.returncode != 0:
            pytest.skip(f"`nobody` cannot run this checkout's python: {probe.stderr.strip()[-120:]}")
    base = Path(tempfile.mkdtemp(prefix="mrc-locked-"))
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        spec = base / "broken.mrs"
        spec.write_text(BROKEN_SPEC)
        spec.chmod(0o644)
        proc = subprocess.run([*command, str(spec), "--out", str(locked / "run")], capture_output=True,
                              text=True, timeout=300, cwd=base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"mrc train: cannot write the run to {locked}/run: permission denied"


def test_an_existing_writable_out_dir_is_used_and_a_created_one_removed_on_error(
        tmp_path: Path) -> None:
    from mrc.runtime.checkpoint import prepare_out_dir

    prepare_out_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and not any((tmp_path / "a" / "b").iterdir())
    prepare_out_dir(tmp_path / "a" / "b")  # existing: fine, and left empty (the probe is gone)
    assert not any((tmp_path / "a" / "b").iterdir())
    spec = tmp_path / "broken.mrs"
    spec.write_text(BROKEN_SPEC)
    proc = run_cli("train", str(spec), "--out", str(tmp_path / "new" / "run"))
    assert proc.returncode == 2 and "error" in proc.stderr
    assert not (tmp_path / "new").exists()  # the compile failed: no empty directories left


def test_run_files_get_the_umask_mode(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; the atomic writer must give 0666 & ~umask like `open`."""
    from mrc.runtime.checkpoint import atomic_write_bytes

    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "one.bin", lambda f: f.write(b"x"))
        assert (tmp_path / "one.bin").stat().st_mode & 0o777 == 0o640
        os.umask(0o002)
        atomic_write_bytes(tmp_path / "one.bin", lambda f: f.write(b"y"))  # over an old file
        assert (tmp_path / "one.bin").stat().st_mode & 0o777 == 0o664
        os.umask(0o027)
        result = train(ROOT / "specs" / "quickstart.mrs", out=tmp_path / "run", steps=2)
    finally:
        os.umask(old)
    out = Path(result.out_dir)
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert set(modes) >= {"final.pt", "metrics.jsonl", "summary.json", "checkpoint.pt"}
    assert any(name.startswith("tb/events.out.tfevents.") for name in modes)  # TensorBoard's too
    assert set(modes.values()) == {0o640}, {k: oct(v) for k, v in modes.items()}


def test_early_stopping_works_with_brains_on_the_merged_model(tmp_path: Path) -> None:
    """Early stopping watches the merged model's metric (the run's metric) and restores the
    merged model's best weights into final.pt."""
    spec = tmp_path / "early_brains.mrs"
    spec.write_text("model mlp(hidden=[64])\ndata digits(batch=32)\n"
                    "optimizer sgd(lr=2.0, momentum=0.9)\n"
                    "brain fast { every = 1 }\nbrain slow { every = 2 }\nmerge mean\n"
                    "train(epochs=30, eval_every=10)\n"
                    "early_stopping(metric=val_loss, patience=2)\n")
    result = train(spec, out=tmp_path / "run")
    assert result.status == "stopped_early"
    evals = [m for m in result.metrics if "val_loss" in m]
    assert all("brains" in m for m in evals)  # each brain's metrics beside the merged model's
    best = min(m["val_loss"] for m in evals)
    assert result.summary["val_loss"] == pytest.approx(best, rel=1e-6)
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert all(torch.equal(final[k], v) for k, v in result.model.state_dict().items())


def test_the_python_api_refuses_a_file_as_its_run_directory(tmp_path: Path) -> None:
    from mrc.runtime.checkpoint import CheckpointError

    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="it is a file, not a directory"):
        train(ROOT / "specs" / "quickstart.mrs", out=tmp_path / "precious.txt", steps=2)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_the_last_progress_line_shows_the_last_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The final log line is printed after the final step's evaluation, not before it: its
    val_acc is the summary's."""
    assert main(["train", str(ROOT / "specs" / "quickstart.mrs"), "--steps", "30", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    last = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step 30/30")][-1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert f"val_acc {summary['val_acc']:.4f}" in last
