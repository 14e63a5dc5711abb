"""One sweep worker: a process that runs trials until the study has its `--trials`.

Each trial is an ordinary run directory `OUT/trial-NNNN/` (NNNN: the trial's number) written by
`mrc.api.train` with the trial's values as `--set` overrides — metrics.jsonl, summary.json,
final.pt, checkpoint.pt, and log.txt (what the run printed). The trial records in the study its
parameters, its metric (the summary's `val_acc`, `val_loss` or `evals[NAME][acc|loss]`), its
state and the user attributes `run_dir`, `status` (the run's), `reason` (why it failed or was
pruned), `overrides` and its owner (`host`, `pid`, `pid_start`, `worker`).

At each evaluation the metric is reported to optuna (`trial.report(value, k)`, k = 0, 1, … the
evaluation's index) and the pruner asked; a pruned trial's run stops there (status `stopped`)
and the trial is PRUNED. A run that diverges or raises is a FAIL with its reason, and the worker
goes on. Ctrl-C (SIGINT, or SIGTERM — also sent when the `mrc sweep` process that started the
worker dies) stops the current run after its step; the trial is marked interrupted and queued
again, and the worker exits.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from mrc.program import Sweep
from mrc.sweep.study import (
    count_trials,
    first_line,
    is_journal_file,
    lock_path,
    mark_interrupted,
    open_study,
    owner,
    reclaim_stale,
    study_lock,
    suggest,
)


def trial_dir(out: Path, number: int) -> Path:
    """The run directory of trial `number`: OUT/trial-0007."""
    return out / f"trial-{number:04d}"


def _die_with_parent(parent: int | None) -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (so a kill -9 of `mrc sweep`
    does not leave workers running); exit at once if the parent is already gone."""
    if parent is None:
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(0)


def run_worker(spec: str, storage: str, study_name: str, out: Path, trials: int, worker: int,
               deadline: float | None = None, parent: int | None = None) -> int:
    """Run trials of the study until it has `trials` (or `deadline`, a time.time(), passes, or a
    stop is asked for). Returns the exit status: 0, or 130 when interrupted."""
    from mrc.api import check_spec
    from mrc.runtime.callbacks import Interrupt

    _die_with_parent(parent)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    interrupt = Interrupt()

    def handler(signum: int, frame: Any) -> None:
        if interrupt.requested:
            raise KeyboardInterrupt
        interrupt.requested = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    sweep = check_spec(spec).sweep
    assert sweep is not None, "the driver checked that the spec has a sweep"
    study = open_study(sweep, storage, study_name)
    lock, shared = lock_path(storage), is_journal_file(storage)
    while not interrupt.requested and (deadline is None or time.time() < deadline):
        with study_lock(lock):  # count, then start: atomic across every worker of the study
            reclaim_stale(study, shared)
            if count_trials(study) >= trials:
                break
            trial = study.ask()
            texts = [(s.key, suggest(trial, s)) for s in sweep.spaces]
            run_dir = trial_dir(out, trial.number).resolve()
            attrs = {**owner(), "worker": worker, "run_dir": str(run_dir),
                     "overrides": [f"{k}={v}" for k, v in texts]}
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
        run_trial(study, trial, sweep, spec, run_dir, attrs["overrides"], interrupt, parent)
    return 130 if interrupt.requested else 0


def run_trial(study: optuna.Study, trial: Trial, sweep: Sweep, spec: str, run_dir: Path,
              overrides: list[str], interrupt: Any, parent: int | None = None) -> TrialState:
    """Train one trial in `run_dir` and tell the study how it ended. Returns its state."""
    from mrc.api import train
    from mrc.diagnostics import CompileError, render_all
    from mrc.runtime.callbacks import metric_value
    from mrc.runtime.trainer import TrainingStopped

    evals, pruned = [0], [False]

    def observe(step: int, metrics: dict[str, Any]) -> bool | None:
        if parent is not None and os.getppid() != parent:  # orphaned where prctl is missing
            interrupt.requested = True
        try:
            value = float(metric_value(metrics, sweep.metric))
        except (KeyError, TypeError, ValueError):
            return None
        if not math.isfinite(value):
            return None
        trial.report(value, evals[0])
        evals[0] += 1
        if trial.should_prune():
            pruned[0] = True
            return True
        return None

    if run_dir.exists():  # an older study's trial of the same number
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    def fail(reason: str, status: str = "failed") -> TrialState:
        trial.set_user_attr("status", status)
        trial.set_user_attr("reason", reason)
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL

    with open(run_dir / "log.txt", "w", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            result = train(spec, out=run_dir, overrides=overrides, observe=observe,
                           interrupt=interrupt, progress=False)
        except TrainingStopped as err:
            return fail(err.message, str(err.summary.get("status", "diverged")))
        except CompileError as err:
            text = render_all(err.diagnostics)
            print(text, file=log)
            return fail(first_line(Exception(text)), "bad settings")
        except KeyboardInterrupt:
            mark_interrupted(study, study._storage.get_trial(trial._trial_id), "interrupted (Ctrl-C)")
            raise
        except Exception as err:  # a trial that raises is a result, not the end of the sweep
            import traceback

            traceback.print_exc(file=log)
            return fail(f"{type(err).__name__}: {first_line(err)}", "error")
    summary = result.summary
    trial.set_user_attr("status", summary.get("status"))
    trial.set_user_attr("steps", summary.get("steps"))
    if result.status == "interrupted":
        mark_interrupted(study, study._storage.get_trial(trial._trial_id), "interrupted (Ctrl-C)")
        return TrialState.FAIL
    if pruned[0]:
        trial.set_user_attr("reason", f"pruned at evaluation {evals[0]} (step {summary.get('steps')})")
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    try:
        value = float(metric_value(summary, sweep.metric))
    except (KeyError, TypeError, ValueError):
        return fail(f"the run's summary has no {sweep.metric}", str(summary.get("status")))
    if not math.isfinite(value):
        return fail(f"{sweep.metric} is {value}", str(summary.get("status")))
    study.tell(trial, value)
    return TrialState.COMPLETE
