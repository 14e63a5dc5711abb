"""Multirate transfer learning: fast head, slow backbone, against plain fine-tuning.

In one run, on the same model, pretrained weights, data, batch order and seed:
  (a) a plain hand-written PyTorch fine-tuning loop that trains all layers every step;
  (b) `mrc train` of specs/transfer.mrs with k = 5 (head every step, backbone every 5th step:
      on the other steps the backbone runs forward without autograd);
  (c) the ideal speed-up from the measured cost of a full step and of a step that only
      differentiates the head: t_full / ((t_full + (k−1)·t_head) / k).
The pretrained weights come from a short `mrc train` of specs/pretrain.mrs made by this script.

    python bench/transfer.py                     # CPU: ResNet-8 on digits (1×8×8)
    python bench/transfer.py --device cuda --gpu  # GPU: a wider ResNet on synthetic 3×32×32

Last line: {"speedup": …, "ideal_speedup": …, "acc_full": …, "acc_multirate": …, "device": …}
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mrc.api import compile_spec
from mrc.runtime.trainer import Trainer, evaluate

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
train(epochs={epochs}, seed=0, device={device}, log_every={spe}, eval_every={total},
      checkpoint_every={total})
"""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_finetune(spec: Path, epochs: int, device: torch.device) -> tuple[float, float]:
    """The hand-written baseline: every layer, every step. Returns (s/epoch, val acc)."""
    compiled = compile_spec(spec, training=True)
    model, data = compiled.bound.model.to(device), compiled.bound.data
    x_all, y_all = data.train_x.to(device), data.train_y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    times = []
    for epoch in range(epochs):
        sync(device)
        start = time.perf_counter()
        for idx in data.batch_indices(epoch):
            idx = idx.to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            loss.backward()
            opt.step()
            loss.item()
        sync(device)
        times.append(time.perf_counter() - start)
    acc = evaluate(model, data.val_x.to(device), data.val_y.to(device))["acc"]
    return min(times[1:] or times), acc


def mrc_finetune(spec: Path, out: Path, epochs: int) -> tuple[float, float]:
    result = Trainer(compile_spec(spec, training=True), out).run()
    stamps = [m["time"] for m in result.metrics if "loss" in m]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    per_epoch = min(gaps) if gaps else result.summary["wall_time_s"] / epochs
    return per_epoch, result.summary["val_acc"]


def step_costs(spec: Path, device: torch.device, reps: int) -> tuple[float, float]:
    """Measured cost of a full step and of a head-only step (backbone under no_grad)."""
    compiled = compile_spec(spec, training=True)
    model, data = compiled.bound.model.to(device), compiled.bound.data
    x, y = data.batch(0, 0)
    x, y = x.to(device), y.to(device)
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    opt_all = torch.optim.SGD(model.parameters(), lr=1e-9, momentum=0.9)
    opt_head = torch.optim.SGD(head, lr=1e-9, momentum=0.9)
    body = torch.nn.Sequential(*[m for n, m in model.named_children() if n != "head"])

    def full() -> None:
        opt_all.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt_all.step()

    def head_only() -> None:
        opt_head.zero_grad(set_to_none=True)
        with torch.no_grad():
            feats = body(x)
        F.cross_entropy(model.head(torch.flatten(feats, 1)), y).backward()
        opt_head.step()

    def timed(fn) -> float:
        for _ in range(5):
            fn()
        sync(device)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            sync(device)
            best = min(best, (time.perf_counter() - start) / reps)
        return best

    return timed(full), timed(head_only)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--gpu", action="store_true", help="the GPU workload: wider ResNet, 3×32×32")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    device = torch.device(args.device)
    depth, width = (20, 64) if args.gpu else (8, 32)
    pre_data, ft_data = (GPU_DATA_PRE, GPU_DATA_FT) if args.gpu else (CPU_DATA_PRE, CPU_DATA_FT)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pre = tmp / "pretrain.mrs"
        pre.write_text(PRETRAIN.format(depth=depth, width=width, data=pre_data, epochs=3,
                                       device=args.device))
        Trainer(compile_spec(pre, training=True), tmp / "pre").run()
        probe = tmp / "probe.mrs"
        probe.write_text(FINETUNE.format(k=args.k, depth=depth, width=width,
                                         init=tmp / "pre" / "final.pt", data=ft_data, epochs=1,
                                         device=args.device, spe=1, total=1))
        spe = compile_spec(probe, training=True).bound.data.steps_per_epoch()
        ft = tmp / "finetune.mrs"
        ft.write_text(FINETUNE.format(k=args.k, depth=depth, width=width,
                                      init=tmp / "pre" / "final.pt", data=ft_data,
                                      epochs=args.epochs, device=args.device, spe=spe,
                                      total=spe * args.epochs))
        t_plain, acc_plain = plain_finetune(ft, args.epochs, device)
        t_mrc, acc_mrc = mrc_finetune(ft, tmp / "ft", args.epochs)
        t_full, t_head = step_costs(ft, device, reps=20)
    k = args.k
    ideal = t_full / ((t_full + (k - 1) * t_head) / k)
    speedup = t_plain / t_mrc
    print(f"model resnet(depth={depth}, width={width}), {spe} steps/epoch, k = {k}, "
          f"device {args.device}")
    print(f"{'':<34}{'s/epoch':>10}{'val acc':>10}")
    print(f"{'(a) plain fine-tuning (all layers)':<34}{t_plain:>10.3f}{acc_plain:>10.4f}")
    print(f"{'(b) mrc multirate, k = ' + str(k):<34}{t_mrc:>10.3f}{acc_mrc:>10.4f}")
    print(f"step costs: full {t_full * 1e3:.2f} ms, head only {t_head * 1e3:.2f} ms")
    print(f"speed-up (a)/(b): {speedup:.2f}   ideal: {ideal:.2f}   "
          f"fraction of ideal: {speedup / ideal:.2f}")
    print(json.dumps({"speedup": round(speedup, 3), "ideal_speedup": round(ideal, 3),
                      "acc_full": round(acc_plain, 4), "acc_multirate": round(acc_mrc, 4),
                      "device": args.device}))


if __name__ == "__main__":
    main()
