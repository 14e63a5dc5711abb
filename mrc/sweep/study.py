"""The optuna study behind a sweep: storage, samplers, pruners, counting, locking, clean-up.

Nothing here is hand-written search: the samplers are optuna's `GridSampler`, `RandomSampler`
and `TPESampler`, the pruners `MedianPruner`, `HyperbandPruner` and `NopPruner`, the storage a
journal file (optuna's advice for several processes on one machine or a shared file system) or
any optuna storage URL. What mrc adds is what makes a study resumable and shareable:

- `--trials N` counts every trial that is or will be a result — complete, pruned, failed by
  itself (a diverging run is a result), running or queued — but not one that was *interrupted*
  (Ctrl-C, kill -9): that one is marked FAIL with `interrupted` and its parameters are queued
  again, so the same command continues the study and re-runs it.
- "count, then start a trial" happens under a file lock (`study_lock`), so J workers, or two
  independent `mrc sweep` processes on one journal file, make exactly N trials.
- each trial records its owner (host, pid, the process's start time); a RUNNING trial whose
  owner on this host is dead is stale and is reclaimed (`reclaim_stale`) before any worker
  starts a trial.
- random and bayes samplers are seeded per trial from (seed, trial number): workers on any
  machine draw different points, and the points a study tries do not depend on how many
  workers ran it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, Trial, TrialState

from mrc.program import Sweep, SweepSpace


class SweepError(Exception):
    """Bad input to `mrc sweep` (a spec without a sweep, an unreachable storage, …): the CLI
    prints the message as one line and exits 2."""


# --- storage ---------------------------------------------------------------------------------

def resolve_storage(given: str | None, out: Path) -> str:
    """The storage every worker opens: an optuna URL as given, else a journal file's absolute
    path (`--storage FILE`, default `OUT/study.log`)."""
    if given is None:
        return str((out / "study.log").resolve())
    if "://" in given:
        return given
    return str(Path(given).expanduser().resolve())


def is_journal_file(storage: str) -> bool:
    """True when `storage` is a journal file path rather than a URL."""
    return "://" not in storage


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """Open the storage; any failure (a missing directory, no database there, no driver) is a
    one-line SweepError."""
    try:
        if is_journal_file(storage):
            path = Path(storage)
            if not path.parent.is_dir():
                raise SweepError(f"cannot use journal file {storage}: {path.parent} is not a directory")
            if path.is_dir():
                raise SweepError(f"cannot use journal file {storage}: it is a directory")
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(storage))
        if storage.startswith("redis://"):
            from optuna.storages.journal import JournalRedisBackend

            return optuna.storages.JournalStorage(JournalRedisBackend(storage))
        return optuna.storages.RDBStorage(storage)
    except SweepError:
        raise
    except Exception as err:  # sqlalchemy, a missing driver, OSError: all say why in their message
        raise SweepError(f"cannot open storage {storage}: {first_line(err)}") from None


def first_line(err: BaseException) -> str:
    """An exception as one line: its message's first line, or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def lock_path(storage: str) -> Path:
    """The lock file that serialises "count the trials, then start one": next to a journal file
    (so processes sharing the file share the lock), else one per storage URL on this machine."""
    if is_journal_file(storage):
        return Path(storage + ".mrc-lock")
    digest = hashlib.sha1(storage.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"mrc-sweep-{digest}.lock"


@contextlib.contextmanager
def study_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (fcntl.flock; the kernel drops it if the holder
    dies, so a kill -9 never leaves the study locked). A no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --- samplers and pruners --------------------------------------------------------------------

def grid_space(sweep: Sweep) -> dict[str, list[str]]:
    """The grid: each key's values (their source texts)."""
    return {s.key: list(s.choices) for s in sweep.spaces}


def grid_size(sweep: Sweep) -> int:
    """How many points the grid has: the product of every key's number of values."""
    size = 1
    for s in sweep.spaces:
        size *= len(s.choices)
    return size


class _Grid(GridSampler):
    """optuna's GridSampler, minus its `study.stop()` when the grid is exhausted: that works only
    inside `study.optimize`, and mrc's workers stop on the trial count themselves."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        return None


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number`: a hash of (seed, number), so parallel workers — on
    this machine or others — never draw the same random stream."""
    import numpy as np

    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class TrialSeeded(BaseSampler):
    """Delegates to a fresh optuna sampler per trial, seeded by `trial_seed(seed, number)`.

    A seeded RandomSampler in each of two independent processes would draw the same points; this
    one draws points that depend only on the study's seed and the trial's number."""

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = seed
        self._cache: tuple[int, BaseSampler] | None = None

    def _inner(self, number: int) -> BaseSampler:
        if self._cache is None or self._cache[0] != number:
            self._cache = (number, self._factory(trial_seed(self._seed, number)))
        return self._cache[1]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._inner(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner(trial.number).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._inner(trial.number).after_trial(study, trial, state, values)


def make_sampler(sweep: Sweep) -> BaseSampler:
    """grid → GridSampler, random → RandomSampler, bayes → TPESampler (both seeded per trial).

    Every worker's GridSampler takes the *same* seed: it shuffles the grid with it and trial k
    runs point k of the shuffled grid, so workers seeded differently (seed + worker) would map
    one trial number to different points and run some points twice and others never."""
    if sweep.method == "grid":
        return _Grid(grid_space(sweep), seed=sweep.seed)
    if sweep.method == "random":
        return TrialSeeded(lambda s: RandomSampler(seed=s), sweep.seed)
    return TrialSeeded(lambda s: TPESampler(seed=s), sweep.seed)


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    """The statement's pruner; its steps are evaluations (0, 1, 2, … of a trial)."""
    args = dict(sweep.pruning_args)
    if sweep.pruning == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(args.get("startup", 5)),
                                           n_warmup_steps=int(args.get("warmup", 1)))
    if sweep.pruning == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=int(args.get("min_resource", 1)),
                                              reduction_factor=int(args.get("reduction", 3)))
    return optuna.pruners.NopPruner()


def space_description(sweep: Sweep) -> str:
    """The searched space as JSON, stored with the study: a later run with a different space
    is refused instead of mixing incompatible trials."""
    return json.dumps({"method": sweep.method, "metric": sweep.metric,
                       "spaces": [[s.key, s.kind, list(s.choices), s.lo, s.hi, s.step] for s in sweep.spaces]})


def open_study(sweep: Sweep, storage: str, name: str, *, create: bool = False,
               backend: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create (with `create`, if new) or load the study, with its sampler and pruner.
    A study of that name with another direction or space is a SweepError."""
    backend = backend if backend is not None else open_storage(storage)
    sampler, pruner = make_sampler(sweep), make_pruner(sweep)
    try:
        if create:
            study = optuna.create_study(storage=backend, study_name=name, direction=sweep.direction,
                                        sampler=sampler, pruner=pruner, load_if_exists=True)
        else:
            study = optuna.load_study(study_name=name, storage=backend, sampler=sampler, pruner=pruner)
    except Exception as err:
        raise SweepError(f"cannot open study {name!r} in {storage}: {first_line(err)}") from None
    want = space_description(sweep)
    have = study.user_attrs.get("mrc_space")
    if have is None and create:
        study.set_user_attr("mrc_space", want)
    elif have is not None and have != want:
        raise SweepError(f"study {name!r} in {storage} searches another space (its sweep statement changed); "
                         "give a new --study name or another --storage")
    if study.direction.name.lower() != sweep.direction:
        raise SweepError(f"study {name!r} in {storage} is to {study.direction.name.lower()}, the spec's sweep "
                         f"to {sweep.direction}; give a new --study name")
    return study


# --- trials ----------------------------------------------------------------------------------

def override_text(space: SweepSpace, value: Any) -> str:
    """A parameter's value as a `--set` value: a choice's own source text, a float's repr, an
    int's digits."""
    if space.kind == "choice":
        return str(value)
    if space.kind == "int":
        return str(int(value))
    return repr(float(value))


def suggest(trial: Trial, space: SweepSpace) -> str:
    """Ask optuna for one parameter; returns it as override text."""
    if space.kind == "choice":
        value: Any = trial.suggest_categorical(space.key, list(space.choices))
    elif space.kind == "int":
        value = trial.suggest_int(space.key, int(space.lo), int(space.hi), step=space.step)
    else:
        value = trial.suggest_float(space.key, space.lo, space.hi, log=space.kind == "loguniform")
    return override_text(space, value)


def counts_towards(t: FrozenTrial) -> bool:
    """Whether a trial is one of the study's `--trials`: all but interrupted ones (re-queued)."""
    if t.state == TrialState.FAIL:
        return not t.user_attrs.get("interrupted", False)
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def count_trials(study: optuna.Study) -> int:
    """How many of the study's trials count towards `--trials`."""
    return sum(1 for t in study.get_trials(deepcopy=False) if counts_towards(t))


def owner() -> dict[str, Any]:
    """Who runs a trial: host, pid and the process's start time (so a reused pid is not taken
    for the dead owner)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _proc_start(pid)}


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()  # fields 3 … of proc(5)


def _proc_start(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def alive(pid: int, start: str | None) -> bool:
    """Whether process `pid` (started at `start`, /proc's clock ticks) still runs on this host."""
    fields = _proc_stat(pid)
    if fields is None:
        if Path("/proc/self/stat").exists():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in ("Z", "X"):
        return False
    return start is None or len(fields) <= 19 or fields[19] == start


def mark_interrupted(study: optuna.Study, t: FrozenTrial, reason: str) -> None:
    """Mark trial `t` FAIL as interrupted (it does not count towards `--trials`) and queue its
    parameters again, so the study re-runs it."""
    storage = study._storage
    storage.set_trial_user_attr(t._trial_id, "interrupted", True)
    storage.set_trial_user_attr(t._trial_id, "reason", reason)
    storage.set_trial_user_attr(t._trial_id, "status", "interrupted")
    storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    params = dict(t.params)
    sampler = study.sampler
    if isinstance(sampler, GridSampler) and "grid_id" in t.system_attrs:  # the point, even if unsampled
        grid = sampler._all_grids[t.system_attrs["grid_id"]]
        params = dict(zip(sampler._param_names, grid, strict=True))
    space = study.user_attrs.get("mrc_space")
    keys = [s[0] for s in json.loads(space)["spaces"]] if space else list(params)
    if params and all(k in params for k in keys):
        study.enqueue_trial(params, user_attrs={"retry_of": t.number})


def reclaim_stale(study: optuna.Study, shared_lock: bool) -> list[int]:
    """Call under `study_lock`. RUNNING trials whose owner on this host has died are marked
    interrupted and queued again; so are owner-less RUNNING trials when the lock is shared by
    every worker of the study (a journal file: owners are written before the lock is released,
    so an owner-less trial's creator died holding it). Returns the reclaimed trial numbers."""
    host = socket.gethostname()
    reclaimed: list[int] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.user_attrs
        if "pid" not in attrs:
            stale = shared_lock
        elif attrs.get("host") != host:
            continue
        else:
            stale = not alive(int(attrs["pid"]), attrs.get("pid_start"))
        if stale:
            mark_interrupted(study, t, "its worker died (killed or crashed) during the trial")
            reclaimed.append(t.number)
    return reclaimed


def all_keys(sweep: Sweep) -> list[str]:
    """The searched keys, in the statement's order."""
    return [s.key for s in sweep.spaces]


def grid_points(sweep: Sweep) -> list[tuple[str, ...]]:
    """Every point of a grid (for tests and reports)."""
    return list(itertools.product(*(s.choices for s in sweep.spaces)))
