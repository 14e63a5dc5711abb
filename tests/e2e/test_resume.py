"""Resume and checkpoints (issue 10, items 1–4): a resume continues exactly the run that was
started, the checkpoint a diverged run keeps is still trainable, another spec's checkpoint is
refused in one line, and a full disk is named as such with the previous checkpoint intact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mrc.api import compile_spec, train
from mrc.runtime.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SPEC = """
model mlp(hidden=[16])
data digits(batch=32, val=0.2, normalize=true)
optimizer sgd(lr={lr}, momentum=0.9)
schedule cosine(warmup=5)
train(epochs=3, seed=2, log_every=5, checkpoint_every={ckpt})
"""


def write(tmp_path: Path, name: str = "s.mrs", lr: float = 0.05, ckpt: int = 0, extra: str = "") -> Path:
    path = tmp_path / name
    path.write_text(SPEC.format(lr=lr, ckpt=ckpt) + extra)
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mrc.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def test_resume_alone_continues_the_run_that_was_started(tmp_path: Path) -> None:
    """`--steps 40` paused at 15, then `--resume` without a length: it ends at 40 (not at the
    spec's 3 epochs), bit-identical to the uninterrupted run, with the same overrides."""
    path = write(tmp_path)
    whole = train(path, out=tmp_path / "whole", steps=40, overrides=["optimizer.lr=0.07"])
    train(path, out=tmp_path / "split", steps=40, overrides=["optimizer.lr=0.07"], stop_at=15)
    resumed = train(path, resume=tmp_path / "split")
    assert resumed.summary["steps"] == resumed.summary["total_steps"] == 40
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_resume_through_the_cli_keeps_the_length_and_a_new_one_needs_a_flag(tmp_path: Path) -> None:
    path = write(tmp_path)
    out = tmp_path / "run"
    done = cli("train", str(path), "--steps", "30", "--out", str(out), "--set", "train.checkpoint_every=10",
               "--no-progress")
    assert done.returncode == 0, done.stderr
    done = cli("train", str(path), "--resume", str(out), "--steps", "45")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"mrc train: cannot resume {out}: the run is planned for 30 steps; to make it 45, resume with --change-length"]
    done = cli("train", str(path), "--resume", str(out), "--steps", "45", "--change-length", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "the run now ends at step 45" in done.stderr


def test_another_specs_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    train(write(tmp_path, "first.mrs"), out=tmp_path / "first", steps=5)
    other = write(tmp_path, "second.mrs", extra='partition head = module("head")\npartition body = rest\n')
    done = cli("train", str(other), "--resume", str(tmp_path / "first"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"mrc train: cannot resume {tmp_path / 'first'}: it was written by spec `first`")
    # the same spec with a setting that changes its schedule is another run too
    with pytest.raises(CheckpointError, match=r"settings differ from the run's: `optimizer\.momentum` is 0\.5 now "
                                              "and not set in the run"):
        train(write(tmp_path, "first.mrs"), resume=tmp_path / "first", overrides=["optimizer.momentum=0.5"])


def test_a_checkpoint_without_its_plan_is_refused_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path)
    train(path, out=tmp_path / "run", steps=5)
    state = load_checkpoint(tmp_path / "run")
    del state["plan"]
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    done = cli("train", str(path), "--resume", str(tmp_path / "run"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "incomplete" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_the_checkpoint_a_diverged_run_keeps_still_trains(tmp_path: Path) -> None:
    """lr = 100: the parameters blow up. The checkpoint kept must have finite parameters AND a
    finite training loss at them (the next step's loss proved it), and the message names it."""
    path = write(tmp_path, lr=100.0, ckpt=5)
    done = cli("train", str(path), "--out", str(tmp_path / "run"), "--no-progress")
    assert done.returncode == 1
    message = done.stderr.strip().splitlines()[-1]
    assert "the loss became" in message and "the last good checkpoint (step" in message
    state = load_checkpoint(tmp_path / "run")
    assert f"(step {state['step']})" in message
    compiled = compile_spec(path)
    model = compiled.bound.model
    model.load_state_dict(state["model"])
    data = compiled.bound.data
    with torch.no_grad():
        loss = F.cross_entropy(model(data.train_x), data.train_y)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert torch.isfinite(loss)


FULL_DISK = """
import json, sys
from pathlib import Path
import torch
from mrc.runtime.checkpoint import CheckpointError, save_torch
out = Path(sys.argv[1]) / "run"
save_torch({"w": torch.zeros(1000)}, out / "checkpoint.pt")  # 4 KB: fits
before = (out / "checkpoint.pt").read_bytes()
try:
    save_torch({"w": torch.zeros(1_000_000)}, out / "checkpoint.pt")  # 4 MB: does not
    message = None
except CheckpointError as err:
    message = str(err)
print(json.dumps({"message": message, "intact": (out / "checkpoint.pt").read_bytes() == before,
                  "left": sorted(p.name for p in out.iterdir())}))
"""


def test_a_full_disk_is_named_and_the_previous_checkpoint_is_intact(tmp_path: Path) -> None:
    """A real full disk: a 2 MB tmpfs mounted in a private mount namespace (`unshare`), where a
    checkpoint of 4 MB cannot be written after one of 4 KB was."""
    import json

    disk = tmp_path / "disk"
    disk.mkdir()
    mount = f"mount -t tmpfs -o size=2m tmpfs {disk}"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"{mount} && findmnt -n -o FSTYPE {disk}"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != "tmpfs":
        pytest.skip(f"cannot mount a small tmpfs here (unshare -rm; mount -t tmpfs): {probe.stderr.strip()}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f'{mount} && exec "$0" -c "$1" {disk}',
                           sys.executable, FULL_DISK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["message"] == (f"cannot write {disk}/run/checkpoint.pt: the disk is full; the previous "
                              f"checkpoint.pt is intact")
    assert got["intact"] and got["left"] == ["checkpoint.pt"]  # no temp file left
