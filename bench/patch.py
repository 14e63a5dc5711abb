"""The seed's patch experiment at digits scale: small vs large learning rate vs multirate.

seeds/multirate-training.md ("Latent multiple time scales in deep learning"): a WideResNet-16 on
patch-augmented CIFAR-10 (20 % patch-free, 16 % patch only, the rest both; Li, Wei & Ma 2019),
SGD with momentum and weight decay. The seed reports that a small learning rate memorises the
patch, a large one gives higher clean accuracy, and the multirate approach does well on both.
Here: `specs/patch_small_lr.mrs` (h = 0.004), `specs/patch_large_lr.mrs` (h = 0.1) and
`specs/patch_multirate.mrs` (a fixed random half of every weight tensor slow: every 25 steps at
0.1; the rest fast at 0.004), a ResNet-8 on the digits as 1×8×8 images, over several seeds. The
contenders run interleaved (seed by seed). Accuracy on `clean` (held-out digits without patches)
and `patch_only` (the class patch alone) at the end of training; median [min–max] over seeds.

    python bench/patch.py [--seeds 0,1,2] [--epochs 15]

Last line: {"small_lr": {"clean": …, "patch_only": …}, "large_lr": {…}, "multirate": {…},
"seeds": […], "epochs": …}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = {"small_lr": "patch_small_lr.mrs", "large_lr": "patch_large_lr.mrs", "multirate": "patch_multirate.mrs"}


def run(spec: str, seed: int, epochs: int, out: Path) -> dict[str, float]:
    from mrc.api import train

    result = train(ROOT / "specs" / spec, out=out, overrides=[f"train.seed={seed}", f"train.epochs={epochs}",
                                                               "train.device=cpu"])
    evals = result.summary["evals"]
    return {"clean": evals["clean"]["acc"], "patch_only": evals["patch_only"]["acc"],
            "val": result.summary["val_acc"]}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    got: dict[str, list[dict[str, float]]] = {name: [] for name in SPECS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:  # interleaved: every contender once per seed
            for name, spec in SPECS.items():
                got[name].append(run(spec, seed, args.epochs, Path(tmp) / f"{name}-{seed}"))
                print(f"seed {seed} {name:<9} clean {got[name][-1]['clean']:.3f}  "
                      f"patch_only {got[name][-1]['patch_only']:.3f}", file=sys.stderr)
    table = {name: {key: spread([r[key] for r in rows]) for key in ("clean", "patch_only", "val")}
             for name, rows in got.items()}
    print(f"{len(seeds)} seeds, {args.epochs} epochs; accuracy median [min–max]")
    print(f"{'contender':<10} {'clean':>22} {'patch_only':>22} {'val (augmented)':>22}")
    for name, row in table.items():
        cells = [f"{row[k]['median']:.3f} [{row[k]['min']:.3f}–{row[k]['max']:.3f}]"
                 for k in ("clean", "patch_only", "val")]
        print(f"{name:<10} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22}")
    print(json.dumps({**{name: {k: round(row[k]["median"], 4) for k in ("clean", "patch_only")}
                         for name, row in table.items()}, "spread": table, "seeds": seeds, "epochs": args.epochs}))


if __name__ == "__main__":
    main()
