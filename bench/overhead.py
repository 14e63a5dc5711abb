"""mrc's per-step overhead: `mrc train` against a plain hand-written PyTorch loop.

Two cases, each a row of the table:

* big:  MLP 784-1024-1024-512-10, batch 256 (a step of well over 5 ms on 2 CPU cores);
* tiny: MLP 64-16-10, batch 8 (a step of well under a millisecond: what is left is overhead;
  the goal after the lowering rewrite is mrc at ≤ 1.05× the hand-written loop's time).

Both contenders train the same model (same initial weights), on the same data in the same batch
order, with SGD-momentum, for the same number of steps. The hand-written loop is what a careful
user writes: `zero_grad(set_to_none=True)`, no per-step `.item()` (it reads the loss every 10
steps, as mrc logs with log_every = 10), nothing else. The time per step is taken over the
steady part of the run (after `--warmup` steps) as the median of its 10-step windows between log
reads (mrc's from its own log stamps, so evaluation and checkpoints at the end are not counted;
a stall of the shared machine in one window does not move the median). The contenders run interleaved (rotated order),
`--repeats` times; the table shows the median over the repeats with min–max, and the ratio of
the paired (same-repeat) times. The script checks that both end with identical parameters.

    python bench/overhead.py [--steps 200] [--tiny-steps 3000] [--repeats 5] [--device cpu|cuda]

Last line: {"ratio": mrc/torch speed (big), "tiny_ratio": mrc/torch speed (tiny),
"tiny_time_ratio": mrc time / torch time (tiny), "same_params": true|false, …}
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import Spread, interleaved, period_times, ratios, step_clock

from mrc.api import compile_spec
from mrc.runtime.trainer import Trainer

LOG_EVERY = 10

CASES = {
    "big": ("mlp(hidden=[1024, 1024, 512])",
            "synthetic(shape=[784], classes=10, samples=16384, batch=256, val=0.05)"),
    "tiny": ("mlp(hidden=[16])",
             "synthetic(shape=[64], classes=10, samples=4096, batch=8, val=0.05)"),
}

SPEC = """
model {model}
data {data}
optimizer sgd(lr=0.01, momentum=0.9)
train(steps={steps}, log_every=10, eval_every={steps}, checkpoint_every={steps}, device={device},
      threads={threads})
"""

Params = dict[str, torch.Tensor]


def mrc_run(spec: Path, out: Path, warm: int) -> tuple[float, Params]:
    result = Trainer(compile_spec(spec), out).run()
    stamps = step_clock(result)
    last = max(stamps) // LOG_EVERY * LOG_EVERY
    per_step = statistics.median(period_times(stamps, warm, last, LOG_EVERY)) / LOG_EVERY
    return per_step, {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}


def torch_run(spec: Path, steps: int, warm: int, device: str) -> tuple[float, Params]:
    """The hand-written loop: the same model, data order and optimizer, nothing else."""
    compiled = compile_spec(spec)  # builds the same initial model and data as mrc
    dev = torch.device(device)
    model = compiled.bound.model.to(dev)
    data = compiled.bound.data
    x_all, y_all = data.train_x.to(dev), data.train_y.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    step, epoch = 0, 0
    stamps: dict[int, float] = {}
    while step < steps:
        for idx in data.batch_indices(epoch):
            if step == steps:
                break
            idx = idx.to(dev)
            x, y = x_all[idx], y_all[idx]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            step += 1
            if step % LOG_EVERY == 0:
                loss.item()  # a careful loop logs now and then (and syncs); mrc logs every 10
                stamps[step] = time.perf_counter()
        epoch += 1
    last = steps // LOG_EVERY * LOG_EVERY
    per_step = statistics.median(period_times(stamps, warm, last, LOG_EVERY)) / LOG_EVERY
    return per_step, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def measure(tmp: Path, case: str, steps: int, warm: int, repeats: int,
            device: str) -> tuple[list[float], list[float], bool]:
    model, data = CASES[case]
    spec = tmp / f"{case}.mrs"
    spec.write_text(SPEC.format(model=model, data=data, steps=steps, device=device,
                                 threads=torch.get_num_threads()))  # the same as the hand-written loop's
    runs = iter(range(10**6))
    got = interleaved({"mrc": lambda: mrc_run(spec, tmp / f"{case}{next(runs)}", warm),
                       "torch": lambda: torch_run(spec, steps, warm, device)}, repeats)
    same = all(torch.equal(m[k], t[k]) for (_, m), (_, t) in zip(got["mrc"], got["torch"], strict=True)
               for k in t)
    return [t for t, _ in got["mrc"]], [t for t, _ in got["torch"]], same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="steps of the big case")
    ap.add_argument("--tiny-steps", type=int, default=3000, help="steps of the tiny case")
    ap.add_argument("--warmup", type=int, default=20, help="steps not timed (a multiple of 10)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    if args.warmup % LOG_EVERY:
        ap.error("--warmup must be a multiple of 10 (mrc's log stamps)")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, steps in (("big", args.steps), ("tiny", args.tiny_steps)):
            rows[case] = measure(Path(tmp), case, steps, args.warmup, args.repeats, args.device)
    print(f"{args.repeats} interleaved repeats, median [min–max]; device {args.device} "
          f"({torch.get_num_threads()} threads)")
    print(f"{'case':<6}{'hand-written ms/step':>24}{'mrc ms/step':>24}{'mrc time / hand':>24}"
          f"{'same params':>13}")
    out: dict[str, object] = {}
    for case, (m, t, same) in rows.items():
        time_ratio = ratios(m, t)
        print(f"{case:<6}{Spread.of(t).fmt(1e3):>24}{Spread.of(m).fmt(1e3):>24}"
              f"{time_ratio.fmt():>24}{same!s:>13}")
        out[case] = {"mrc_s_per_step": Spread.of(m).as_json(6),
                     "torch_s_per_step": Spread.of(t).as_json(6),
                     "time_ratio": time_ratio.as_json(3), "same_params": same}
    big, tiny = ratios(rows["big"][1], rows["big"][0]), ratios(rows["tiny"][1], rows["tiny"][0])
    print(f"speed ratio (mrc speed / hand-written speed): big {big.fmt()}, tiny {tiny.fmt()} "
          f"(tiny goal: time ratio ≤ 1.05)")
    print(json.dumps({"ratio": round(big.median, 4), "tiny_ratio": round(tiny.median, 4),
                      "tiny_time_ratio": out["tiny"]["time_ratio"]["median"],  # type: ignore[index]
                      "same_params": rows["big"][2] and rows["tiny"][2], "cases": out,
                      "device": args.device}))


if __name__ == "__main__":
    main()
