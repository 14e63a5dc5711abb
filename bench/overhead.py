"""mrc's per-step overhead: `mrc train` against a plain hand-written PyTorch loop.

Both train the same model (same initial weights), on the same data in the same batch order, with
SGD-momentum, for the same number of steps. The time per step of each is measured over the steady
part of the run (after warm-up steps; mrc's from its own metrics timestamps, so evaluation and
checkpoints at the end are not counted). Runs alternate, and the best of the repeats is kept.
The script checks that both end with identical parameters.

    python bench/overhead.py [--steps 200] [--repeats 3] [--device cpu|cuda]

Last line: {"ratio": mrc/torch speed, "mrc_steps_per_s": …, "torch_steps_per_s": …,
"same_params": true|false}
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

from mrc.api import compile_spec
from mrc.runtime.trainer import Trainer

SPEC = """
# A model whose SGD step takes well over 5 ms on 2 CPU cores.
model mlp(hidden=[1024, 1024, 512])
data synthetic(shape=[784], classes=10, samples=16384, batch=256, val=0.05)
optimizer sgd(lr=0.01, momentum=0.9)
train(steps={steps}, log_every=10, eval_every={steps}, checkpoint_every={steps}, device={device})
"""


def mrc_run(spec: Path, out: Path, warm: int) -> tuple[float, dict[str, torch.Tensor]]:
    compiled = compile_spec(spec)
    result = Trainer(compiled, out).run()
    times = {m["step"]: m["time"] for m in result.metrics if "loss" in m}
    last = max(times)
    per_step = (times[last] - times[warm]) / (last - warm)
    return per_step, {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}


def torch_run(spec: Path, steps: int, warm: int, device: str) -> tuple[float, dict[str, torch.Tensor]]:
    """The hand-written loop: the same model, data order and optimizer, nothing else."""
    compiled = compile_spec(spec)  # builds the same initial model and data as mrc
    dev = torch.device(device)
    model = compiled.bound.model.to(dev)
    data = compiled.bound.data
    x_all, y_all = data.train_x.to(dev), data.train_y.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    step, epoch, start = 0, 0, 0.0
    while step < steps:
        for idx in data.batch_indices(epoch):
            if step == steps:
                break
            if step == warm:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            idx = idx.to(dev)
            x, y = x_all[idx], y_all[idx]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if step % 10 == 9:
                loss.item()  # a hand-written loop logs now and then; mrc logs every 10 steps
            step += 1
        epoch += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / (steps - warm)
    return per_step, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20, help="steps not timed (a multiple of 10)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "overhead.mrs"
        spec.write_text(SPEC.format(steps=args.steps, device=args.device))
        mrc_times, torch_times = [], []
        same = True
        for r in range(args.repeats):
            m, mp = mrc_run(spec, Path(tmp) / f"run{r}", args.warmup)
            t, tp = torch_run(spec, args.steps, args.warmup, args.device)
            mrc_times.append(m)
            torch_times.append(t)
            same = same and all(torch.equal(mp[k], tp[k]) for k in tp)
    mrc_best, torch_best = min(mrc_times), min(torch_times)
    ratio = torch_best / mrc_best
    print(f"{'':<14}{'ms/step (best)':>16}{'ms/step (median)':>18}{'steps/s':>10}")
    for name, ts in (("hand-written", torch_times), ("mrc train", mrc_times)):
        print(f"{name:<14}{min(ts) * 1e3:>16.3f}{statistics.median(ts) * 1e3:>18.3f}"
              f"{1 / min(ts):>10.1f}")
    print(f"ratio (mrc speed / hand-written speed): {ratio:.3f}   identical parameters: {same}")
    print(json.dumps({"ratio": round(ratio, 4), "mrc_steps_per_s": round(1 / mrc_best, 2),
                      "torch_steps_per_s": round(1 / torch_best, 2), "same_params": same,
                      "device": args.device}))


if __name__ == "__main__":
    main()
