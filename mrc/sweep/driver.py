"""`mrc sweep SPEC`: check the input, start the workers, show the trials, write the results.

The command checks everything a user can get wrong before any trial runs — the spec (with its
`sweep` statement: every key and value checked as `--set` checks them), `--jobs`, `--trials`,
`--timeout`, the output directory, the storage and the study — and reports each as one line
(or the compiler's diagnostics) with exit status 2. It then reclaims the trials of dead workers
(see `mrc.sweep.study`), starts J worker processes (`python -m mrc.cli sweep … --worker K`, in
their own session so that Ctrl-C reaches them once, through this process) and shows a live table
of the trials (rich, on a terminal; a plain line per finished trial otherwise). At the end it
prints the best trial and writes OUT/best.mrs, OUT/trials.csv and OUT/plots/*.png.

Ctrl-C asks the workers to stop after their current step (the interrupted trials are queued
again); a second Ctrl-C stops them at once, a third kills them. Running the same command again
continues the study.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrc.program import Sweep
from mrc.sweep.study import (
    SweepError,
    count_trials,
    grid_size,
    is_journal_file,
    lock_path,
    open_study,
    reclaim_stale,
    resolve_storage,
    study_lock,
)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class SweepOptions:
    """What `mrc sweep` was asked for (the command line, parsed)."""

    spec: str
    trials: int | None = None
    jobs: int = 1
    storage: str | None = None
    study: str | None = None
    out: str | None = None
    timeout: float | None = None
    progress: bool = True
    plots: bool = True


@dataclass
class Plan:
    """A checked sweep, ready to run: the study's place and the number of trials it needs."""

    sweep: Sweep
    spec: str
    name: str
    out: Path
    storage: str
    trials: int
    notes: list[str]
    fresh: list[Path]  # the directories `prepare` made (removed again if the study cannot open)


def say(text: str) -> None:
    """One line of `mrc sweep` news on stderr."""
    print(f"mrc sweep: {text}", file=sys.stderr, flush=True)


def prepare(opts: SweepOptions) -> Plan:
    """Check the command line and the spec; raise SweepError (one line) or CompileError."""
    from mrc.api import check_spec
    from mrc.runtime.checkpoint import CheckpointError, prepare_out_dir

    if opts.jobs < 1:
        raise SweepError(f"--jobs must be at least 1, got {opts.jobs}")
    if opts.trials is not None and opts.trials < 1:
        raise SweepError(f"--trials must be at least 1, got {opts.trials}")
    if opts.timeout is not None and not opts.timeout > 0:
        raise SweepError(f"--timeout must be a positive number of seconds, got {opts.timeout:g}")
    if opts.study is not None and not opts.study.strip():
        raise SweepError("--study needs a name")
    program = check_spec(opts.spec)
    sweep = program.sweep
    if sweep is None:
        raise SweepError(f"{opts.spec} has no `sweep` statement")
    notes: list[str] = []
    trials = opts.trials or (grid_size(sweep) if sweep.method == "grid" else sweep.trials or 20)
    if sweep.method == "grid" and trials > grid_size(sweep):
        notes.append(f"the grid has {grid_size(sweep)} points: {trials} trials would repeat some; "
                     f"running {grid_size(sweep)}")
        trials = grid_size(sweep)
    out = Path(opts.out) if opts.out is not None else Path("runs") / f"{program.name}-sweep"
    fresh = [p for p in (out, *out.parents) if not p.exists()]
    try:
        prepare_out_dir(out)
    except CheckpointError as err:
        raise SweepError(str(err)) from None
    storage = resolve_storage(opts.storage, out)
    return Plan(sweep, opts.spec, opts.study or program.name, out, storage, trials, notes, fresh)


def _worker_command(plan: Plan, k: int, deadline: float | None) -> list[str]:
    cmd = [sys.executable, "-m", "mrc.cli", "sweep", plan.spec, "--worker", str(k), "--storage", plan.storage,
           "--study", plan.name, "--out", str(plan.out.resolve()), "--trials", str(plan.trials),
           "--parent", str(os.getpid())]
    return cmd + (["--deadline", repr(deadline)] if deadline is not None else [])


def run_sweep(opts: SweepOptions) -> int:
    """The `mrc sweep` command; returns its exit status."""
    import optuna
    from optuna.trial import TrialState

    from mrc.sweep import results

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = prepare(opts)
    for note in plan.notes:
        say(note)
    try:
        study = open_study(plan.sweep, plan.storage, plan.name, create=True)
    except SweepError:
        for made in plan.fresh:  # leave no empty output directory behind (innermost first)
            with contextlib.suppress(OSError):
                made.rmdir()
        raise
    with study_lock(lock_path(plan.storage)):
        for number in reclaim_stale(study, is_journal_file(plan.storage)):
            say(f"trial {number} was interrupted (its worker died); its values run again")
    have = count_trials(study)
    where = plan.storage
    if is_journal_file(where) and not os.path.relpath(where).startswith(".."):
        where = os.path.relpath(where)
    queued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)))
    say(f"study {plan.name!r} in {where}: {min(have - queued, plan.trials)} of {plan.trials} trials done"
        + (f", {queued} running or queued" if queued else "")
        + f"; {plan.sweep.method} search, {plan.sweep.direction} {plan.sweep.metric}, pruning {plan.sweep.pruning}")
    jobs = max(0, min(opts.jobs, plan.trials - have))
    deadline = time.time() + opts.timeout if opts.timeout is not None else None
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:  # J workers share the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    workers: list[subprocess.Popen[bytes]] = []
    logs = []
    for k in range(jobs):
        log = open(plan.out / f"worker-{k}.log", "ab")
        logs.append(log)
        workers.append(subprocess.Popen(_worker_command(plan, k, deadline), stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd(),
                                        start_new_session=True))
    stops = [0]

    def on_sigint(signum: int, frame: Any) -> None:
        stops[0] += 1
        for w in workers:
            if w.poll() is None:
                try:
                    os.kill(w.pid, signal.SIGKILL if stops[0] >= 3 else signal.SIGINT)
                except ProcessLookupError:
                    pass
        say("stopping: the running trials end after their step and are queued again"
            if stops[0] == 1 else "stopping now" if stops[0] == 2 else "killing the workers")

    previous = signal.signal(signal.SIGINT, on_sigint)
    previous_term = signal.signal(signal.SIGTERM, on_sigint)
    try:
        _watch(study, plan, workers, opts.progress and sys.stderr.isatty())
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        for log in logs:
            log.close()
    status = EXIT_OK
    for k, w in enumerate(workers):
        rc = w.wait()
        if rc not in (0, EXIT_INTERRUPTED, -signal.SIGINT) and not stops[0]:
            say(f"worker {k} exited with status {rc} (its log: {plan.out / f'worker-{k}.log'})")
            status = EXIT_FAILED
    trials = study.get_trials(deepcopy=False)
    finished = sum(1 for t in trials if t.state.is_finished() and results.state_name(t) != "interrupted")
    status = _report(study, plan, opts.plots) or status
    if stops[0]:
        say(f"interrupted with {finished} of {plan.trials} trials done; run the same command to continue")
        return EXIT_INTERRUPTED
    if finished < plan.trials:
        if deadline is not None and time.time() >= deadline:
            say(f"--timeout: stopped with {finished} of {plan.trials} trials done; run the same command to continue")
        else:
            say(f"{finished} of {plan.trials} trials done; run the same command to continue")
            status = status or EXIT_FAILED
    return status


def _watch(study: Any, plan: Plan, workers: list[subprocess.Popen[bytes]], live: bool) -> None:
    """Show the trials until every worker has exited: a rich table on a terminal, else a line
    per trial as it finishes."""
    from mrc.sweep import results

    shown: set[int] = set()

    def poll() -> list[Any]:
        try:
            return study.get_trials(deepcopy=False)
        except Exception:  # a journal line being written: next time
            return []

    if live:
        from rich.console import Console
        from rich.live import Live

        with Live(console=Console(stderr=True), refresh_per_second=2, transient=False) as view:
            while True:
                done = all(w.poll() is not None for w in workers)
                trials = poll()
                view.update(results.table(plan.sweep, trials, plan.trials, results.best_trial(study)))
                if done:
                    return
                time.sleep(0.2)
    while True:
        done = all(w.poll() is not None for w in workers)
        for t in poll():
            if t.state.is_finished() and t.number not in shown:
                shown.add(t.number)
                print(results.trial_line(plan.sweep, t), flush=True)
        if done:
            return
        time.sleep(0.2)


def _report(study: Any, plan: Plan, plots: bool = True) -> int:
    """The best trial, best.mrs, trials.csv and (with `plots`) the plots; returns 1 when no
    trial completed."""
    from mrc.api import check_spec
    from mrc.diagnostics import CompileError, render_all
    from mrc.sweep import results

    out = plan.out
    results.write_csv(study, out / "trials.csv")
    written = [out / "trials.csv"]
    best = results.best_trial(study)
    status = EXIT_OK
    if best is None:
        say("no trial completed: no best.mrs")
        status = EXIT_FAILED
    else:
        values = " ".join(f"{k}={v}" for k, v in results.shown_values(plan.sweep, best).items())
        say(f"best: trial {best.number}  {plan.sweep.metric} {best.value:.4f}  {values}  "
            f"(run {best.user_attrs.get('run_dir', '?')})")
        text, unplaced = results.best_spec_text(plan.spec, plan.sweep, best, plan.name)
        (out / "best.mrs").write_text(text, encoding="utf-8")
        written.append(out / "best.mrs")
        if unplaced:
            say(f"best.mrs: no place in the spec for {', '.join(unplaced)}; they are in its header (train with --set)")
        try:
            check_spec(out / "best.mrs")
        except CompileError as err:  # a bug, not the user's: say so, keep the file
            say(f"best.mrs does not check: {render_all(err.diagnostics).splitlines()[0]}")
            status = EXIT_FAILED
    pictures, notes = results.write_plots(study, plan.sweep, out) if plots else ([], [])
    written += pictures
    for note in notes:
        say(note)
    shown = ", ".join(os.path.relpath(p, out) for p in written)
    say(f"wrote {out}/{{{shown}}}")
    return status
