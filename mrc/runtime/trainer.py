"""The training loop: stages × periods × steps of the Plan over the data, with callbacks.

The loop itself only draws batches, steps the Plan and rolls epochs over; evaluation, logging,
checkpoints, early stopping, divergence, progress, an observer hook and stop requests are
callbacks (mrc/runtime/callbacks.py). The library installs no signal handler: a caller that wants
Ctrl-C to end a run cleanly passes an `Interrupt` and sets it from its handler (the CLI does).

Determinism: data order is a pure function of (seed, epoch); model initialisation, dropout and any
other randomness draw from torch's generator, whose state is checkpointed. So on the CPU a run
stopped after N steps and resumed gives bit-identical parameters to an uninterrupted one. A
checkpoint remembers the run it belongs to — the spec's name, a fingerprint of its compiled
graph, the overrides, the seed and the run's length — so a resume continues exactly that run.
"""

from __future__ import annotations

import hashlib
import io
import math
import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mrc.data.stream import BatchSource, Feed, StreamError, needs_memory
from mrc.data.stream import feed as data_feed
from mrc.losses import CLASSIFICATION, Scoring, scoring_of
from mrc.lower import lower
from mrc.lower.plan import Plan, staged_total
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
    prefixed,
)
from mrc.runtime.checkpoint import (
    CHECKPOINT,
    FINAL,
    METRICS,
    SUMMARY,
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    plain,
    read_metrics,
    save_json,
    save_torch,
)
from mrc.runtime.checkpoint import MetricsLog as MetricsFile
from mrc.runtime.evaluation import evaluate, evaluate_batches
from mrc.uptime import process_age

if TYPE_CHECKING:
    from mrc.api import Compiled

FORMAT = "mrc-checkpoint-2"
AUX = "aux"
"""Where module-wise training keeps the auxiliary heads in the model (mrc.techniques.modules.bind)."""


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

        now = graph.to_text(compact=True).splitlines()
        changed = [line[1:].strip() for line in difflib.unified_diff(saved_schedule.splitlines(), now, n=0,
                                                                       lineterm="")
                   if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        if changed:
            shown = "; ".join(f"`{c}`" for c in changed[:4])
            return f"the schedule changed ({shown}{'; …' if len(changed) > 4 else ''}): was the spec edited?"
    return "the compiled schedule differs (was the spec edited?)"


def fingerprint(graph: Any) -> str:
    """A short digest of the compiled schedule (what a checkpoint must be resumed with)."""
    return hashlib.sha256(graph.to_json().encode()).hexdigest()[:16]


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
        self.device = pick_device(device or settings.device)
        self.data = compiled.bound.data
        self.scoring: Scoring = CLASSIFICATION  # the run's, once it starts (`_run`)
        self.spe = self.data.steps_per_epoch()
        self.asked = steps is not None or epochs is not None  # a length given now, not the spec's
        if steps is None and epochs is None:
            steps, epochs = settings.steps, settings.epochs
        self.total = steps if steps is not None else (epochs or 1) * self.spe
        self.echo = echo or (lambda s: print(s, file=sys.stderr))
        from mrc.launch import leader

        if not leader():  # a run of several processes: rank 0 speaks
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
        self.fingerprint = fingerprint(compiled.graph)
        self.schedule_text = compiled.graph.to_text(compact=True)  # once: every checkpoint stores it
        self.tensorboard = tensorboard
        self._sink: Any = None
        self._tb: Any = None  # mrc.runtime.tensorboard.TensorBoard of a run with an out dir
        self.activation: Any = None  # mrc.runtime.memory.StepMemory of the measured steps
        self._cuda_peak = 0
        from mrc.runtime.world import current

        self.world = current()

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

    # ---- checkpoints ---------------------------------------------------------------------

    def _snapshot(self, run: Run, early: EarlyStopping | None) -> bytes:
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

    def _write(self, data: bytes) -> None:
        if self.out is not None:
            if self._sink is not None:  # the metrics up to the checkpoint are on disk before it
                self._sink.flush()
            if self._tb is not None:
                self._tb.flush()
            atomic_write_bytes(self.out / CHECKPOINT, lambda f: f.write(data))

    def _restore(self, run: Run, early: EarlyStopping | None) -> None:
        assert self.resume is not None
        state = load_checkpoint(self.resume)
        where = f"cannot resume {self.resume}"
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
            if self.asked and not self.change_length:
                raise CheckpointError(f"{where}: the run is planned for {state['total']} steps; to make it "
                                      f"{run.total}, resume with --change-length")
            if not self.asked:
                run.total = self.total = state["total"]
            else:
                self.echo(f"mrc: note: the run now ends at step {run.total} (it was planned for "
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

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> TrainResult:
        from mrc.runtime import world as worlds

        joined = not worlds.current().active and worlds.launched()
        if joined:
            d = self.program.distributed
            worlds.join(d.backend if d else "auto", d.timeout if d else worlds.DEFAULT_TIMEOUT_S,
                        self.device.type)
        self.world = worlds.current()
        if self.world.active:
            self._join_run()
        try:
            result = self._threads_and_run()
            # no rank ends (and exits) before rank 0 has written the run: a launcher that sees
            # one process end may end the others
            self.world.barrier()
            return result
        finally:
            if joined:
                worlds.leave()

    def _join_run(self) -> None:
        """A run of several processes: rank 0 alone writes the run directory and speaks."""
        placed = self.c.graph.placement
        if placed is None or placed.world != self.world.size:
            have = placed.world if placed is not None else 1
            raise CheckpointError(f"the schedule was compiled for {have} process{'es' if have > 1 else ''}, "
                                  f"but this run has {self.world.size} (compile it with world={self.world.size})")
        if not self.world.leader:
            self.out = None
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
        data = self.data
        dtype = next(model.parameters()).dtype
        eval_batch = settings.eval_batch or data.batch_size
        # the batch source and evaluation splits (mrc/data/stream.py): device tensors, or a
        # DataLoader for streamed data
        feed = data_feed(data, self.device, dtype, eval_batch)
        refused = needs_memory(self.c.graph, feed)
        if refused:
            feed.close()
            raise StreamError(refused)
        train_x, train_y, val_x, val_y, evals = feed.train_x, feed.train_y, feed.val_x, feed.val_y, feed.evals
        plan = lower(self.c.graph, self.c.bound, self.total, self.device, self.world)
        plan.attach(train_x, train_y, val_x, val_y)
        # what evaluations measure: the graph's loss, its task's metrics and the user's
        self.scoring = scoring = scoring_of(self.c.graph, self.program.metrics, self.device, dtype)
        plan.trace = self.trace
        run = Run(self, plan, self.total, batches=self.spe)
        early = EarlyStopping(self.program.early_stopping) if self.program.early_stopping else None
        if self.resume is not None:
            self._restore(run, early)
            if run.total != plan.ctx.total_steps:
                plan = self._relower(run)
        if self.world.active:
            self._broadcast_state(plan)
        self.echo(self.header(run))
        progress = Progress(self.progress, run.total, settings.log_every, self.echo, oversubscribed())
        if progress.busy:
            self.echo(f"mrc: note: {progress.busy}; steps will be slower than on a quiet machine")
        divergence = Divergence()
        run.sync = math.gcd(*(n for n in (settings.log_every, settings.eval_every, settings.checkpoint_every)
                              if n)) or 1
        on_eval: list[Callback] = [progress]
        if early is not None:
            on_eval.append(early)
        if self.observe is not None:
            on_eval.append(Observer(self.observe))
        checkpoints = Checkpointing(settings.checkpoint_every, lambda r: self._snapshot(r, early), self._write)
        callbacks: list[Callback] = [divergence, MetricsLog(settings.log_every, progress),
                                     Evaluation(settings.eval_every, eval_batch, feed.val_batches, on_eval,
                                                evals, scoring),
                                     checkpoints, StopRequests(self.interrupt, self.stop_at), progress]
        if self.out:
            run.sink = MetricsFile(self.out / METRICS, run.step if self.resume else None)
        self._sink = run.sink
        self._tb = self._tensorboard() if self.out else None
        if self._tb is not None:
            callbacks.append(self._tb)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for cb in callbacks:
            cb.on_start(run)
        plan.module.train()
        first_step = process_age()  # the start-up this process paid (summary.json)
        try:
            self._loop(run, plan, callbacks, feed.train)
        finally:
            feed.close()
            for cb in callbacks:
                cb.on_end(run)
            if run.sink is not None:  # a run that raised (user code) keeps its metrics so far
                run.sink.flush()
        wall = run.elapsed()
        if run.status != "diverged":
            divergence.check(run)  # losses not read back yet
        if run.status != "diverged":
            checkpoints.write(run)
        if run.status != "diverged":
            plan.finish()
        plan.synchronize()
        final = plan.final_model()
        if run.status == "stopped_early" and early and early.spec.restore_best and early.best_state is not None:
            model.load_state_dict(early.best_state)
            final = model
        elif plan.brains:
            model.load_state_dict(final.state_dict())
        with plan.evaluation_precision():  # the models are scored in the precision they train in
            summary = self._summary(final, feed, run, wall, early)
            summary["first_step_s"] = first_step
            if evals:
                ok = run.status != "diverged"
                summary["evals"] = {n: evaluate(final, x, y, eval_batch, scoring) if ok else self._none()
                                    for n, (x, y) in evals.items()}
            if plan.brains and run.status != "diverged":
                summary["brains"] = {}
                for n, m in plan.eval_models().items():
                    if n == "merged":
                        continue
                    tr = evaluate_batches(m, feed.train_eval_batches(), scoring)
                    va = evaluate_batches(m, feed.val_batches(), scoring)
                    summary["brains"][n] = {**prefixed(tr, "train_"), **prefixed(va)}
            if self.c.bound.modules is not None and run.status != "diverged" and feed.in_memory:
                assert train_x is not None and train_y is not None and val_x is not None and val_y is not None
                summary["modules"] = self._module_summary(final, val_x, val_y, feed.train_eval_x(), train_y,
                                                          eval_batch)
        if plan.ctx.scaler is not None:  # float16 loss scaling: where the scale ended, the steps skipped
            summary["loss_scale"] = plan.ctx.scaler.state_dict()
        if self.out:
            if run.status != "diverged":
                own = {k: v for k, v in model.state_dict().items() if not k.startswith(AUX + ".")}
                save_torch(own, self.out / FINAL)
                if self.c.bound.modules is not None:
                    save_torch({k[len(AUX) + 1:]: v for k, v in model.state_dict().items()
                                if k.startswith(AUX + ".")}, self.out / "aux.pt")
                for n, state in plan.brain_states().items():
                    save_torch(state, self.out / "brains" / f"{n}.pt")
            save_json(summary, self.out / SUMMARY)
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

    def _module_summary(self, final: nn.Module, vx: torch.Tensor, vy: torch.Tensor, tx: torch.Tensor,
                        ty: torch.Tensor, eval_batch: int) -> dict[str, Any]:
        """Each module's classifier F_k ∘ G_k on the training and validation data (the last
        module's is the model itself), with its table row."""
        from mrc.techniques.modules.evaluate import evaluate_modules

        out = {}
        graph = self.c.graph
        train = evaluate_modules(final, graph, tx, ty, eval_batch, self.scoring)
        val = evaluate_modules(final, graph, vx, vy, eval_batch, self.scoring)
        for name, info in graph.modules.items():
            tr, va = train[name], val[name]
            acc = {"train_acc": tr["acc"], "val_acc": va["acc"]} if "acc" in tr else {}
            out[name] = {**acc, "val_loss": va["loss"],
                         "params": info.params, "activation_bytes_estimate": info.bytes,
                         "residuals": info.residuals, "tau": info.tau}
        return out

    def _tensorboard(self) -> Callback | None:
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
                           graph_text=graph_text(self.c.graph), hparams=hparams_of(self.out))

    def _broadcast_state(self, plan: Plan) -> None:
        """Every rank starts from rank 0's parameters and buffers (as DDP does): the same seed
        gives the same ones, and this makes sure of it."""
        world = self.world
        for module in plan.checkpointed_modules():
            for t in [*module.parameters(), *module.buffers()]:
                world.broadcast(t.data)

    def _relower(self, run: Run) -> Plan:
        """A resume that changes the run's length: the schedule spans the new length."""
        state = run.plan.state_dict()
        plan = lower(self.c.graph, self.c.bound, run.total, self.device, self.world)
        plan.load_state_dict(state)
        plan.attach(*run.plan.ctx.replicas.data())
        plan.trace = self.trace
        run.plan = plan
        return plan

    def _loop(self, run: Run, plan: Plan, callbacks: list[Callback], source: BatchSource) -> None:
        """Stages × periods × steps. Today's schedules are one stage, its period repeated over
        the data (the Plan maps the global step onto the period). Between events (see
        mrc/runtime/callbacks.py) a step is the Plan's step and nothing else. The batches come
        from `source` (mrc/data/stream.py): indexed from device tensors, or a DataLoader."""
        step_fn = plan.step
        measured = self._measured_steps(plan, run)
        pending = run.pending
        interrupt = self.interrupt or Interrupt()
        stop_at = self.stop_at if self.stop_at is not None else run.total
        sync = run.sync
        world = self.world
        shares = SharedLosses(world, plan.env) if world.active else None
        # only the hooks a callback defines
        after_step = [cb.on_step for cb in callbacks if type(cb).on_step is not Callback.on_step]
        boundary = [cb.on_boundary for cb in callbacks if type(cb).on_boundary is not Callback.on_boundary]
        n = run.batches = self.spe
        while run.step < run.total and run.running:
            step, batch = run.step, run.batch
            last = min(run.total, stop_at)
            batches = source.epoch(run.epoch, batch)
            while batch < n and step < run.total:
                x, y = next(batches)
                if step in measured:
                    loss = self._measure(plan, step, x, y)
                else:
                    loss = step_fn(step, x, y)
                step += 1
                batch += 1
                if shares is not None:  # every rank's share, reduced at the boundary below
                    shares.add(step, run.epoch, loss)
                    if step % sync and batch < n and step < last and step != run.wake_at:
                        continue
                    loss = shares.reduce_into(pending, loss)
                    if world.agree(interrupt.requested):  # all ranks stop at the same step
                        interrupt.requested = True
                else:
                    if loss is not None:
                        pending.append((step, run.epoch, loss))
                    if step % sync and batch < n and step < last and step != run.wake_at and not interrupt.requested:
                        continue
                run.step, run.batch, run.loss = step, batch, loss
                run.end_of_epoch = batch >= n
                for hook in after_step:
                    hook(run)
                if run.end_of_epoch:
                    run.epoch += 1
                    run.batch = batch = 0
                for hook in boundary:
                    hook(run)
                if not run.running or run.end_of_epoch:
                    break  # a new epoch draws its own batch order
            else:
                run.step, run.batch = step, batch

    MEASURED = 64
    """At most this many steps of each stage's first period are measured for activation memory."""

    def _measured_steps(self, plan: Plan, run: Run) -> set[int]:
        """The steps whose activation memory is measured: the first period (up to MEASURED
        steps) of every stretch of the run that runs a stage, and of the run from where it
        (re)starts."""
        out: set[int] = set()
        starts = [(seg.start, plan.graph.stages[seg.stage].period) for seg in plan.segments]
        starts.append((run.step, max(s.period for s in plan.graph.stages)))
        for start, period in starts:
            if start >= run.step:
                out.update(range(start, min(start + min(period, self.MEASURED), run.total)))
        return out

    def _measure(self, plan: Plan, step: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """One step inside an ActivationMeter; the run's peak keeps the largest."""
        from mrc.runtime.memory import ActivationMeter

        meter = ActivationMeter(self.device)
        meter.exclude([x, y])
        for m in plan.checkpointed_modules():
            meter.exclude(list(m.buffers()))
        with meter:
            loss = meter.run(lambda: plan.step(step, x, y))
        got = meter.result()
        self._cuda_peak = max(self._cuda_peak, meter.cuda_peak_before)
        if self.activation is None or got.bytes > self.activation.bytes:
            self.activation = got
        return loss

    def _none(self) -> dict[str, Any]:
        """An evaluation that did not run (a diverged run): every measure None."""
        return dict.fromkeys(self.scoring.names)

    def _summary(self, module: nn.Module, feed: Feed, run: Run, wall: float,
                 early: EarlyStopping | None) -> dict[str, Any]:
        """The run's summary; its train metrics are over the whole training split as evaluation
        sees it (no random augmentation; streamed data through the DataLoader)."""
        ok = run.status != "diverged"
        train = evaluate_batches(module, feed.train_eval_batches(), self.scoring) if ok else self._none()
        val = evaluate_batches(module, feed.val_batches(), self.scoring) if ok else self._none()
        if self.device.type == "cuda":
            peak = max(self._cuda_peak, torch.cuda.max_memory_allocated()) / 2**20
            peak_kind = "cuda_allocated_mib"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            peak_kind = "process_rss_mib"
        out = {
            "spec": self.program.file, "status": run.status, "steps": run.step, "total_steps": run.total,
            "epochs": run.epoch + (run.batch / self.spe if self.spe else 0),
            **prefixed(train, "train_"), **prefixed(val),
            "wall_time_s": wall, "steps_per_s": run.step / wall if wall > 0 else None,
            "peak_memory_mib": peak, "peak_memory_kind": peak_kind, "device": str(self.device),
            "seed": self.program.train.seed,
            # the step of the checkpoint on disk, or None where the run wrote none (it stopped first)
            "last_checkpoint_step": run.last_good if self.out and (self.out / CHECKPOINT).is_file() else None,
            "precision": self.c.graph.precision,
        }
        if self.activation is not None:
            # the peak activation memory of a training step (mrc.runtime.memory): on CUDA the
            # allocator's peak above the step's start, on the CPU the bytes autograd saves
            out["activation_memory"] = {"bytes": self.activation.bytes, "mib": self.activation.mib,
                                        "kind": self.activation.kind}
        if early is not None and early.best is not None:
            out["best"] = {early.spec.metric: early.best, "step": early.best_step}
        placed = self.c.graph.placement
        if self.world.active and placed is not None:
            out["world"] = {"size": self.world.size, "mode": placed.mode, "backend": self.world.backend}
        return out


class SharedLosses:
    """The run's loss in a run of several processes: each rank's step loss weighted by its
    share (`Env.weight`: a data shard's fraction of the batch, the brains that stepped, 0 where
    a rank reports none), summed over the ranks in one collective per boundary — so every rank
    logs, checks for divergence and stops on the same numbers."""

    def __init__(self, world: Any, env: Any) -> None:
        self.world, self.env = world, env
        self._zero = torch.zeros((), dtype=torch.float64)
        self.steps: list[tuple[int, int]] = []
        self.values: list[torch.Tensor] = []
        self.weights: list[float] = []

    def add(self, step: int, epoch: int, loss: torch.Tensor | None) -> None:
        # the hot path keeps references only; the weighting is one vector op at the boundary
        w = self.env.weight if loss is not None else 0.0
        self.steps.append((step, epoch))
        self.values.append(loss.detach().reshape(()) if loss is not None and w else self._zero)
        self.weights.append(w)

    def reduce_into(self, pending: list[tuple[int, int, torch.Tensor]], last: torch.Tensor | None
                    ) -> torch.Tensor | None:
        """Append the reduced losses since the last boundary to `pending`; return the last one
        (None when no rank reported one)."""
        if not self.steps:
            return last
        device = self.world.device
        weights = torch.tensor(self.weights, dtype=torch.float64, device=device)
        values = torch.stack([v.to(device, torch.float64) for v in self.values]) * weights
        both = torch.stack([values, weights])
        self.world.all_reduce(both)
        both = both.cpu()
        out = None
        for (step, epoch), total, w in zip(self.steps, both[0], both[1], strict=True):
            if w > 0:
                out = total / w  # float64: a rank that reported none keeps the full precision
                pending.append((step, epoch, out))
            else:
                out = None
        self.steps.clear()
        self.values.clear()
        self.weights.clear()
        return out


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

