"""The training loop: periods of the Plan over the data, with evaluation, logging, checkpoints,
early stopping, Ctrl-C and divergence handling.

Determinism: data order is a pure function of (seed, epoch); model initialisation, dropout and any
other randomness draw from torch's generator, whose state is checkpointed. So on the CPU a run
stopped after N steps and resumed gives bit-identical parameters to an uninterrupted one.
"""

from __future__ import annotations

import copy
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mrc.api import Compiled
from mrc.lower.plan import Plan, lower
from mrc.runtime.checkpoint import (
    CHECKPOINT,
    FINAL,
    METRICS,
    SUMMARY,
    MetricsLog,
    load_checkpoint,
    read_metrics,
    save_json,
    save_torch,
)
from mrc.runtime.evaluation import evaluate


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


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    batch: int = 0
    best: float | None = None
    best_step: int = -1
    bad_evals: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    last_eval: dict[str, float] = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


class Trainer:
    """Runs a compiled spec. `run()` returns a TrainResult; see `mrc.api.train`."""

    def __init__(self, compiled: Compiled, out_dir: Path | None, *, steps: int | None = None,
                 epochs: int | None = None, device: str | None = None, resume: Path | None = None,
                 progress: bool = False, echo: Callable[[str], None] | None = None,
                 stop_at: int | None = None, trace: Any = None) -> None:
        self.c = compiled
        self.program = compiled.program
        settings = self.program.train
        self.out = out_dir
        self.resume = resume
        self.device = pick_device(device or settings.device)
        self.data = compiled.bound.data
        self.spe = self.data.steps_per_epoch()
        if steps is None and epochs is None:
            steps, epochs = settings.steps, settings.epochs
        self.total = steps if steps is not None else (epochs or 1) * self.spe
        self.echo = echo or (lambda s: print(s, file=sys.stderr))
        self.progress = progress
        self._interrupted = False
        self.stop_at = stop_at
        self.trace = trace

    # ---- helpers -------------------------------------------------------------------------

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._interrupted:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self._interrupted = True

    def _checkpoint(self, plan: Plan, st: _State) -> None:
        if self.out is None:
            return
        state = {
            "format": "mrc-checkpoint-1",
            "spec": self.program.file,
            "model": self.c.bound.model.state_dict(),
            "plan": plan.state_dict(),
            "step": st.step, "epoch": st.epoch, "batch": st.batch, "total": self.total,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "early": {"best": st.best, "best_step": st.best_step, "bad_evals": st.bad_evals,
                      "best_state": st.best_state, "last_eval": st.last_eval},
        }
        save_torch(state, self.out / CHECKPOINT)

    def _restore(self, plan: Plan, st: _State) -> None:
        assert self.resume is not None
        state = load_checkpoint(self.resume)
        self.c.bound.model.load_state_dict(state["model"])
        plan.load_state_dict(state["plan"])
        st.step, st.epoch, st.batch = state["step"], state["epoch"], state["batch"]
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        early = state["early"]
        st.best, st.best_step, st.bad_evals = early["best"], early["best_step"], early["bad_evals"]
        st.best_state, st.last_eval = early["best_state"], early["last_eval"]
        if state["total"] != self.total:
            self.echo(f"mrc: note: the run now ends at step {self.total} (it was planned for "
                      f"{state['total']}); the learning-rate schedule spans the new length")

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> TrainResult:
        settings = self.program.train
        model = self.c.bound.model.to(self.device)
        module = self.c.bound.graph_module.to(self.device)
        data = self.data
        dtype = next(model.parameters()).dtype
        train_x = data.train_x.to(self.device, dtype)
        train_y = data.train_y.to(self.device)
        val_x = data.val_x.to(self.device, dtype)
        val_y = data.val_y.to(self.device)
        brains = bool(self.c.graph.replicas)
        plan = lower(self.c.graph, self.c.bound, self.total, self.device)
        plan.attach(train_x, train_y, val_x, val_y)
        if self.trace is not None:
            plan.trace = self.trace
        st = _State()
        if self.resume is not None:
            self._restore(plan, st)
        log = MetricsLog(self.out / METRICS, st.step if self.resume else None) if self.out else None
        history: list[dict[str, Any]] = []

        def record(rec: dict[str, Any]) -> None:
            history.append(rec)
            if log:
                log.write(rec)

        eval_every = settings.eval_every
        ckpt_every = settings.checkpoint_every
        log_every = settings.log_every
        # Without a progress bar, print about 20 lines per run (on logged steps).
        plain_every = log_every * max(1, self.total // (20 * log_every))
        early = self.program.early_stopping
        if torch.cuda.is_available() and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if _main_thread() else None
        status, message = "completed", ""
        start = time.perf_counter()
        start_step = st.step
        bar = _Progress(self.total, st.step, enabled=self.progress)
        pending: list[tuple[int, int, torch.Tensor]] = []
        defer = self.device.type == "cuda"
        module.train()
        last_good = st.step
        try:
            while st.step < self.total and status == "completed":
                batches = data.batch_indices(st.epoch)
                while st.batch < len(batches) and st.step < self.total:
                    idx = batches[st.batch].to(self.device)
                    loss = plan.step(st.step, train_x[idx], train_y[idx])
                    st.step += 1
                    st.batch += 1
                    if loss is not None:
                        pending.append((st.step, st.epoch, loss))
                    end_of_epoch = st.batch >= len(batches)
                    # The divergence check reads the losses back from the device: every step on
                    # the CPU, and on a GPU only where the host waits anyway (logging, evaluation,
                    # checkpoints), so steps stay asynchronous.
                    must_check = not defer or st.step % log_every == 0 or end_of_epoch or \
                        st.step == self.total or self._interrupted or \
                        (ckpt_every and st.step % ckpt_every == 0) or \
                        (eval_every and st.step % eval_every == 0)
                    if must_check and pending:
                        bad = _first_nonfinite(pending)
                        pending.clear()
                        if bad is not None:
                            step_no, epoch_no, value = bad
                            status = "diverged"
                            message = (f"the loss became {value} at step {step_no} (epoch "
                                       f"{epoch_no + 1}); stopped")
                            break
                    if st.step % log_every == 0 or st.step == self.total:
                        rec = {"step": st.step, "epoch": st.epoch + st.batch / len(batches),
                               "loss": None if loss is None else loss.item(),
                               "lr": plan.learning_rates(st.step - 1),
                               "time": time.perf_counter() - start}
                        if brains:
                            rec["brains"] = {n: v.item() for n, v in plan.last_losses.items()}
                        record(rec)
                        bar.update(st.step, rec["loss"], st.last_eval)
                        if not bar.enabled and (st.step % plain_every == 0 or st.step == self.total):
                            self._log_line(rec, st.last_eval)
                    do_eval = (eval_every and st.step % eval_every == 0) or \
                              (not eval_every and end_of_epoch) or st.step == self.total
                    if do_eval:
                        extra: dict[str, Any] = {}
                        if brains:  # each brain, and the merged model as the run's metric
                            evs = {n: evaluate(m, val_x, val_y) for n, m in plan.eval_models().items()}
                            ev = evs.pop("merged")
                            extra["brains"] = {n: {"val_loss": e["loss"], "val_acc": e["acc"]}
                                               for n, e in evs.items()}
                        else:
                            with plan.full_weights():
                                ev = evaluate(module, val_x, val_y)
                        st.last_eval = {"val_loss": ev["loss"], "val_acc": ev["acc"]}
                        record({"step": st.step, "epoch": st.epoch + st.batch / len(batches),
                                **st.last_eval, **extra, "time": time.perf_counter() - start})
                        bar.update(st.step, None, st.last_eval)
                        if early and self._early_stop(early, st, model, plan):
                            status = "stopped_early"
                            message = (f"early stopping at step {st.step}: {early.metric} has not "
                                       f"improved for {early.patience} evaluations")
                    if end_of_epoch:
                        st.epoch += 1
                        st.batch = 0
                    if (ckpt_every and st.step % ckpt_every == 0) or (not ckpt_every and end_of_epoch):
                        self._checkpoint(plan, st)
                        last_good = st.step
                    if self._interrupted:
                        status = "interrupted"
                        message = f"interrupted at step {st.step}; checkpoint written"
                        break
                    if self.stop_at is not None and st.step >= self.stop_at:
                        status = "paused"
                        message = f"paused at step {st.step}; resume with --resume"
                        break
                    if status != "completed" or end_of_epoch:
                        break  # a new epoch draws its own batch order
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        wall = time.perf_counter() - start
        if status != "diverged":
            self._checkpoint(plan, st)
            last_good = st.step
            plan.finish()
        if status == "stopped_early" and early and early.restore_best and st.best_state is not None:
            model.load_state_dict(st.best_state)
        if brains:
            final = plan.final_model()
            model.load_state_dict(final.state_dict())
            module = final
        summary = self._summary(module, train_x, train_y, val_x, val_y, st, status, wall,
                                st.step - start_step, last_good)
        if brains and status != "diverged":
            summary["brains"] = {}
            for n, m in plan.eval_models().items():
                if n == "merged":
                    continue
                tr, va = evaluate(m, train_x, train_y), evaluate(m, val_x, val_y)
                summary["brains"][n] = {"train_loss": tr["loss"], "train_acc": tr["acc"],
                                        "val_loss": va["loss"], "val_acc": va["acc"]}
        if self.out:
            if status != "diverged":
                save_torch(model.state_dict(), self.out / FINAL)
                if brains:
                    for n, state in plan.brain_states().items():
                        save_torch(state, self.out / "brains" / f"{n}.pt")
            save_json(summary, self.out / SUMMARY)
        if log:
            log.close()
        metrics = read_metrics(self.out) if self.out else history
        if status == "diverged":
            where = f"; the last good checkpoint (step {last_good}) is in {self.out}" if self.out and \
                (self.out / CHECKPOINT).exists() else ""
            raise TrainingStopped(message + where, summary)
        if message:
            self.echo(f"mrc: {message}")
        return TrainResult(model, metrics, summary, self.out, status)

    def _early_stop(self, early: Any, st: _State, model: nn.Module, plan: Plan) -> bool:
        value = st.last_eval[early.metric]
        better = st.best is None or (
            value < st.best - early.min_delta if early.mode == "min" else value > st.best + early.min_delta)
        if better:
            st.best, st.best_step, st.bad_evals = value, st.step, 0
            if early.restore_best:
                with plan.full_weights():
                    st.best_state = copy.deepcopy(
                        {k: v.detach().cpu() for k, v in model.state_dict().items()})
            return False
        st.bad_evals += 1
        return st.bad_evals >= early.patience

    def _log_line(self, rec: dict[str, Any], ev: dict[str, float]) -> None:
        parts = [f"step {rec['step']}/{self.total}", f"epoch {rec['epoch']:.2f}"]
        if rec["loss"] is not None:
            parts.append(f"loss {rec['loss']:.4f}")
        if ev:
            parts.append(f"val_loss {ev['val_loss']:.4f} val_acc {ev['val_acc']:.4f}")
        self.echo("  ".join(parts))

    def _summary(self, module: nn.Module, tx: torch.Tensor, ty: torch.Tensor, vx: torch.Tensor,
                 vy: torch.Tensor, st: _State, status: str, wall: float, steps_run: int,
                 last_good: int) -> dict[str, Any]:
        ok = status != "diverged"
        train = evaluate(module, tx, ty) if ok else {"loss": None, "acc": None}
        val = evaluate(module, vx, vy) if ok else {"loss": None, "acc": None}
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
            peak_kind = "cuda_allocated_mib"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            peak_kind = "process_rss_mib"
        out = {
            "spec": self.program.file, "status": status, "steps": st.step, "total_steps": self.total,
            "epochs": st.epoch + (st.batch / self.spe if self.spe else 0),
            "train_loss": train["loss"], "train_acc": train["acc"],
            "val_loss": val["loss"], "val_acc": val["acc"],
            "wall_time_s": wall, "steps_per_s": steps_run / wall if wall > 0 else None,
            "peak_memory_mib": peak, "peak_memory_kind": peak_kind, "device": str(self.device),
            "seed": self.program.train.seed, "last_checkpoint_step": last_good,
        }
        if self.program.early_stopping and st.best is not None:
            out["best"] = {self.program.early_stopping.metric: st.best, "step": st.best_step}
        return out


def _first_nonfinite(pending: list[tuple[int, int, torch.Tensor]]) -> tuple[int, int, float] | None:
    """The first (step, epoch, loss) whose loss is NaN or infinite, with one device read."""
    values = torch.stack([loss for _, _, loss in pending]).float()
    ok = torch.isfinite(values)
    if bool(ok.all()):
        return None
    i = int((~ok).nonzero()[0])
    return pending[i][0], pending[i][1], float(values[i])


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class _Progress:
    """A rich progress bar on a terminal; nothing otherwise (plain log lines are printed)."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 transient=False)
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=done, info="")
            self._loss: float | None = None

    def update(self, step: int, loss: float | None, ev: dict[str, float]) -> None:
        if not self._bar:
            return
        if loss is not None:
            self._loss = loss
        info = f"loss {self._loss:.4f}" if self._loss is not None else ""
        if ev:
            info += f"  val_acc {ev['val_acc']:.3f}"
        self._bar.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self._bar:
            self._bar.stop()
