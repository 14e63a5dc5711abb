"""Reproduce the seeds' headline experiments on real data: one command per claim.

    python bench/repro.py NAME [NAME …] [--scale small|full] [--seeds 0,1,2] [--runs DIR] [--fresh]
    python bench/repro.py --all
    python bench/repro.py --list

Experiments (bench/reproductions/, specs in specs/repro/): patch, transfer, subsets, brains,
modulewise, mgrit, lr_batch. `--scale small` (the default) fits each on a 2-core CPU in minutes,
with the sizes each report states; `--scale full` is the seed's size, for a GPU. Each writes
docs/reproductions/NAME.md (verdict in its first line, setup, results over the seeds with their
spread, curves, what would change the verdict) with PNG figures beside it, and the summary
docs/reproductions.md. Runs are cached under `--runs` (default runs/repro): a killed `--all`
continues where it stopped; `--fresh` reruns. `--report-only` rewrites the reports from the
cache. The last line printed is JSON: a verdict and the key numbers per experiment.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproductions import EXPERIMENTS, harness


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="experiments to run (see --list)")
    ap.add_argument("--all", action="store_true", help="run every experiment, in order")
    ap.add_argument("--list", action="store_true", help="list the experiments and their claims")
    ap.add_argument("--scale", choices=("small", "full"), default="small")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (at least 3 for a verdict)")
    ap.add_argument("--runs", type=Path, default=Path("runs/repro"), help="where runs are cached")
    ap.add_argument("--fresh", action="store_true", help="rerun cached runs")
    ap.add_argument("--report-only", action="store_true", help="rewrite reports from cached runs only")
    args = ap.parse_args(argv)
    if args.list:
        for name in EXPERIMENTS:
            mod = importlib.import_module(f"reproductions.{name}")
            print(f"{name:<11} {mod.TITLE}\n{'':<11} claim: {mod.CLAIM}")
        return 0
    names = list(EXPERIMENTS) if args.all else args.names
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown or not names:
        ap.error(f"unknown experiment {unknown[0]!r}; choose from {', '.join(EXPERIMENTS)}" if unknown
                 else "name an experiment, or --all")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: give integers separated by commas")
    if not seeds:
        ap.error("--seeds: give at least one seed")
    line: dict[str, object] = {}
    for name in names:
        mod = importlib.import_module(f"reproductions.{name}")
        print(f"== {name} ({args.scale}, seeds {seeds}): {mod.TITLE}", flush=True)
        start = time.perf_counter()
        results = harness.execute(mod, args.scale, seeds, args.runs, fresh=args.fresh and not args.report_only,
                                  say=_quiet if args.report_only else _say, cached_only=args.report_only)
        finding = mod.report(results)
        path = harness.write_report(mod, results, finding)
        print(f"-> {finding.verdict}: {path.relative_to(harness.ROOT)} "
              f"({time.perf_counter() - start:.0f} s this time)", flush=True)
        line[name] = {"verdict": finding.verdict, **finding.numbers}
    harness.write_summary(EXPERIMENTS)
    print(json.dumps({"scale": args.scale, "seeds": seeds, **line}))
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def _quiet(line: str) -> None:
    pass


if __name__ == "__main__":
    raise SystemExit(main())
