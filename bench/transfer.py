"""Multirate transfer learning: fast head, slow backbone, against plain fine-tuning.

In one run, on the same model, pretrained weights, data, batch order and seed:
  (a) a plain hand-written PyTorch fine-tuning loop that trains all layers every step;
  (b) `mrc train` of the fine-tuning spec with k = 5 (head every step, backbone every 5th step:
      on the other steps the backbone runs forward without autograd);
  (c) the multirate loop a careful user writes by hand: on k−1 of k steps the backbone runs
      under `torch.no_grad()` and only the head is differentiated; the slow step differentiates
      both and moves the backbone with step size k·h (its own torch.optim.SGD);
  (d) the ideal speed-up from the measured cost of a full step and of a head-only step:
      t_full / ((t_full + (k−1)·t_head) / k).
(a), (b), (c) run interleaved, `--repeats` times, in a rotated order. Each is timed over the
same whole periods (global steps k·w+1 … k·m, after the first epoch as warm-up; mrc from its
own log stamps, logging every k steps; the hand-written loops read the loss and stamp at the
same steps); a run's figure is the median of its periods (a stall of the shared machine in one
period does not move it), and the table shows the median over the repeats with min–max.
(c)/(b) is the compiler's own figure (goal: mrc at ≥ 0.98 of the hand-written multirate
loop's speed); (b) and (c) solve the same equations, so the script checks that they end with
the same parameters.
The pretrained weights come from a short `mrc train` of a pretraining spec made by this script.

    python bench/transfer.py [--repeats 5] [--epochs 6]  # CPU: ResNet-8 on digits (1×8×8)
    python bench/transfer.py --device cuda --gpu          # GPU: a wider ResNet, 3×32×32

Last line: {"speedup": (a)/(b), "speedup_vs_multirate": (c)/(b), "ideal_speedup": …,
"same_params_as_multirate": …, "acc_full": …, "acc_multirate": …, "device": …, …}
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import Spread, interleaved, period_times, ratios, step_clock, sync

from mrc.api import compile_spec
from mrc.runtime.evaluation import evaluate
from mrc.runtime.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]

CPU_DATA_PRE = "digits(shape=image, keep=[0, 1, 2, 3, 4], batch=32, val=0.2)"
CPU_DATA_FT = "digits(shape=image, keep=[5, 6, 7, 8, 9], batch=32, val=0.2)"
GPU_DATA_PRE = "synthetic(shape=[3, 32, 32], classes=10, samples=8192, batch=256, val=0.1)"
GPU_DATA_FT = GPU_DATA_PRE

PRETRAIN = """
model resnet(depth={depth}, width={width})
data {data}
optimizer sgd(lr=0.05, momentum=0.9, weight_decay=5e-4)
train(epochs={epochs}, seed=0, device={device}, log_every=1000000)
"""

FINETUNE = """
let k = {k}
model resnet(depth={depth}, width={width})
init "{init}"(exclude=["head.*"])
data {data}
optimizer sgd(lr=0.01, momentum=0.9, weight_decay=5e-4)
partition head = module("head")
partition backbone = rest {{ every = k }}
train(epochs={epochs}, seed=0, device={device}, log_every=k, eval_every={total},
      checkpoint_every={total}, threads={threads})
"""

LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4


@dataclass(frozen=True, slots=True)
class Run:
    """One timed run: the median seconds of its measured whole periods, val accuracy, params."""

    per_period: float
    acc: float
    state: dict[str, torch.Tensor]


def split_backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The backbone as a careful user writes it for this ResNet: every child but the head, in
    order, then a flatten (model(x) == model.head(backbone(x)))."""
    children = [m for n, m in model.named_children() if n != "head"]
    return torch.nn.Sequential(*children, torch.nn.Flatten(1))


def hand_loop(spec: Path, total: int, k: int, first: int, last: int, device: torch.device,
              multirate: bool) -> Run:
    """A hand-written loop: plain fine-tuning (every layer every step) or the multirate loop.

    Both read the loss every k steps (as mrc logs with log_every = k) and nowhere else, and
    stamp the clock at those reads.
    """
    compiled = compile_spec(spec, training=True)
    model, data = compiled.bound.model.to(device), compiled.bound.data
    x_all, y_all = data.train_x.to(device), data.train_y.to(device)
    head = list(model.head.parameters())
    backbone = split_backbone(model)
    body = list(backbone.parameters())
    kw = {"momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY}
    if multirate:
        opt_head = torch.optim.SGD(head, lr=LR, **kw)
        opt_body = torch.optim.SGD(body, lr=k * LR, **kw)  # the slow step: k·h
    else:
        opt_all = torch.optim.SGD(model.parameters(), lr=LR, **kw)
    model.train()
    stamps: dict[int, float] = {}
    step, epoch = 0, 0
    while step < total:
        for idx in data.batch_indices(epoch):
            if step == total:
                break
            idx = idx.to(device)
            x, y = x_all[idx], y_all[idx]
            if not multirate:
                opt_all.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt_all.step()
            elif step % k == 0:  # slow step: one backward gives both gradients
                opt_head.zero_grad(set_to_none=True)
                opt_body.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt_body.step()
                opt_head.step()
            else:  # fast step: the backbone without autograd, the head alone
                opt_head.zero_grad(set_to_none=True)
                with torch.no_grad():
                    features = backbone(x)
                loss = F.cross_entropy(model.head(features), y)
                loss.backward()
                opt_head.step()
            step += 1
            if step % k == 0:
                loss.item()  # the log read, as mrc's; it also syncs the device
                stamps[step] = time.perf_counter()
        epoch += 1
    acc = evaluate(model, data.val_x.to(device), data.val_y.to(device))["acc"]
    return Run(statistics.median(period_times(stamps, first, last, k)), acc, _state(model))


def mrc_run(spec: Path, out: Path, first: int, last: int, k: int) -> Run:
    result = Trainer(compile_spec(spec, training=True), out).run()
    times = period_times(step_clock(result), first, last, k)
    return Run(statistics.median(times), result.summary["val_acc"], _state(result.model))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def step_costs(spec: Path, device: torch.device, reps: int) -> tuple[float, float]:
    """Measured cost of a full step and of a head-only step (backbone under no_grad), each the
    median of 7 timings of `reps` steps, interleaved."""
    compiled = compile_spec(spec, training=True)
    model, data = compiled.bound.model.to(device), compiled.bound.data
    x, y = data.batch(0, 0)
    x, y = x.to(device), y.to(device)
    opt_all = torch.optim.SGD(model.parameters(), lr=1e-9, momentum=0.9)
    opt_head = torch.optim.SGD(model.head.parameters(), lr=1e-9, momentum=0.9)
    backbone = split_backbone(model)

    def full() -> None:
        opt_all.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt_all.step()

    def head_only() -> None:
        opt_head.zero_grad(set_to_none=True)
        with torch.no_grad():
            feats = backbone(x)
        F.cross_entropy(model.head(feats), y).backward()
        opt_head.step()

    def timed(fn: Callable[[], None]) -> Callable[[], float]:
        def run() -> float:
            sync(device)
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            sync(device)
            return (time.perf_counter() - start) / reps
        return run

    for _ in range(5):
        full()
        head_only()
    times = interleaved({"full": timed(full), "head": timed(head_only)}, 7)
    return Spread.of(times["full"]).median, Spread.of(times["head"]).median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--gpu", action="store_true", help="the GPU workload: wider ResNet, 3×32×32")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved runs of each contender")
    args = ap.parse_args()
    device = torch.device(args.device)
    k = args.k
    depth, width = (20, 64) if args.gpu else (8, 32)
    pre_data, ft_data = (GPU_DATA_PRE, GPU_DATA_FT) if args.gpu else (CPU_DATA_PRE, CPU_DATA_FT)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pre = tmp / "pretrain.mrs"
        pre.write_text(PRETRAIN.format(depth=depth, width=width, data=pre_data, epochs=3,
                                       device=args.device))
        Trainer(compile_spec(pre, training=True), tmp / "pre").run()
        probe = tmp / "probe.mrs"
        probe.write_text(FINETUNE.format(k=k, depth=depth, width=width, threads=torch.get_num_threads(),
                                         init=tmp / "pre" / "final.pt", data=ft_data, epochs=1,
                                         device=args.device, total=1))
        spe = compile_spec(probe, training=True).bound.data.steps_per_epoch()
        total = spe * args.epochs
        first = -(-spe // k) * k  # the first whole period after the first epoch (warm-up)
        last = total // k * k
        if last - first < k:
            ap.error(f"--epochs {args.epochs} leaves no whole period after the warm-up epoch")
        ft = tmp / "finetune.mrs"
        ft.write_text(FINETUNE.format(k=k, depth=depth, width=width, threads=torch.get_num_threads(),
                                      init=tmp / "pre" / "final.pt", data=ft_data,
                                      epochs=args.epochs, device=args.device, total=total))
        runs = iter(range(10**6))
        results = interleaved({
            "plain": lambda: hand_loop(ft, total, k, first, last, device, multirate=False),
            "mrc": lambda: mrc_run(ft, tmp / f"ft{next(runs)}", first, last, k),
            "hand": lambda: hand_loop(ft, total, k, first, last, device, multirate=True),
        }, args.repeats)
        t_full, t_head = step_costs(ft, device, reps=20)
    per = {name: [r.per_period for r in rs] for name, rs in results.items()}
    spread = {name: Spread.of(ts) for name, ts in per.items()}
    speedup = ratios(per["plain"], per["mrc"])
    own = ratios(per["hand"], per["mrc"])  # mrc speed / hand-written multirate speed
    hand_speedup = ratios(per["plain"], per["hand"])
    ideal = t_full / ((t_full + (k - 1) * t_head) / k)
    mrc_state, hand_state = results["mrc"][0].state, results["hand"][0].state
    diff = max(float((mrc_state[n].double() - hand_state[n].double()).abs().max())
               for n in hand_state)
    same = all(torch.equal(mrc_state[n], hand_state[n]) for n in hand_state)
    close = diff <= 1e-5
    acc = {name: rs[0].acc for name, rs in results.items()}
    periods = (last - first) // k
    print(f"model resnet(depth={depth}, width={width}), {spe} steps/epoch, k = {k}, "
          f"device {args.device} ({torch.get_num_threads()} threads); {periods} whole periods "
          f"(steps {first + 1}–{last}) per run, {args.repeats} interleaved repeats: "
          f"median [min–max]")
    print(f"{'':<40}{'ms/period':>22}{'val acc':>9}")
    rows = (("(a) plain fine-tuning (all layers)", "plain"), (f"(b) mrc multirate, k = {k}", "mrc"),
            (f"(c) hand-written multirate, k = {k}", "hand"))
    for label, name in rows:
        print(f"{label:<40}{spread[name].fmt(1e3, 2):>22}{acc[name]:>9.4f}")
    print(f"step costs: full {t_full * 1e3:.2f} ms, head only {t_head * 1e3:.2f} ms; "
          f"ideal speed-up {ideal:.3f}")
    print(f"speed-up (a)/(b), mrc over plain:          {speedup.fmt()}   "
          f"fraction of ideal {speedup.median / ideal:.3f}")
    print(f"speed-up (a)/(c), hand multirate over plain: {hand_speedup.fmt()}")
    print(f"compiler's own figure (c)/(b), mrc speed / hand-written multirate speed: "
          f"{own.fmt()}   (goal ≥ 0.98)")
    print(f"(b) and (c) end with the same parameters: bit-identical {same}, "
          f"max |Δ| {diff:.2e} (≤ 1e-5: {close})")
    print(json.dumps({
        "speedup": round(speedup.median, 3), "speedup_spread": speedup.as_json(3),
        "speedup_vs_multirate": round(own.median, 3), "own_spread": own.as_json(3),
        "hand_multirate_speedup": round(hand_speedup.median, 3),
        "ideal_speedup": round(ideal, 3),
        "s_per_period": {n: sp.as_json(5) for n, sp in spread.items()},
        "same_params_as_multirate": close, "bit_identical": same, "max_abs_diff": diff,
        "acc_full": round(acc["plain"], 4), "acc_multirate": round(acc["mrc"], 4),
        "acc_hand_multirate": round(acc["hand"], 4), "repeats": args.repeats,
        "device": args.device}))


if __name__ == "__main__":
    main()
