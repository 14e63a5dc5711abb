"""The training loop: stages × periods × steps of the Plan over the data.

The loop only draws batches, steps the Plan and rolls epochs over; everything else a run does —
evaluation, logging, checkpoints, early stopping, divergence, progress, an observer hook and stop
requests — is a callback (mrc/runtime/callbacks.py), called at events, not at every step. It also
measures the activation memory of the first period of every stretch of the run that runs a
stage (mrc/runtime/memory.py). In a run of several processes each rank's step loss is weighted by
its share and reduced once per event (`SharedLosses`), so every rank logs and stops alike.
"""

from __future__ import annotations

from typing import Any

import torch

from mrc.data.stream import BatchSource, StreamError
from mrc.lower.plan import Plan
from mrc.runtime.callbacks import Callback, Interrupt, Run


class Loop:
    """Runs a Plan over a batch source with callbacks (see the module docstring). After `run`,
    `activation` is the largest activation memory a measured step took (None: none measured)
    and `cuda_peak` the CUDA allocator's peak before a measured step."""

    MEASURED = 64
    """At most this many steps of each stage's first period are measured for activation memory."""

    def __init__(self, plan: Plan, device: torch.device, world: Any, interrupt: Interrupt | None,
                 stop_at: int | None) -> None:
        self.plan = plan
        self.device = device
        self.world = world
        self.interrupt = interrupt or Interrupt()
        self.stop_at = stop_at
        self.activation: Any = None  # mrc.runtime.memory.StepMemory of the measured steps
        self.cuda_peak = 0

    def run(self, run: Run, callbacks: list[Callback], source: BatchSource) -> None:
        """Stages × periods × steps. The Plan maps the global step onto its stage's period.
        Between events (see mrc/runtime/callbacks.py) a step is the Plan's step and nothing
        else. The batches come from `source` (mrc/data/stream.py): indexed from device tensors,
        or a DataLoader. Where a lowering reads each batch's training examples (`Hooks.examples`)
        the loop puts them on the Plan's `Env` before each step."""
        plan = self.plan
        wants = plan.hooks.examples
        if wants and source.examples(run.epoch) is None:
            raise StreamError(f"{wants}, but the batches of a user's DataLoader do not say which training "
                              "examples they hold: give the data as arrays or a Dataset (mrc then draws the batches)")
        step_fn = plan.step
        measured = self.measured_steps(run)
        pending = run.pending
        interrupt = self.interrupt
        stop_at = self.stop_at if self.stop_at is not None else run.total
        sync = run.sync
        world = self.world
        shares = SharedLosses(world, plan.env) if world.active else None
        # only the hooks a callback defines
        after_step = [cb.on_step for cb in callbacks if type(cb).on_step is not Callback.on_step]
        boundary = [cb.on_boundary for cb in callbacks if type(cb).on_boundary is not Callback.on_boundary]
        n = run.batches
        while run.step < run.total and run.running:
            step, batch = run.step, run.batch
            last = min(run.total, stop_at)
            batches = source.epoch(run.epoch, batch)
            examples = source.examples(run.epoch) if wants else None
            while batch < n and step < run.total:
                x, y = next(batches)
                if examples is not None:
                    plan.env.examples = examples[batch]
                if step in measured:
                    loss = self.measure(step, x, y)
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

    def measured_steps(self, run: Run) -> set[int]:
        """The steps whose activation memory is measured: the first period (up to MEASURED
        steps) of every stretch of the run that runs a stage, and of the run from where it
        (re)starts."""
        plan = self.plan
        out: set[int] = set()
        starts = [(seg.start, plan.graph.stages[seg.stage].period) for seg in plan.segments]
        starts.append((run.step, max(s.period for s in plan.graph.stages)))
        for start, period in starts:
            if start >= run.step:
                out.update(range(start, min(start + min(period, self.MEASURED), run.total)))
        return out

    def measure(self, step: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """One step inside an ActivationMeter; the run's peak keeps the largest."""
        from mrc.runtime.memory import ActivationMeter

        plan = self.plan
        meter = ActivationMeter(self.device)
        meter.exclude([x, y])
        for m in plan.checkpointed_models():
            meter.exclude(list(m.buffers()))
        with meter:
            loss = meter.run(lambda: plan.step(step, x, y))
        got = meter.result()
        self.cuda_peak = max(self.cuda_peak, meter.cuda_peak_before)
        if self.activation is None or got.bytes > self.activation.bytes:
            self.activation = got
        return loss


class SharedLosses:
    """The run's loss in a run of several processes: each rank's step loss weighted by its
    share (`Env.weight`: a data shard's fraction of the batch, the replicas that stepped, 0
    where a rank reports none), summed over the ranks in one collective per boundary — so every
    rank logs, checks for divergence and stops on the same numbers."""

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
