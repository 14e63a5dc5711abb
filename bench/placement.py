"""The cost of placing a schedule on processes (the `distribute` pass) as the world grows.

The house rule says compile time grows linearly with the period and the number of partitions,
brains and modules; placement adds the world. Cases, each at doubling sizes:

- `data`: data parallelism of the 8-partition MLP at rates 1…8 (period 840: 840 steps, a handful
  of distinct step patterns) on 2 … 16 processes;
- `brains`: B brains (B = 8 … 64, every = 1, 2, 4, 8 in turn, one mean merge) on B / 2 ranks;
- `pipeline`: K modules (K = 4 … 32) of an ODE-ResNet of depth K on K ranks.

Each case compiles the spec up to the pass before `distribute` once, then times the pass alone
(`Distribute().apply`) over repeats (median and min–max), and prints the growth ratio
time(2n) / time(n) (2 is linear, 4 quadratic). In-process: the pass is pure graph work.

    python bench/placement.py [--repeats 5] [--quick]

Last line: {"data_growth": …, "brains_growth": …, "pipeline_growth": …} (the median growth ratio
per doubling of each case).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Spread

MLP = ("model mlp(hidden=[16, 16, 16, 16, 16, 16, 16])\n"
       "data synthetic(shape=[16], classes=4, samples=512, batch=64)\noptimizer sgd(lr=0.01, momentum=0.9)\n"
       + "".join(f"partition p{i} = depth({i}, {i + 1}) {{ every = {i + 1} }}\n" for i in range(8))
       + "train(steps=10)\n")


def brains_spec(n: int) -> str:
    brains = "".join(f"brain b{i} {{ every = {2 ** (i % 4)} }}\n" for i in range(n))
    return ("model mlp(hidden=[16])\ndata synthetic(shape=[16], classes=4, samples=512, batch=64)\n"
            f"optimizer sgd(lr=0.01)\n{brains}merge mean\ndistributed brains\ntrain(steps=10)\n")


def pipeline_spec(k: int) -> str:
    return (f"model ode_resnet(width=4, depth={k}, h=0.1)\n"
            "data synthetic(shape=[4], classes=3, samples=512, batch=64)\noptimizer sgd(lr=0.01)\n"
            f"modules {{ split = equal({k}); aux = linear; regime = parallel }}\n"
            "distributed pipeline(micro_batches=2)\ntrain(steps=10)\n")


def time_pass(text: str, world: int, repeats: int) -> Spread:
    from mrc.passes import DEFAULT_PIPELINE, Distribute

    from mrc.api import compile_spec

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.mrs"
        path.write_text(text)
        before = compile_spec(path, world=world, stop_after=DEFAULT_PIPELINE[-2]).graph
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        Distribute().apply(before)
        times.append(time.perf_counter() - t0)
    return Spread.of(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="two sizes per case, 3 repeats")
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    cases = {
        "data": [(MLP, w, f"world {w}") for w in ((2, 4) if args.quick else (2, 4, 8, 16))],
        "brains": [(brains_spec(b), b // 2, f"{b} brains on {b // 2} ranks")
                   for b in ((8, 16) if args.quick else (8, 16, 32, 64))],
        "pipeline": [(pipeline_spec(k), k, f"{k} modules on {k} ranks")
                     for k in ((4, 8) if args.quick else (4, 8, 16, 32))],
    }
    print(f"{'case':<10} {'size':<24} {'distribute (ms)':>24} {'growth':>8}")
    growth: dict[str, float] = {}
    for name, sizes in cases.items():
        previous = None
        ratios = []
        for text, world, label in sizes:
            got = time_pass(text, world, repeats)
            ratio = got.median / previous if previous else None
            if ratio is not None:
                ratios.append(ratio)
            print(f"{name:<10} {label:<24} {got.fmt(1e3, 2):>24} {'' if ratio is None else f'{ratio:.2f}':>8}")
            previous = got.median
        growth[name] = round(statistics.median(ratios), 3)
    print(json.dumps({f"{k}_growth": v for k, v in growth.items()}))


if __name__ == "__main__":
    main()
