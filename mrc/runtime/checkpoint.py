"""Run directories: atomic checkpoints, the metrics log and the summary; what a checkpoint
holds, and resuming from one (`Checkpoints`).

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

import dataclasses
import errno
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mrc.safeload import WeightsError, plain, read_weights

FORMAT = "mrc-checkpoint-2"
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


# ---- what a checkpoint holds, and resuming from one ----------------------------------------


def trained(graph: Any) -> Any:
    """The graph as far as a run's identity goes: without its cadence ops (how often the run
    evaluates and saves changes no parameter, so a resume may change it)."""
    return dataclasses.replace(graph, cadence=()) if graph.cadence else graph


def fingerprint(graph: Any) -> str:
    """A short digest of the compiled schedule (what a checkpoint must be resumed with)."""
    return hashlib.sha256(trained(graph).to_json().encode()).hexdigest()[:16]


def differences(saved: Sequence[str], overrides: Sequence[str], saved_schedule: str | None, graph: Any) -> str:
    """What makes a resumed run's compiled schedule differ from its checkpoint's, in words: the
    `--set` keys given now with a value other than the run's (or that the run did not set),
    else the first lines where the schedules differ (`mrc graph --compact` text), else that the
    spec changed. `overrides` are the run's own (`saved`) followed by those given now."""
    def pairs(items: Sequence[str]) -> list[tuple[str, str]]:
        return [(k.strip(), v.strip()) for k, _, v in (str(i).partition("=") for i in items)]

    run = dict(pairs(saved))
    found: list[str] = []
    for key, value in pairs(overrides[len(saved):] if list(overrides[:len(saved)]) == list(saved) else overrides):
        if key not in run:
            found.append(f"`{key}` is {value} now and not set in the run")
        elif run[key] != value:
            found.append(f"`{key}` is {run[key]} in the run, {value} now")
    if found:
        return "; ".join(found)
    if saved_schedule:
        import difflib

        now = trained(graph).to_text(compact=True).splitlines()
        changed = [line[1:].strip() for line in difflib.unified_diff(saved_schedule.splitlines(), now, n=0,
                                                                       lineterm="")
                   if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        if changed:
            shown = "; ".join(f"`{c}`" for c in changed[:4])
            return f"the schedule changed ({shown}{'; …' if len(changed) > 4 else ''}): was the spec edited?"
    return "the compiled schedule differs (was the spec edited?)"


class Checkpoints:
    """A run's checkpoints: what one holds (`snapshot`), writing it (`write`) and continuing
    from one (`restore`). A checkpoint remembers the run it belongs to — the spec's name, a
    fingerprint of its compiled graph, the overrides, the seed and the run's length — so a
    resume continues exactly that run.

    flushes: what must be on disk before a checkpoint is (the metrics lines, TensorBoard
    events up to its step), called before each write."""

    def __init__(self, compiled: Any, out: Path | None, overrides: list[str], world: Any) -> None:
        self.c = compiled
        self.program = compiled.program
        self.out = out
        self.overrides = overrides
        self.world = world
        self.fingerprint = fingerprint(compiled.graph)
        self.schedule_text = trained(compiled.graph).to_text(compact=True)  # once: every checkpoint stores it
        self.flushes: list[Callable[[], None]] = []

    def snapshot(self, run: Any, early: Any) -> bytes:
        """The checkpoint of the run's current step, serialised (written once it proves good).
        Every rank takes part (its copy of the state is made whole first); rank 0 writes."""
        run.plan.synchronize()
        if self.out is None:
            return b""
        state = {
            "format": FORMAT,
            "spec": self.program.file, "spec_name": self.program.name, "fingerprint": self.fingerprint,
            "overrides": self.overrides, "seed": self.program.train.seed,
            "model": self.c.bound.model.state_dict(),
            "plan": run.plan.state_dict(),
            "step": run.step, "epoch": run.epoch, "batch": run.batch, "total": run.total,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "early": early.state_dict() if early else None, "last_eval": run.last_eval,
            "world": self.world.size,
            "elapsed": run.elapsed(),  # the run's wall time so far: a resume continues the clock
            "schedule": self.schedule_text,  # to name what differs when a resume is refused
        }
        buffer = io.BytesIO()
        torch.save(plain(state), buffer)  # read back with weights_only=True: plain data only
        return buffer.getvalue()

    def write(self, data: bytes) -> None:
        if self.out is not None:
            for flush in self.flushes:  # the metrics up to the checkpoint are on disk before it
                flush()
            atomic_write_bytes(self.out / CHECKPOINT, lambda f: f.write(data))

    def restore(self, resume: Path, run: Any, early: Any, *, asked: bool, change_length: bool,
                echo: Callable[[str], None]) -> None:
        """Continue `run` from the checkpoint in `resume`: refused, in one line, when it belongs
        to another run. `asked`: a length was given now; with `change_length` it may differ
        from the run's (the run then ends there), else the run keeps its own."""
        state = load_checkpoint(resume)
        where = f"cannot resume {resume}"
        if state.get("format") != FORMAT or "plan" not in state:
            raise CheckpointError(f"{where}: its checkpoint is from another version of mrc or is incomplete")
        saved_world = int(state.get("world", 1))
        if saved_world != self.world.size:
            raise CheckpointError(f"{where}: it was written by a run of {saved_world} process"
                                  f"{'es' if saved_world > 1 else ''}; resume it with the same number "
                                  f"(this run has {self.world.size})")
        if state["spec_name"] != self.program.name:
            raise CheckpointError(f"{where}: it was written by spec `{state['spec_name']}`, not by "
                                  f"`{self.program.name}`")
        if state["fingerprint"] != self.fingerprint:
            what = differences(state.get("overrides") or [], self.overrides, state.get("schedule"), self.c.graph)
            raise CheckpointError(f"{where}: this run's settings differ from the run's: {what}")
        if state["total"] != run.total:
            if asked and not change_length:
                raise CheckpointError(f"{where}: the run is planned for {state['total']} steps; to make it "
                                      f"{run.total}, resume with --change-length")
            if not asked:
                run.total = state["total"]
            else:
                echo(f"mrc: note: the run now ends at step {run.total} (it was planned for "
                     f"{state['total']}); the learning-rate schedule spans the new length")
        try:
            self.c.bound.model.load_state_dict(state["model"])
            run.plan.load_state_dict(state["plan"])
        except (KeyError, RuntimeError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(f"{where}: its state does not fit this run ({first})") from None
        run.step, run.epoch, run.batch = state["step"], state["epoch"], state["batch"]
        run.last_good = run.step
        run.start -= float(state.get("elapsed", 0.0))  # wall time continues across resumes
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if early is not None and state["early"] is not None:
            early.load_state_dict(state["early"])
        run.last_eval = state["last_eval"]
