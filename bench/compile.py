"""mrc's compile time: spec text → parse → check → bind (trace) → schedule graph → Plan.

Cases: eight partitions of an MLP at rates 1…8 (period lcm = 840); the same with the slowest
partition at every = 120 and 480 (periods 840 and 3360); an ODE-ResNet (dense, width 8) at
depths 256…2048; ResNet-110 on 3×32×32 inputs. Each run is a fresh Python process, so the import
of mrc and torch is measured apart from compiling (its own column; it includes torch._dynamo,
which torch.optim imports the first time an optimizer is built: about 0.5 s once per process,
not compile work). A run that exceeds --timeout prints `timeout` instead of hanging. Runs are
repeated; the table shows medians and the min–max spread of the total, and for the ODE-ResNet
the growth ratio time(2d) / time(d) (2 is linear, 4 quadratic).

    python bench/compile.py [--repeats 3] [--timeout 120] [--cases period_840,ode_resnet_2048]

Last line: {"period_840_s": …, "ode_resnet_2048_s": …, "resnet_110_s": …, "import_s": …}
(medians of the total compile time; null on timeout).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MLP_DATA = "data synthetic(shape=[16], classes=4, samples=256, batch=64)"


def _rates_spec(rates: list[int]) -> str:
    """An MLP with one parameterised layer per rate, each its own partition `depth(i, i+1)`."""
    hidden = ", ".join(["16"] * (len(rates) - 1))
    parts = "\n".join(f"partition p{i} = depth({i}, {i + 1}) {{ every = {k} }}"
                      for i, k in enumerate(rates))
    return (f"model mlp(hidden=[{hidden}])\n{MLP_DATA}\noptimizer sgd(lr=0.01, momentum=0.9)\n"
            f"{parts}\ntrain(steps=10)\n")


def _ode_spec(depth: int) -> str:
    return (f"model ode_resnet(width=8, depth={depth}, h=0.01)\n"
            "data levelsets(samples=500, batch=50)\noptimizer sgd(lr=0.01)\ntrain(steps=10)\n")


RATES = {"period_840": [1, 2, 3, 4, 5, 6, 7, 8], "slow_120": [1, 2, 3, 4, 5, 6, 7, 120],
         "slow_480": [1, 2, 3, 4, 5, 6, 7, 480]}
CASES: dict[str, tuple[str, int]] = {  # name → (spec, period)
    **{name: (_rates_spec(rates), math.lcm(*rates)) for name, rates in RATES.items()},
    **{f"ode_resnet_{d}": (_ode_spec(d), 1) for d in (256, 512, 1024, 2048)},
    "resnet_110": ("model resnet(depth=110)\n"
                   "data synthetic(shape=[3, 32, 32], classes=10, samples=256, batch=64)\n"
                   "optimizer sgd(lr=0.01)\ntrain(steps=10)\n", 1),
}
ODE_DEPTHS = (256, 512, 1024, 2048)


def child(case: str) -> None:
    """One measurement in this (fresh) process; prints one JSON object."""
    start = time.perf_counter()
    import torch._dynamo  # noqa: F401  (imported by torch.optim on first use: see the docstring)

    import mrc.api as api
    imported = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / f"{case}.mrs"
        spec.write_text(CASES[case][0])
        t0 = time.perf_counter()
        compiled = api.compile_spec(spec)
        t1 = time.perf_counter()
        api.lower(compiled, 10)
        t2 = time.perf_counter()
    print(json.dumps({"import_s": imported - start, "graph_s": t1 - t0, "plan_s": t2 - t1,
                      "total_s": t2 - t0}))


def measure(case: str, repeats: int, timeout: float) -> list[dict] | None:
    """`repeats` fresh-process runs of `case`, or None when one of them times out."""
    runs = []
    for _ in range(repeats):
        try:
            done = subprocess.run([sys.executable, __file__, "--child", case], capture_output=True,
                                  text=True, timeout=timeout, check=True)
        except subprocess.TimeoutExpired:
            return None
        except subprocess.CalledProcessError as err:
            sys.exit(f"{case} failed:\n{err.stderr}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: "
                    + ", ".join(CASES))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    names = [c for c in args.cases.split(",") if c]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}")
    med: dict[str, float | None] = {}
    imports: list[float] = []
    print(f"{'case':<17}{'period':>7}{'import s':>10}{'→ graph s':>11}{'→ Plan s':>10}"
          f"{'total s':>10}{'min–max s':>15}")
    for name in names:
        runs = measure(name, args.repeats, args.timeout)
        if runs is None:
            med[name] = None
            print(f"{name:<17}{CASES[name][1]:>7}{'timeout':>10}  (a run took over {args.timeout:g} s)")
            continue
        total = [r["total_s"] for r in runs]
        imports += [r["import_s"] for r in runs]
        med[name] = statistics.median(total)
        print(f"{name:<17}{CASES[name][1]:>7}"
              f"{statistics.median(r['import_s'] for r in runs):>10.3f}"
              f"{statistics.median(r['graph_s'] for r in runs):>11.3f}"
              f"{statistics.median(r['plan_s'] for r in runs):>10.3f}"
              f"{med[name]:>10.3f}{f'{min(total):.3f}–{max(total):.3f}':>15}")
    ratios = []
    for d in ODE_DEPTHS[:-1]:
        a, b = med.get(f"ode_resnet_{d}"), med.get(f"ode_resnet_{2 * d}")
        if a and b:
            ratios.append(f"{d}→{2 * d}: {b / a:.2f}")
    if ratios:
        print("ode_resnet growth time(2d)/time(d) (2 = linear, 4 = quadratic): " + ", ".join(ratios))

    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    print(json.dumps({"period_840_s": rounded(med.get("period_840")),
                      "ode_resnet_2048_s": rounded(med.get("ode_resnet_2048")),
                      "resnet_110_s": rounded(med.get("resnet_110")),
                      "import_s": rounded(statistics.median(imports) if imports else None)}))


if __name__ == "__main__":
    main()
