"""`mrc train`: compile, run, report; every failure is one clear line and an exit code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mrc.diagnostics import CompileError, render_all


def run_train(args: argparse.Namespace) -> int:
    from mrc.api import train
    from mrc.runtime.checkpoint import CheckpointError
    from mrc.runtime.trainer import TrainingStopped

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.device is not None:  # the compiler picks kernels for the device
        overrides.append(f"train.device={args.device}")
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        result = train(args.spec, out=args.out, steps=args.steps, epochs=args.epochs,
                       device=args.device, resume=args.resume, overrides=overrides,
                       progress=progress)
    except CompileError as err:
        print(render_all(err.diagnostics), file=sys.stderr)
        return 2
    except CheckpointError as err:
        print(f"mrc train: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"mrc train: error: {err.message}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"mrc train: error: {first}", file=sys.stderr)
        return 1
    s = result.summary
    val = f"val_acc {s['val_acc']:.4f}  val_loss {s['val_loss']:.4f}" if s.get("val_acc") is not None else ""
    print(f"mrc: {s['status']}: {s['steps']} steps in {s['wall_time_s']:.1f} s "
          f"({s['steps_per_s']:.1f} steps/s)  train_acc {s['train_acc']:.4f}  {val}"
          + (f"\nmrc: wrote {Path(result.out_dir)}/{{final.pt,metrics.jsonl,summary.json,checkpoint.pt}}"
             if result.out_dir else ""))
    return 130 if result.status == "interrupted" else 0
