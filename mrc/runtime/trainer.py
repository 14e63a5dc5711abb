"""Training a compiled spec: `Trainer` sets a run up, runs the loop and ends it.

A run lowers the graph to a Plan, restores a checkpoint when it resumes, runs the loop
(mrc/runtime/loop.py: stages × periods × steps, with the callbacks of mrc/runtime/callbacks.py),
and ends with the summary and the run's files (mrc/runtime/summary.py). When the run evaluates
and saves is the graph's cadence ops (`eval`, `checkpoint`: mrc/ir/cadence.py); checkpoints are
mrc/runtime/checkpoint.py's. What a technique adds to a run reaches it only through the Plan's
hooks (mrc.lower.plan.Hooks): this module names no technique. The library installs no signal
handler: a caller that wants Ctrl-C to end a run cleanly passes an `Interrupt` and sets it from
its handler (the CLI does).

Determinism: data order is a pure function of (seed, epoch); model initialisation, dropout and any
other randomness draw from torch's generator, whose state is checkpointed. So on the CPU a run
stopped after N steps and resumed gives bit-identical parameters to an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mrc.data.stream import StreamError, needs_memory
from mrc.data.stream import feed as data_feed
from mrc.ir.cadence import Checkpoint, Evaluate
from mrc.losses import CLASSIFICATION, Scoring, scoring_of
from mrc.lower import lower
from mrc.lower.plan import Plan, placed_world, staged_total
from mrc.runtime.callbacks import (
    Callback,
    Checkpointing,
    Divergence,
    EarlyStopping,
    Evaluation,
    Interrupt,
    MetricsLog,
    Observer,
    Progress,
    Run,
    StopRequests,
)
from mrc.runtime.checkpoint import CHECKPOINT, METRICS, CheckpointError, Checkpoints, read_metrics
from mrc.runtime.checkpoint import MetricsLog as MetricsFile
from mrc.runtime.loop import Loop
from mrc.runtime.summary import summarize, write_results
from mrc.uptime import process_age

if TYPE_CHECKING:
    from mrc.api import Compiled
    from mrc.runtime.tensorboard import TensorBoard


class TrainingStopped(Exception):
    """The run ended early for a reason the user must see (divergence); carries a summary."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.summary = summary


@dataclass
class TrainResult:
    """What `train` gives back: the trained model, the logged metrics and the summary."""

    model: nn.Module
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    out_dir: Path | None
    status: str = "completed"


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


class Trainer:
    """Runs a compiled spec. `run()` returns a TrainResult; see `mrc.api.train`.

    observe: called as observe(step, metrics) after every evaluation; True stops the run.
    interrupt: an `Interrupt` the caller may set to stop the run after its current step.
    overrides: the `--set` items the spec was compiled with (remembered by checkpoints).
    """

    def __init__(self, compiled: Compiled, out_dir: Path | None, *, steps: int | None = None,
                 epochs: int | None = None, device: str | None = None, resume: Path | None = None,
                 progress: bool = False, echo: Callable[[str], None] | None = None,
                 stop_at: int | None = None, trace: Any = None,
                 observe: Callable[[int, dict[str, Any]], bool | None] | None = None,
                 interrupt: Interrupt | None = None, overrides: list[str] | None = None,
                 change_length: bool = False, tensorboard: bool = True) -> None:
        self.c = compiled
        self.program = compiled.program
        settings = self.program.train
        self.out = out_dir
        self.resume = resume
        self.device = pick_device(device or compiled.target.device)
        self.data = compiled.bound.data
        self.scoring: Scoring = CLASSIFICATION  # the run's, once it starts (`_run`)
        self.eval_batch = settings.eval_batch or self.data.batch_size
        self.spe = self.data.steps_per_epoch()
        self.asked = steps is not None or epochs is not None  # a length given now, not the spec's
        if steps is None and epochs is None:
            steps, epochs = settings.steps, settings.epochs
        self.total = steps if steps is not None else (epochs or 1) * self.spe
        self.echo = echo or (lambda s: print(s, file=sys.stderr))
        if not compiled.target.leader:  # a run of several processes: rank 0 speaks
            self.echo = lambda s: None
        staged = staged_total(compiled.graph, self.spe)
        if staged is not None:
            # the stages fix the run's length; a shorter length asked for ends the run early
            # (inside a stage, whose schedule still spans the stage)
            if self.asked and self.total < staged:
                self.echo(f"mrc: note: the run ends at step {self.total}, before its stages end "
                          f"(they run {staged} steps)")
            self.total = min(self.total, staged) if self.asked else staged
        self.progress = progress
        self.stop_at = stop_at
        self.trace = trace
        self.observe = observe
        self.interrupt = interrupt
        self.overrides = list(overrides or [])
        self.change_length = change_length
        self.tensorboard = tensorboard
        from mrc.runtime.world import current

        self.world = current()
        self.checkpoints = Checkpoints(compiled, out_dir, self.overrides, self.world)

    def header(self, run: Run) -> str:
        """The start-of-run line: where and how it trains, how big, how long."""
        params = sum(p.numel() for p in self.c.bound.model.parameters())
        data = self.data
        where = f" → {self.out}" if self.out else ""
        start = f", resumed at step {run.step}" if self.resume is not None else ""
        world = f", {self.world.size} processes" if self.world.size > 1 else ""
        return (f"mrc: {self.program.name}: {params:,} parameters on {self.device}"
                f"{'' if self.c.graph.precision == '32' else f' ({self.c.graph.precision})'}{world}; "
                f"{data.train_size:,} training / {data.val_size:,} validation examples, "
                f"{self.spe} steps per epoch, {run.total} steps{start}{where}")

    def run(self) -> TrainResult:
        from mrc.runtime import world as worlds

        joined = not worlds.current().active and self.c.target.world > 1
        if joined:
            d = self.program.distributed
            worlds.join(self.c.target, d.timeout if d else worlds.DEFAULT_TIMEOUT_S)
        self.world = self.checkpoints.world = worlds.current()
        if self.world.active:
            self._join_run()
        try:
            result = self._threads_and_run()
            # no rank ends (and exits) before rank 0 has written the run: a launcher that sees
            # one process end may end the others
            self.world.barrier()
        except BaseException:
            if joined:
                worlds.leave(meet=False)
            raise
        if joined:
            worlds.leave(meet=False)  # the barrier above was the meeting
        return result

    def _join_run(self) -> None:
        """A run of several processes: rank 0 alone writes the run directory and speaks."""
        have = placed_world(self.c.graph)
        if have != self.world.size:
            raise CheckpointError(f"the schedule was compiled for {have} process{'es' if have > 1 else ''}, "
                                  f"but this run has {self.world.size} (compile it with world={self.world.size})")
        if not self.world.leader:
            self.out = self.checkpoints.out = None
            self.progress = False
            self.echo = lambda s: None

    def _threads_and_run(self) -> TrainResult:
        previous = torch.get_num_threads()
        threads = choose_threads(self.program.train.threads, self.c.bound.model, self.data.batch_size, self.device)
        if threads != previous:
            torch.set_num_threads(threads)
        try:
            return self._run()
        finally:
            if threads != previous:
                torch.set_num_threads(previous)

    def _run(self) -> TrainResult:
        settings = self.program.train
        model = self.c.bound.model.to(self.device)
        self.c.bound.runnable.to(self.device)
        dtype = next(model.parameters()).dtype
        # the batch source and evaluation splits (mrc/data/stream.py): device tensors, or a
        # DataLoader for streamed data
        feed = data_feed(self.data, self.device, dtype, self.eval_batch)
        refused = needs_memory(self.c.graph, feed)
        if refused:
            feed.close()
            raise StreamError(refused)
        plan = lower(self.c.graph, self.c.bound, self.total, self.device, self.world)
        plan.attach(feed.train_x, feed.train_y, feed.val_x, feed.val_y)
        # what evaluations measure: the graph's loss, its task's metrics and the user's
        self.scoring = scoring_of(self.c.graph, self.program.metrics, self.device, dtype)
        plan.trace = self.trace
        run = Run(self, plan, self.total, batches=self.spe)
        early = EarlyStopping(self.program.early_stopping) if self.program.early_stopping else None
        if self.resume is not None:
            self.checkpoints.restore(self.resume, run, early, asked=self.asked, change_length=self.change_length,
                                     echo=self.echo)
            self.total = run.total
            if run.total != plan.ctx.total_steps:
                plan = self._relower(run)
        if self.world.active:
            self._broadcast_state(plan)
        self.echo(self.header(run))
        progress = Progress(self.progress, run.total, settings.log_every, self.echo, oversubscribed())
        if progress.busy:
            self.echo(f"mrc: note: {progress.busy}; steps will be slower than on a quiet machine")
        callbacks, divergence, checkpointing = self._callbacks(run, plan, feed, early, progress)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for cb in callbacks:
            cb.on_start(run)
        plan.module.train()
        loop = Loop(plan, self.device, self.world, self.interrupt, self.stop_at)
        first_step = process_age()  # the start-up this process paid (summary.json)
        try:
            loop.run(run, callbacks, feed.train)
        finally:
            feed.close()
            for cb in callbacks:
                cb.on_end(run)
            if run.sink is not None:  # a run that raised (user code) keeps its metrics so far
                run.sink.flush()
        wall = run.elapsed()
        if run.status != "diverged":
            divergence.check(run)  # losses not read back yet
        if run.status != "diverged" and checkpointing is not None:
            checkpointing.write(run)
        if run.status != "diverged":
            plan.finish()
        plan.synchronize()
        final = plan.final_model()
        if run.status == "stopped_early" and early and early.spec.restore_best and early.best_state is not None:
            model.load_state_dict(early.best_state)
            final = model
        elif final is not plan.module:  # a model made from the replicas (merged): the run's model takes it
            model.load_state_dict(final.state_dict())
        summary = summarize(self, run, plan, final, feed, wall, early, activation=loop.activation,
                            cuda_peak=loop.cuda_peak)
        summary["first_step_s"] = first_step
        if self.out:
            write_results(self.out, model, plan, summary, run.status != "diverged")
        if run.sink is not None:
            run.sink.close()
        metrics = read_metrics(self.out) if self.out else run.records
        if run.status == "diverged":
            where = f"; the last good checkpoint (step {run.last_good}) is in {self.out}" if self.out and \
                (self.out / CHECKPOINT).exists() else ""
            raise TrainingStopped(run.message + where, summary)
        if run.message:
            self.echo(f"mrc: {run.message}")
        return TrainResult(model, metrics, summary, self.out, run.status)

    def _callbacks(self, run: Run, plan: Plan, feed: Any, early: EarlyStopping | None, progress: Progress
                   ) -> tuple[list[Callback], Divergence, Checkpointing | None]:
        """The run's callbacks in the order they run (mrc/runtime/callbacks.py), with its
        divergence check and its checkpoints (None: the graph has no checkpoint op). When the
        run evaluates and saves is the graph's cadence ops; `run.sync` is the gcd of every
        interval, so that every one falls on an event."""
        settings = self.program.train
        cadence = {type(op): op for op in self.c.graph.cadence}
        evaluates, saves = cadence.get(Evaluate), cadence.get(Checkpoint)
        run.sync = math.gcd(*(n for n in (settings.log_every, *(op.every for op in cadence.values())) if n)) or 1
        on_eval: list[Callback] = [progress]
        if early is not None:
            on_eval.append(early)
        if self.observe is not None:
            on_eval.append(Observer(self.observe))
        divergence = Divergence()
        callbacks: list[Callback] = [divergence, MetricsLog(settings.log_every, progress)]
        if evaluates is not None:
            callbacks.append(Evaluation(evaluates.every, self.eval_batch, feed.val_batches, on_eval, feed.evals,
                                        self.scoring))
        checkpoints, checkpointing = self.checkpoints, None
        if saves is not None:
            checkpointing = Checkpointing(saves.every, lambda r: checkpoints.snapshot(r, early), checkpoints.write)
            callbacks.append(checkpointing)
        callbacks += [StopRequests(self.interrupt, self.stop_at), progress]
        checkpoints.flushes.clear()  # what is on disk before a checkpoint: the metrics, the events
        if self.out:
            run.sink = MetricsFile(self.out / METRICS, run.step if self.resume else None)
            checkpoints.flushes.append(run.sink.flush)
        tb = self._tensorboard(plan) if self.out else None
        if tb is not None:
            callbacks.append(tb)
            checkpoints.flushes.append(tb.flush)
        return callbacks, divergence, checkpointing

    def _tensorboard(self, plan: Plan) -> TensorBoard | None:
        """The TensorBoard writer of a run with an out dir (None when turned off, or, with a
        note, when the `tensorboard` package cannot be imported)."""
        if not self.tensorboard or self.out is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs `tensorboard`)

            from mrc.runtime.tensorboard import TensorBoard, graph_text, hparams_of
        except ImportError as err:
            self.echo(f"mrc: note: no TensorBoard events ({err}); pip install tensorboard")
            return None
        effective = self.out / "config.mrs"  # the spec as it ran, `--set` values written in
        try:
            spec_text = (effective if effective.is_file() else Path(self.program.file)).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, TypeError):
            spec_text = ""
        return TensorBoard(self.out, resumed=self.resume is not None, spec_text=spec_text,
                           graph_text=graph_text(self.c.graph), hparams=hparams_of(self.out),
                           techniques=plan.hooks.scalars)

    def _broadcast_state(self, plan: Plan) -> None:
        """Every rank starts from rank 0's parameters and buffers (as DDP does): the same seed
        gives the same ones, and this makes sure of it."""
        world = self.world
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for module in plan.checkpointed_models():
            for t in [*module.parameters(), *module.buffers()]:
                groups.setdefault((t.dtype, t.device), []).append(t.data)
        for tensors in groups.values():  # one message per dtype, not one per tensor (2050 at depth 1024)
            flat = world.broadcast(torch.cat([t.reshape(-1) for t in tensors]))
            for t, got in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
                t.copy_(got.view_as(t))

    def _relower(self, run: Run) -> Plan:
        """A resume that changes the run's length: the schedule spans the new length."""
        state = run.plan.state_dict()
        plan = lower(self.c.graph, self.c.bound, run.total, self.device, self.world)
        plan.load_state_dict(state)
        plan.attach(*run.plan.ctx.replicas.data())
        plan.trace = self.trace
        run.plan = plan
        return plan


SMALL_STEP = 4_000_000
"""Below this many (parameter × example) products per step, one thread is fastest: torch's
intra-op threads cost more to wake and synchronise than they save on so little work, and on a
busy machine they contend (bench/RESULTS.md has the measurement)."""


def choose_threads(setting: int, model: nn.Module, batch: int, device: torch.device) -> int:
    """torch's intra-op threads for a run: `setting` when given (train(threads=N) or
    --threads N); otherwise one for a small model on the CPU, and torch's default otherwise."""
    if setting:
        return setting
    current = torch.get_num_threads()
    if device.type != "cpu":
        return current
    work = sum(p.numel() for p in model.parameters()) * max(1, batch)
    return 1 if work < SMALL_STEP else current


def oversubscribed() -> str:
    """A note when the machine's load already fills its cores ("" when it does not)."""
    import os

    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    cores = os.cpu_count() or 1
    if load > cores * 1.5:  # other work already more than fills the cores (our own run adds to it)
        return f"the machine is busy (load {load:.1f} on {cores} cores)"
    return ""

