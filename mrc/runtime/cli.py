"""`mrc train`: compile, run, report; every failure is one clear line and an exit code."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from mrc.diagnostics import CompileError, render_all


def out_dir_of(args: argparse.Namespace) -> Path | None:
    """The run directory `mrc train` will write: `--out`, else `--resume`, else
    `runs/<spec stem>` (as `mrc.api.train` picks it); None while the spec is not a file, so the
    compiler reports that first."""
    if args.out is not None:
        return Path(args.out)
    if args.resume is not None:
        return Path(args.resume)
    spec = Path(args.spec)
    return Path("runs") / spec.stem if spec.is_file() else None


def run_train(args: argparse.Namespace) -> int:
    from mrc.api import train
    from mrc.runtime.checkpoint import CheckpointError, prepare_out_dir
    from mrc.runtime.trainer import TrainingStopped

    out_dir = out_dir_of(args)
    fresh = [p for p in (out_dir, *out_dir.parents) if not os.path.exists(p)] if out_dir else []
    try:  # before compiling: a bad directory costs nothing and says so in one line
        if args.resume is not None and not Path(args.resume).is_dir():
            raise CheckpointError(f"cannot resume: {args.resume} is not a directory")
        if out_dir is not None:
            prepare_out_dir(out_dir)
    except CheckpointError as err:
        print(f"mrc train: {err}", file=sys.stderr)
        return 2
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
        for made in fresh:  # leave no empty run directory behind (innermost first)
            with contextlib.suppress(OSError):
                made.rmdir()
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
