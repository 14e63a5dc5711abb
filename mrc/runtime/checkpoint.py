"""Run directories: atomic checkpoints, the metrics log and the summary.

A run directory holds `checkpoint.pt` (everything needed to continue exactly: model, optimizer
state, step, epoch, position in the epoch, random-generator states, early-stopping state),
`metrics.jsonl` (one JSON object per logged step), `summary.json` and, at the end, `final.pt`
(the model's state_dict). Files are written to a temporary name and renamed, so an interrupted
write never leaves a broken file behind; they get the mode a plain `open` would give them
(0666 less the umask). `prepare_out_dir` checks a run directory before anything is compiled.

No file mrc reads back runs code: checkpoints, `init` weights and every other torch file are
read by `mrc.safeload.read_weights`, torch.load with weights_only=True, which builds tensors and plain data
(dicts, lists, tuples, strings, numbers) and refuses any other Python global in one line. So
what mrc saves is made plain first (`plain`): numpy values become Python numbers or tensors,
and anything else is a bug caught when the file is written, not when it is read back.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mrc.safeload import WeightsError, plain, read_weights

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
FINAL = "final.pt"


def _umask() -> int:
    """The process's umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Write via `write(file_object)` to a temp file beside `path`, then rename over it.

    mkstemp creates the temp file 0600; it is given 0666 & ~umask, as `open` would, so
    `final.pt` and `summary.json` have the same mode as `metrics.jsonl`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as err:
        raise CheckpointError(f"cannot write {path}: {_reason(err)}") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        # asked before the temp file goes: deleting it frees the space that ran out
        full = isinstance(err, RuntimeError) and _full(path.parent)
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError | RuntimeError):  # torch.save reports a full disk as a RuntimeError
            kept = f"; the previous {path.name} is intact" if path.exists() else ""
            if isinstance(err, OSError) and err.errno != errno.ENOSPC:
                raise CheckpointError(f"cannot write {path}: {_reason(err)}{kept}") from None
            if isinstance(err, OSError) or full:
                raise CheckpointError(f"cannot write {path}: the disk is full{kept}") from None
        raise


def _full(folder: Path) -> bool:
    """Whether the file system holding `folder` has (next to) no space left."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def save_torch(obj: Any, path: Path) -> None:
    """`obj`, made `plain`, written atomically with torch.save (read back by `read_weights`)."""
    data = plain(obj)
    atomic_write_bytes(path, lambda f: torch.save(data, f))


def save_json(obj: Any, path: Path) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


class CheckpointError(Exception):
    """A run directory that cannot be resumed or written; the message says why in one line."""


def prepare_out_dir(path: Path) -> None:
    """Make sure `path` is a directory a run can write to, creating it (and its parents).

    Called before compiling, so a bad `--out` fails at once with one line instead of a
    traceback after the compile. An existing file is never touched: not at `path` (refused:
    it is not a directory), not above it. Writability is tried, not inferred from mode bits
    (root ignores them; a read-only mount does not): a temporary file is made and removed.
    """
    where = f"cannot write the run to {path}"
    try:
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{where}: it is a file, not a directory")
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise CheckpointError(f"{where}: {blocker} is a file, not a directory")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # the directory, or a parent it needed, could not be made
        culprit = err.filename if err.filename and Path(err.filename) != path else None
        raise CheckpointError(f"{where}: {_reason(err)}"
                              + (f" (at {culprit})" if culprit else "")) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".mrc-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CheckpointError(f"{where}: {_reason(err)}") from None


def _reason(err: OSError) -> str:
    reasons = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENOSPC: "no space left on the device"}
    return reasons.get(err.errno or 0) or err.strerror or type(err).__name__


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CHECKPOINT
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume: {run_dir} is not a directory")
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {run_dir} holds no {CHECKPOINT}")
    try:
        state = read_weights(path)
    except WeightsError as err:
        raise CheckpointError(f"cannot resume: {err}") from None
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith("mrc-checkpoint-"):
        raise CheckpointError(f"cannot resume: {path} is not an mrc checkpoint")
    return state


class MetricsLog:
    """Appends JSON lines; on resume it drops lines logged after the checkpoint's step.

    Lines are buffered and reach the disk at least every `flush_every` seconds, before each
    checkpoint (`flush`) and at the end: what a resume keeps (the lines up to its checkpoint) is
    always on disk, and a line per log step costs no system call."""

    flush_every = 1.0

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        keep.append(line)
                except json.JSONDecodeError:
                    continue
            path.write_text("".join(line + "\n" for line in keep))
        self._f = path.open("a")
        self._flushed = time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        if time.monotonic() - self._flushed > self.flush_every:
            self.flush()

    def flush(self) -> None:
        self._f.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        self._f.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
