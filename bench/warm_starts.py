"""MGRIT's initial guesses across shuffled batches: serial training against one-shot MGRIT with
each `warm_start` (previous, shifted, coarse, cache, off) on issue 24's setting (bench/mgrit.py's
ACCURACY: level sets `peaks`, ode_resnet width 8, depth 64, h 0.05, adam 0.01, cosine; one-shot
3 levels / cf 4 / FCF, 2 forward and 1 backward iterations).

Per run: the final validation accuracy and, over every training step (metrics logged each step),
the mean residual of the forward solve's first and last iteration and of the adjoint's iteration
(each measured after the iteration's relaxation, before its coarse correction: solver.py), over
the whole run and over its last epoch. Prints one JSON line per run, then a table of the means
over the seeds, and a last JSON line of every run. Accuracy does not depend on the machine's load.

    python bench/warm_starts.py --epochs 20 --seeds 3 --variants serial,previous,shifted,coarse,cache,off
    python bench/warm_starts.py --epochs 100 --variants serial,shifted,cache --forward-iters 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from mgrit import ACCURACY, MGRIT

from mrc import api
from mrc.runtime.trainer import Trainer

VARIANTS = ("serial", "previous", "shifted", "coarse", "cache", "off")


def run(tmp: Path, variant: str, seed: int, epochs: int, forward_iters: int = 2) -> dict[str, Any]:
    """One training run; its accuracy and mean residuals."""
    mgrit = MGRIT.replace("forward_iters = 2", f"forward_iters = {forward_iters}")
    line = "" if variant == "serial" else mgrit.replace(" }", f"; warm_start = {variant} }}")
    text = ACCURACY.format(epochs=epochs, seed=seed, device="cpu", threads=1, mgrit=line)
    text = text.replace("log_every=1000000", "log_every=1")
    spec = tmp / f"{variant}_{seed}.mrs"
    spec.write_text(text)
    out = tmp / f"run_{variant}_{seed}"
    result = Trainer(api.compile_spec(spec, training=True), out).run()
    got: dict[str, Any] = {"variant": variant, "seed": seed, "epochs": epochs,
                           "val_acc": float(result.summary["val_acc"])}
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    solves = [r["mgrit"]["stack"] for r in records if "mgrit" in r]
    if solves:
        last_epoch = [r["mgrit"]["stack"] for r in records if "mgrit" in r and r["epoch"] > epochs - 1]
        for name, part in (("all", solves), ("last", last_epoch)):
            got[f"fwd_first_{name}"] = statistics.fmean(s["forward"][0] for s in part)
            got[f"fwd_last_{name}"] = statistics.fmean(s["forward"][-1] for s in part)
            got[f"adj_{name}"] = statistics.fmean(s["adjoint"][-1] for s in part)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 … n−1")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--forward-iters", type=int, default=2, help="the forward solve's iterations (issue 24: 2)")
    args = ap.parse_args()
    variants = args.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for variant in variants:
                rows.append(run(Path(tmp), variant, seed, args.epochs, args.forward_iters))
                print(json.dumps(rows[-1]), flush=True)
    keys = ("val_acc", "fwd_first_all", "fwd_last_all", "adj_all", "fwd_first_last", "fwd_last_last", "adj_last")
    print(f"{'variant':10s} " + " ".join(f"{k:>15s}" for k in keys))
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        cells = [f"{statistics.fmean(r[k] for r in mine):15.4f}" if k in mine[0] else f"{'—':>15s}" for k in keys]
        print(f"{variant:10s} " + " ".join(cells))
    print(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(main())
