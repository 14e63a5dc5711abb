"""The training loop's callbacks: everything a run does besides stepping the Plan.

The loop (mrc/runtime/loop.py) steps the Plan over the data. Callbacks are not called on every
step — a call per callback and step is most of a tiny model's overhead — but at events: every
multiple of `run.sync` (the gcd of the logging interval and the graph's cadences), each epoch's
end, the last step, `stop_at`, a requested interrupt, and any step a callback asked for with
`run.wake_at`. At an event the loop calls each callback's `on_step(run)` — with
`run.end_of_epoch` telling whether the epoch just ended — then rolls the epoch over and calls
`on_boundary(run)`; evaluations reach every callback through `on_eval(run, metrics)`; `on_end(run)`
runs once when the loop is over, however it ended. The losses of the steps since the last event
are in `run.pending` (step, epoch, loss).

A callback stops the run with `run.stop(status, message)`. Built-ins, in the order they run:
  Divergence     — reads the step losses back at the points the host waits anyway; a NaN or
                   infinite loss stops the run (`diverged`) naming the step;
  MetricsLog     — one record per `log_every` steps (loss, learning rate per partition, and
                   the techniques' entries: the Plan's metrics hooks);
  Evaluation     — the graph's `eval` op: every N steps (else each epoch end) and at the end:
                   the final model, and the models the techniques add (the Plan's eval-model
                   hooks, by group); `metrics["val_*"]` is the run's metric (the final model's),
                   and `metrics["evals"][NAME]` the loss and accuracy on each `eval` set;
  EarlyStopping  — on the run's metric;
  Observer       — the hook for callers (`mrc.api.train(observe=…)`): called with the step and
                   the validation metrics of each evaluation; returning True stops the run
                   (`stopped`; the sweep's pruning uses it);
  Checkpointing  — the graph's `checkpoint` op: every N steps (else each epoch end), kept once the next
                   step's loss at its parameters is finite (so a diverging run keeps a good one);
  StopRequests   — an interrupt the caller requested (the CLI's Ctrl-C handler) and `stop_at`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from mrc.losses import CLASSIFICATION, Scoring


@dataclass
class Interrupt:
    """Set `requested` (e.g. from a signal handler) and the run stops after its current step,
    with a checkpoint (`interrupted`). The library installs no handler: the CLI does."""

    requested: bool = False


@dataclass
class Run:
    """What the loop shares with its callbacks."""

    trainer: Any
    plan: Any
    total: int
    step: int = 0
    epoch: int = 0
    batch: int = 0
    batches: int = 1
    loss: torch.Tensor | None = None
    end_of_epoch: bool = False
    status: str = "completed"
    message: str = ""
    start: float = field(default_factory=time.perf_counter)
    last_eval: dict[str, float] = field(default_factory=dict)
    last_good: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    sink: Any = None  # the metrics file (MetricsLog) or None
    listeners: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)  # told of each record
    sync: int = 1
    wake_at: int = -1
    pending: list[tuple[int, int, torch.Tensor]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.status == "completed"

    def stop(self, status: str, message: str) -> None:
        if self.running:
            self.status, self.message = status, message

    def record(self, rec: dict[str, Any]) -> None:
        """Keep a metrics record, write it to the metrics file and tell each listener (the
        TensorBoard writer), so every view of the run sees the same records."""
        self.records.append(rec)
        if self.sink is not None:
            self.sink.write(rec)
        for listener in self.listeners:
            listener(rec)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def position(self) -> float:
        return self.epoch + self.batch / max(1, self.batches)


class Callback:
    """Hooks of the training loop (all optional)."""

    def on_start(self, run: Run) -> None:
        """Before the first step (after a resume's restore)."""

    def on_step(self, run: Run) -> None:
        """After each step, before the epoch rolls over."""

    def on_eval(self, run: Run, metrics: dict[str, Any]) -> None:
        """After each evaluation."""

    def on_boundary(self, run: Run) -> None:
        """After each step, once the epoch has rolled over."""

    def on_end(self, run: Run) -> None:
        """Once, when the loop is over (however it ended)."""


def every(step: int, n: int) -> bool:
    return bool(n) and step % n == 0


class Divergence(Callback):
    """Stop on a non-finite loss. Losses stay on the device and are read back, all at once, only
    at events (where the host waits anyway: logging, evaluation, checkpoints, epoch ends), so
    steps stay asynchronous on a GPU and cost nothing extra on the CPU."""

    def on_step(self, run: Run) -> None:
        self.check(run)

    def check(self, run: Run) -> None:
        pending = run.pending
        if not pending:
            return
        if pending[0][2].device.type == "cpu":  # nothing to wait for: read each (0.2 µs)
            for step, epoch, loss in pending:
                value = loss.item()
                if not math.isfinite(value):
                    pending.clear()
                    run.stop("diverged", f"the loss became {value} at step {step} (epoch {epoch + 1}); stopped")
                    return
            pending.clear()
            return
        values = torch.stack([loss for _, _, loss in pending]).float()  # one read from the device
        ok = torch.isfinite(values)
        if bool(ok.all()):
            pending.clear()
            return
        i = int((~ok).nonzero()[0])
        step, epoch, _ = pending[i]
        pending.clear()
        run.stop("diverged", f"the loss became {float(values[i])} at step {step} (epoch {epoch + 1}); stopped")


class MetricsLog(Callback):
    """A record every `log_every` steps and at the last: loss, each partition's (each replica's
    partition's) learning rate as it ran, and the techniques' entries (the Plan's metrics hooks)."""

    def __init__(self, log_every: int, progress: Any) -> None:
        self.log_every = log_every
        self.progress = progress

    def on_step(self, run: Run) -> None:
        if (run.step % self.log_every and run.step < run.total) or run.status != "completed":
            return
        rec: dict[str, Any] = {"step": run.step, "epoch": run.position(),
                               "loss": None if run.loss is None else run.loss.item(),
                               "lr": run.plan.learning_rates(run.step - 1), "time": run.elapsed()}
        rec.update(run.plan.technique_metrics())
        run.record(rec)
        for warning in run.plan.drain_warnings():
            self.progress.echo(f"mrc: warning: {warning}")
        self.progress.logged(run, rec)


def metric_value(metrics: dict[str, Any], name: str) -> float:
    """A metric by the name a spec gives it: `val_loss`, `val_acc`, `val_NAME` or `SET.loss` /
    `SET.acc` / `SET.NAME`."""
    if "." in name:
        split, _, measure = name.partition(".")
        return metrics["evals"][split][measure]
    return metrics[name]


def prefixed(ev: dict[str, Any], prefix: str = "val_") -> dict[str, Any]:
    """An evaluation's measures named for their split: {"loss": …} → {"val_loss": …}."""
    return {f"{prefix}{k}": v for k, v in ev.items()}


class Evaluation(Callback):
    """Evaluate every `eval_every` steps (or at each epoch end) and at the last step, on the
    validation split and on each named evaluation set (`evals`), in batches of `batch`, measuring
    what `scoring` says (the run's loss, its task's metrics and the user's); tell every callback
    (`on_eval`). `data` is the validation split: its (inputs, labels) tensors, or a function
    giving a fresh iterable of its batches (a streamed split's DataLoader)."""

    def __init__(self, eval_every: int, batch: int,
                 data: tuple[torch.Tensor, torch.Tensor] | Callable[[], Iterable[Any]],
                 callbacks: list[Callback],
                 evals: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 scoring: Scoring = CLASSIFICATION) -> None:
        from mrc.runtime.evaluation import slices

        self.eval_every, self.batch = eval_every, batch
        if callable(data):
            self.val_batches = data
        else:
            val_x, val_y = data
            self.val_batches = lambda: slices(val_x, val_y, batch)
        self.callbacks = callbacks
        self.evals = dict(evals or {})
        self.scoring = scoring

    def on_step(self, run: Run) -> None:
        due = run.step % self.eval_every == 0 if self.eval_every else run.end_of_epoch
        if not (due or run.step >= run.total) or run.status != "completed":
            return
        with run.plan.evaluation_precision():  # the model is scored in the precision it trains in
            metrics = self.evaluate(run.plan)
        run.last_eval = {k: v for k, v in metrics.items() if k.startswith("val_")}
        for name, ev in metrics.get("evals", {}).items():
            run.last_eval.update({f"{name}.{k}": v for k, v in ev.items()})
        run.record({"step": run.step, "epoch": run.position(), **metrics, "time": run.elapsed()})
        for cb in self.callbacks:
            cb.on_eval(run, metrics)

    def evaluate(self, plan: Any) -> dict[str, Any]:
        """The final model's measures on the validation split, each further model's (by group,
        as the techniques' hooks give them), then the final model's on each named set."""
        from mrc.runtime.evaluation import evaluate_batches

        plan.synchronize()  # a run of several processes: this rank's copy made whole first
        with plan.full_weights():
            model = plan.final_model()
            out: dict[str, Any] = prefixed(evaluate_batches(model, self.val_batches(), self.scoring))
            for group, models in plan.eval_models().items():
                out[group] = {n: prefixed(evaluate_batches(m, self.val_batches(), self.scoring))
                              for n, m in models.items()}
            out.update(self.named(model))
        return out

    def named(self, model: Any) -> dict[str, Any]:
        """`{"evals": {NAME: {"loss", "acc", …}}}` of `model` on each named set ({} without any)."""
        from mrc.runtime.evaluation import evaluate

        if not self.evals:
            return {}
        return {"evals": {n: evaluate(model, x, y, self.batch, self.scoring) for n, (x, y) in self.evals.items()}}


class EarlyStopping(Callback):
    """Stop when the run's metric has not improved by `min_delta` for `patience` evaluations;
    with `restore_best`, keep the best weights (the final model's)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.best: float | None = None
        self.best_step = -1
        self.bad = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_eval(self, run: Run, metrics: dict[str, Any]) -> None:
        spec = self.spec
        value = metric_value(metrics, spec.metric)
        better = self.best is None or (value < self.best - spec.min_delta if spec.mode == "min"
                                       else value > self.best + spec.min_delta)
        if better:
            self.best, self.best_step, self.bad = value, run.step, 0
            if spec.restore_best:
                with run.plan.full_weights():
                    model = run.plan.final_model()
                    self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            return
        self.bad += 1
        if self.bad >= spec.patience:
            run.stop("stopped_early", f"early stopping at step {run.step}: {spec.metric} has not improved for "
                                      f"{spec.patience} evaluations")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.bad = state["best"], state["best_step"], state["bad_evals"]
        self.best_state = state["best_state"]


class Observer(Callback):
    """The caller's hook: `observe(step, metrics)` after every evaluation; True stops the run."""

    def __init__(self, observe: Callable[[int, dict[str, Any]], bool | None]) -> None:
        self.observe = observe

    def on_eval(self, run: Run, metrics: dict[str, Any]) -> None:
        if self.observe(run.step, dict(metrics)):
            run.stop("stopped", f"stopped by the caller at step {run.step}")


class Checkpointing(Callback):
    """A checkpoint every `checkpoint_every` steps (or at each epoch end), kept only once it is
    known to be good: its parameters finite, and the loss of the next step — taken at exactly
    those parameters — finite too. So the checkpoint due at step s is written after step s+1's
    loss is read; a run that diverges keeps the last checkpoint that was still trainable. The
    final checkpoint (end, interrupt, pause) is written at once."""

    def __init__(self, checkpoint_every: int, snapshot: Callable[[Run], bytes],
                 write_bytes: Callable[[bytes], None]) -> None:
        self.every = checkpoint_every
        self.snapshot = snapshot
        self.write_bytes = write_bytes
        self.pending: tuple[int, bytes] | None = None

    def on_step(self, run: Run) -> None:
        if self.pending is None or run.step != self.pending[0] + 1:
            return
        step, data = self.pending
        self.pending = None
        if run.loss is not None and not bool(torch.isfinite(run.loss).all()):
            run.stop("diverged", f"the loss became {float(run.loss)} at step {run.step} (epoch {run.epoch + 1}); "
                                 "stopped")
            return
        self.write_bytes(data)
        run.last_good = step

    def on_boundary(self, run: Run) -> None:
        due = run.step % self.every == 0 if self.every else run.batch == 0
        if due and run.status == "completed" and run.step < run.total and finite_parameters(run.plan):
            self.pending = (run.step, self.snapshot(run))
            run.wake_at = run.step + 1  # written once the next step's loss is known

    def write(self, run: Run) -> bool:
        """Write the checkpoint of the current step now, if its parameters are finite."""
        self.pending = None
        if not finite_parameters(run.plan):
            run.stop("diverged", f"the parameters became non-finite by step {run.step}; stopped")
            return False
        self.write_bytes(self.snapshot(run))
        run.last_good = run.step
        return True


def finite_parameters(plan: Any) -> bool:
    with torch.no_grad():
        tensors = [p for m in plan.checkpointed_models() for p in m.parameters() if p.is_floating_point()]
        if not tensors:
            return True
        return bool(torch.stack([torch.isfinite(p).all() for p in tensors]).all())


class StopRequests(Callback):
    """The caller's interrupt (Ctrl-C through the CLI) and `stop_at` (pause for a resume)."""

    def __init__(self, interrupt: Interrupt | None, stop_at: int | None) -> None:
        self.interrupt = interrupt or Interrupt()
        self.stop_at = stop_at if stop_at is not None else math.inf

    def on_boundary(self, run: Run) -> None:
        if self.interrupt.requested:
            run.stop("interrupted", f"interrupted at step {run.step}; checkpoint written")
        elif run.step >= self.stop_at:
            run.stop("paused", f"paused at step {run.step}; resume with --resume")


class Progress(Callback):
    """A rich progress bar on a terminal; otherwise about twenty plain log lines per run."""

    def __init__(self, enabled: bool, total: int, log_every: int, echo: Callable[[str], None],
                 busy: str = "") -> None:
        self.enabled = enabled
        self.busy = busy  # the machine was oversubscribed when the run started
        self.total = total
        self.plain_every = log_every * max(1, total // (20 * max(1, log_every)))
        self.echo = echo
        self._bar: Any = None
        self._loss: float | None = None
        self._pending: dict[str, Any] | None = None

    def on_start(self, run: Run) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                             TextColumn("{task.fields[info]}"), transient=False)
        self._bar.start()
        self._task = self._bar.add_task("train", total=self.total, completed=run.step, info="")

    def logged(self, run: Run, rec: dict[str, Any]) -> None:
        if rec["loss"] is not None:
            self._loss = rec["loss"]
        if self._bar is not None:
            self._update(run)
        elif every(run.step, self.plain_every) or run.step >= self.total:
            # printed in on_step, after this step's evaluation (Evaluation runs after MetricsLog),
            # so the line shows the validation metrics of this very step when it has them
            self._pending = rec

    def on_step(self, run: Run) -> None:
        if self._pending is not None:
            self._print(run, self._pending)
            self._pending = None

    def _print(self, run: Run, rec: dict[str, Any]) -> None:
        parts = [f"step {rec['step']}/{self.total}", f"epoch {rec['epoch']:.2f}"]
        if rec["loss"] is not None:
            parts.append(f"loss {rec['loss']:.4f}")
        if run.last_eval:
            parts.extend(f"{k} {v:.4f}" for k, v in run.last_eval.items() if "." not in k)
            parts.extend(f"{k} {v:.4f}" for k, v in run.last_eval.items() if "." in k)
        extra = run.plan.technique_progress()
        if extra:
            parts.append(extra)
        if self.busy:
            parts.append("(machine busy)")
        self.echo("  ".join(parts))

    def on_eval(self, run: Run, metrics: dict[str, Any]) -> None:
        if self._bar is not None:
            self._update(run)

    def _update(self, run: Run) -> None:
        info = f"loss {self._loss:.4f}" if self._loss is not None else ""
        if run.last_eval and not math.isnan(run.last_eval.get("val_acc", math.nan)):
            info += f"  val_acc {run.last_eval['val_acc']:.3f}"
        elif run.last_eval and "val_acc" not in run.last_eval:  # a loss without accuracy
            info += f"  val_loss {run.last_eval['val_loss']:.4f}"
        info += "".join(f"  {k} {v:.3f}" for k, v in run.last_eval.items() if k.endswith(".acc"))
        extra = run.plan.technique_progress()
        if extra:
            info += f"  {extra}"
        if self.busy:
            info += "  [machine busy]"
        self._bar.update(self._task, completed=run.step, info=info)

    def on_end(self, run: Run) -> None:
        if self._pending is not None:
            self._print(run, self._pending)
            self._pending = None
        if self._bar is not None:
            self._bar.stop()
