"""The end of a run: its summary (summary.json) and the files it leaves (final.pt, the
techniques' artifacts).

The summary holds the run's status and length, the final model's measures on the whole training
split (as evaluation sees it) and on the validation split, wall time and speed, peak memory, the
activation memory of a step, the best early-stopping value, how several processes shared the
work, the final model on each named evaluation set, each further model a technique evaluates
(by group: the Plan's eval-model hooks), the techniques' own entries (summary hooks) and the
loss scale of float16 training. A run that diverged is scored nowhere: its measures are None.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mrc.lower.plan import Finished, Plan
from mrc.runtime.callbacks import EarlyStopping, Run, prefixed
from mrc.runtime.checkpoint import CHECKPOINT, FINAL, SUMMARY, save_json, save_torch
from mrc.runtime.evaluation import evaluate, evaluate_batches


def summarize(trainer: Any, run: Run, plan: Plan, final: nn.Module, feed: Any, wall: float,
              early: EarlyStopping | None, *, activation: Any, cuda_peak: int) -> dict[str, Any]:
    """The run's summary (see the module docstring); `final` is the model the run produces,
    `feed` its data (mrc.data.stream.Feed), `activation` and `cuda_peak` what the loop measured.
    Evaluates in the precision the models train in."""
    scoring, batch = trainer.scoring, trainer.eval_batch
    ok = run.status != "diverged"
    none = dict.fromkeys(scoring.names)  # an evaluation that did not run
    with plan.evaluation_precision():
        train = evaluate_batches(final, feed.train_eval_batches(), scoring) if ok else none
        val = evaluate_batches(final, feed.val_batches(), scoring) if ok else none
        out = {
            "spec": trainer.program.file, "status": run.status, "steps": run.step, "total_steps": run.total,
            "epochs": run.epoch + (run.batch / trainer.spe if trainer.spe else 0),
            **prefixed(train, "train_"), **prefixed(val),
            "wall_time_s": wall, "steps_per_s": run.step / wall if wall > 0 else None,
            **peak_memory(trainer.device, cuda_peak), "device": str(trainer.device),
            "seed": trainer.program.train.seed,
            # the step of the checkpoint on disk, or None where the run wrote none (it stopped first)
            "last_checkpoint_step": run.last_good if trainer.out and (trainer.out / CHECKPOINT).is_file() else None,
            "precision": trainer.c.graph.precision,
        }
        if activation is not None:
            # the peak activation memory of a training step (mrc.runtime.memory): on CUDA the
            # allocator's peak above the step's start, on the CPU the bytes autograd saves
            out["activation_memory"] = {"bytes": activation.bytes, "mib": activation.mib, "kind": activation.kind}
        if early is not None and early.best is not None:
            out["best"] = {early.spec.metric: early.best, "step": early.best_step}
        processes = plan.processes()
        if processes is not None:
            out["world"] = processes
        if feed.evals:
            out["evals"] = {n: evaluate(final, x, y, batch, scoring) if ok else none
                            for n, (x, y) in feed.evals.items()}
        if ok:
            for group, models in plan.eval_models().items():
                out[group] = {n: {**prefixed(evaluate_batches(m, feed.train_eval_batches(), scoring), "train_"),
                                  **prefixed(evaluate_batches(m, feed.val_batches(), scoring))}
                              for n, m in models.items()}
            out.update(plan.summaries(Finished(final, batch, scoring, feed)))
    if plan.ctx.scaler is not None:  # float16 loss scaling: where the scale ended, the steps skipped
        out["loss_scale"] = plan.ctx.scaler.state_dict()
    return out


def peak_memory(device: torch.device, cuda_peak: int) -> dict[str, Any]:
    """The run's peak memory: the CUDA allocator's (MiB), or the process's resident set on the CPU."""
    if device.type == "cuda":
        return {"peak_memory_mib": max(cuda_peak, torch.cuda.max_memory_allocated()) / 2**20,
                "peak_memory_kind": "cuda_allocated_mib"}
    return {"peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_memory_kind": "process_rss_mib"}


def write_results(out: Path, model: nn.Module, plan: Plan, summary: dict[str, Any], ok: bool) -> None:
    """The run's files: `final.pt` (the model's own state: the techniques' artifact hooks take
    out what is theirs, such as auxiliary heads, and give the files they write) and the
    artifacts, unless the run diverged; and `summary.json`."""
    if ok:
        state = dict(model.state_dict())
        artifacts = plan.artifacts(state)
        save_torch(state, out / FINAL)
        for path, saved in artifacts.items():
            save_torch(saved, out / path)
    save_json(summary, out / SUMMARY)
