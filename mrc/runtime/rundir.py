"""Run directories: where a run goes, that it never silently replaces another, and its record.

- `choose`: the directory a run writes. The default is a fresh, versioned folder
  `runs/SPEC_NAME/YYYYMMDD-HHMMSS` (a `-2`, `-3`… suffix if two start in the same second) with a
  `latest` link beside it; `--out DIR` names it. A directory that already holds a run is refused
  unless the caller overwrites it (its run files are then removed first) or resumes it.
- `write_record`: at the start of a fresh run, `config.mrs` (the spec it ran: the source with
  every `--set` value written in, runnable as is) and `run.json` (command, overrides, versions,
  the spec's git commit, host, start time, world); a resume appends itself to `run.json`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mrc.runtime.checkpoint import CheckpointError

RUN_FILES = ("metrics.jsonl", "summary.json", "checkpoint.pt", "final.pt", "config.mrs", "run.json")
"""What marks a directory as a run (any of the first four) and what overwriting removes."""
RUN_FOLDERS = ("tb",)
LATEST = "latest"


class RunExists(CheckpointError):
    """`--out` names a directory that holds a run already; the message says what to do."""


def is_run(path: Path) -> bool:
    """Whether `path` holds (part of) a run: its metrics, summary or weights."""
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES[:4])


def choose(name: str, out: str | Path | None, resume: str | Path | None, *, save: bool = True,
           overwrite: bool = False, root: Path = Path("runs"), run_id: str | None = None) -> Path | None:
    """The run directory: `out`, else the resumed one, else (with `save`) a fresh versioned
    folder under `root/name` (named `run_id` when several processes must agree on it). Raises
    RunExists for an `out` that holds a run, unless `overwrite` (its run files are removed)."""
    if out is not None:
        path = Path(out)
        if resume is None and is_run(path):
            if not overwrite:
                raise RunExists(f"{path} holds a run already: `--resume {path}` continues it, `--overwrite` "
                                "replaces it, or give another --out (without --out each run gets a new folder)")
            clear(path)
        return path
    if resume is not None:
        return Path(resume)
    if not save:
        return None
    base = root / (re.sub(r"[^\w.-]", "", name) or "spec")  # spec text from Python is named `<spec>`
    stamp = run_id or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = base / stamp, 1
    while run_id is None and path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    return path


def clear(path: Path) -> None:
    """Remove a run's files from `path` (only mrc's: the core's and those the techniques name as
    their artifacts; other files stay)."""
    from mrc.techniques import techniques

    for name in (*RUN_FILES, *RUN_FOLDERS, *(a for t in techniques() for a in t.artifacts)):
        if (path / name).is_dir():
            shutil.rmtree(path / name)
        else:
            (path / name).unlink(missing_ok=True)


def link_latest(run_dir: Path) -> None:
    """Point `latest` beside a versioned run at it (relative, replaced atomically); a file
    system without symbolic links gets no link."""
    link = run_dir.parent / LATEST
    tmp = run_dir.parent / f".{LATEST}.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)


def write_record(run_dir: Path, spec: Path | None, overrides: Sequence[str], *, world: int = 1,
                 resumed: bool = False, device: str = "", length: str = "", text: str | None = None) -> None:
    """config.mrs and run.json for a fresh run; a resume adds an entry to run.json's `resumes`.
    length: the command's `--steps N` / `--epochs E`, which is not a value of the spec's text
    (config.mrs says it in its header)."""
    from mrc.runtime.checkpoint import atomic_write_bytes

    record_file = run_dir / "run.json"
    now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    command = [Path(sys.argv[0]).name, *sys.argv[1:]]
    if resumed and record_file.is_file():
        try:
            record = json.loads(record_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            record = {}
        record.setdefault("resumes", []).append({"time": now, "command": command, "overrides": list(overrides)})
    else:
        record = {"command": command, "overrides": list(overrides), "spec": str(spec.resolve()) if spec else None,
                  "git": _git(spec), "versions": _versions(), "host": platform.node(), "started": now,
                  "world": world, "device": device or "auto", "length": length or None}
        if text is not None:  # spec text given from Python: kept as given, the overrides named
            text = ("# config.mrs: the spec text given to mrc.api.train"
                    + (f", run with --set {' '.join(overrides)}" if overrides else "") + "\n" + text)
        elif spec is not None and spec.is_file():
            from mrc.spectext import effective

            text, _ = effective(spec, list(overrides))
        if text is not None:
            if length:
                text = f"# trained with {length} (the command's length; the text keeps the spec's own)\n" + text
            data = text.encode()
            atomic_write_bytes(run_dir / "config.mrs", lambda f: f.write(data))
    atomic_write_bytes(record_file, lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()))


def _versions() -> dict[str, Any]:
    import torch

    from mrc import __version__

    return {"mrc": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def _git(spec: Path | None) -> dict[str, Any] | None:
    """The commit of the repository holding the spec, and whether its tree has changes."""
    if spec is None:
        return None
    folder = spec.resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--", str(spec.resolve()))
    return {"commit": commit, "spec_modified": bool(status)}


def finished(run_dir: Path, name: str, fingerprint: str) -> dict[str, Any] | None:
    """The summary of the run in `run_dir` if it is this run (spec `name`, schedule
    `fingerprint`) and ran to its end (its checkpoint is at its last step, its summary says
    completed); None for a run that can go on, or another run (resuming it is refused later)."""
    from mrc.runtime.checkpoint import CHECKPOINT, SUMMARY, load_checkpoint

    if not (run_dir / CHECKPOINT).is_file() or not (run_dir / SUMMARY).is_file():
        return None
    state = load_checkpoint(run_dir)
    if "plan" not in state or state.get("spec_name") != name or state.get("fingerprint") != fingerprint:
        return None  # incomplete, or another run's: the trainer refuses it, saying why
    if int(state.get("step", 0)) < int(state.get("total", 1)):
        return None
    try:
        summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") == "completed" else None
