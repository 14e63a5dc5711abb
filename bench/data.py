"""Real data: mrc's training throughput on Fashion-MNIST against a hand-written PyTorch loop.

The workload of issue 21: a CIFAR-style ResNet-20 (width 16) on Fashion-MNIST read from disk
(Debian's `dataset-fashion-mnist`), batch 128, random crop (padding 2) + horizontal flip drawn
per sample from the run's seed, SGD with momentum. In one process, interleaved (each repeat runs
every contender once, in a rotated order), on the same model, initial weights, batch order and
augmentation draws:

  (a) mrc, streamed: `data fashion_mnist(stream = true, workers = W)` — a DataLoader whose
      workers transform each sample;
  (b) the hand-written loop over the *same DataLoader* (mrc's own, built the same way, so the
      data pipeline is shared and the comparison is the training loop's): zero_grad, forward,
      cross-entropy, backward, `torch.optim.SGD(foreach=True)` step — the best a careful user
      writes for this model;
  (c) mrc in memory: the arrays on the device, the batch's crop and flip applied batched on the
      device;
  (d) the hand-written loop over the same device tensors with the same batched augmentation;
  (e) mrc in memory in bf16 autocast (`train(precision = bf16)`), against (c).

Each run trains `--steps` steps; the loops read the loss every `--log` steps (as mrc logs) and
stamp the clock there; a run's figure is the median seconds of its whole logging windows after
the first (warm-up) window. The table shows the median over the repeats with min–max, and the
ratios are paired per repeat. Goal (issue 21): mrc/hand ≥ 0.97 for both paths.

    python bench/data.py [--repeats 3] [--steps 60] [--workers 1] [--limit 7680]

`--limit` keeps that many training examples (the batch order and draws do not depend on it past
the steps run; it bounds the end-of-run summary's pass over the training split, which is not
timed). Last line: {"throughput_vs_hand_stream": (b)/(a) time, "throughput_vs_hand_memory":
(d)/(c) time, "bf16_vs_fp32": (c)/(e) time, …} — each a throughput ratio (> 1: the first named is
faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import Spread, interleaved, period_times, ratios, step_clock

from mrc.api import compile_spec
from mrc.data.disk import find
from mrc.data.files import DataError
from mrc.data.stream import StreamSource
from mrc.runtime.trainer import Trainer

SPEC = """
model resnet(depth=20, width=16)
data fashion_mnist(batch=128, limit={limit}, augment=[random_crop(28, padding=2), hflip]{loader})
optimizer sgd(lr=0.05, momentum=0.9, weight_decay=5e-4)
train(steps={steps}, seed=0, log_every={log}, eval_every={steps}, checkpoint_every={steps},
      precision={precision}, threads={threads})
"""

LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


@dataclass(frozen=True, slots=True)
class Timed:
    """One run: the median seconds per logging window and the final parameters."""

    per_window: float
    state: dict[str, torch.Tensor]


def write_spec(tmp: Path, name: str, *, stream: bool, args: argparse.Namespace,
               precision: str = "32") -> Path:
    path = tmp / f"{name}.mrs"
    loader = (f", stream=true, workers={args.workers}, persistent_workers={str(args.workers > 0).lower()}"
              if stream else "")
    path.write_text(SPEC.format(limit=args.limit, loader=loader, steps=args.steps,
                                log=args.log, precision=precision, threads=torch.get_num_threads()))
    return path


def mrc_run(spec: Path, args: argparse.Namespace) -> Timed:
    result = Trainer(compile_spec(spec, training=True), None, tensorboard=False).run()
    windows = period_times(step_clock(result), args.log, args.steps, args.log)
    return Timed(statistics.median(windows), _state(result.model))


def hand_run(spec: Path, args: argparse.Namespace, streamed: bool) -> Timed:
    """The hand-written loop: mrc compiles the spec only to build the same model (same initial
    weights) and the same data pipeline; the loop itself is plain PyTorch."""
    compiled = compile_spec(spec, training=True)
    model, data = compiled.bound.model, compiled.bound.data
    device = torch.device("cpu")
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                          foreach=True)
    if streamed:
        source = StreamSource(data, device, torch.float32)  # mrc's DataLoader, as a user reuses it

        def batches(epoch: int):
            return source.epoch(epoch)
    else:
        x_all, y_all, augment = data.train_x.to(device), data.train_y.to(device), data.augment

        def batches(epoch: int):
            for idx in data.batch_indices(epoch):
                yield augment.train(x_all[idx], idx, epoch), y_all[idx]
    model.train()
    stamps: dict[int, float] = {}
    step, epoch = 0, 0
    while step < args.steps:
        for x, y in batches(epoch):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            step += 1
            if step % args.log == 0:
                loss.item()  # the log read, as mrc's
                stamps[step] = time.perf_counter()
            if step == args.steps:
                break
        epoch += 1
    if streamed:
        source.close()
    windows = period_times(stamps, args.log, args.steps, args.log)
    return Timed(statistics.median(windows), _state(model))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n].double() - b[n].double()).abs().max()) for n in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each contender")
    ap.add_argument("--steps", type=int, default=60, help="training steps per run")
    ap.add_argument("--log", type=int, default=10, help="steps per logging window")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers of the streamed path")
    ap.add_argument("--limit", type=int, default=7680, help="training examples kept")
    args = ap.parse_args()
    if args.steps % args.log or args.steps // args.log < 3:
        ap.error("--steps must be a multiple of --log, at least 3 windows")
    try:
        find("fashion_mnist")
    except DataError as err:
        sys.exit(f"bench/data.py: {err.message}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        streamed = write_spec(tmp, "streamed", stream=True, args=args)
        memory = write_spec(tmp, "memory", stream=False, args=args)
        bf16 = write_spec(tmp, "bf16", stream=False, args=args, precision="bf16")
        results = interleaved({
            "mrc_stream": lambda: mrc_run(streamed, args),
            "hand_stream": lambda: hand_run(streamed, args, streamed=True),
            "mrc_memory": lambda: mrc_run(memory, args),
            "hand_memory": lambda: hand_run(memory, args, streamed=False),
            "mrc_bf16": lambda: mrc_run(bf16, args),
        }, args.repeats)
    per = {name: [r.per_window for r in rs] for name, rs in results.items()}
    spread = {name: Spread.of(ts) for name, ts in per.items()}
    stream = ratios(per["hand_stream"], per["mrc_stream"])  # mrc throughput / hand throughput
    memory_ratio = ratios(per["hand_memory"], per["mrc_memory"])
    bf16_ratio = ratios(per["mrc_memory"], per["mrc_bf16"])
    diff_stream = max_diff(results["mrc_stream"][0].state, results["hand_stream"][0].state)
    diff_memory = max_diff(results["mrc_memory"][0].state, results["hand_memory"][0].state)
    diff_paths = max_diff(results["mrc_stream"][0].state, results["mrc_memory"][0].state)
    images = 128 * args.log
    print(f"Fashion-MNIST, resnet(depth=20, width=16), batch 128, crop + flip; {args.steps} steps "
          f"per run, windows of {args.log} steps after the first; {torch.get_num_threads()} threads, "
          f"{args.workers} DataLoader worker(s); {args.repeats} interleaved repeats: median [min–max]")
    print(f"{'':<44}{'ms/window':>24}{'images/s':>10}")
    rows = (("(a) mrc, streamed (DataLoader)", "mrc_stream"),
            ("(b) hand-written loop, same DataLoader", "hand_stream"),
            ("(c) mrc, in memory", "mrc_memory"),
            ("(d) hand-written loop, same tensors", "hand_memory"),
            ("(e) mrc, in memory, bf16 autocast", "mrc_bf16"))
    for label, name in rows:
        print(f"{label:<44}{spread[name].fmt(1e3, 1):>24}{images / spread[name].median:>10.0f}")
    print(f"throughput mrc / hand, streamed  (b)/(a): {stream.fmt()}   (goal ≥ 0.97)")
    print(f"throughput mrc / hand, in memory (d)/(c): {memory_ratio.fmt()}   (goal ≥ 0.97)")
    print(f"throughput bf16 / float32        (c)/(e): {bf16_ratio.fmt()}")
    print(f"same training: max |Δ| of the final parameters, mrc vs hand streamed {diff_stream:.2e}, "
          f"in memory {diff_memory:.2e}; mrc streamed vs in memory {diff_paths:.2e}")
    print(json.dumps({
        "throughput_vs_hand_stream": round(stream.median, 3),
        "throughput_vs_hand_memory": round(memory_ratio.median, 3),
        "bf16_vs_fp32": round(bf16_ratio.median, 3),
        "spread": {"stream": stream.as_json(3), "memory": memory_ratio.as_json(3),
                   "bf16": bf16_ratio.as_json(3)},
        "s_per_window": {n: sp.as_json(4) for n, sp in spread.items()},
        "max_abs_diff": {"stream": diff_stream, "memory": diff_memory, "paths": diff_paths},
        "steps": args.steps, "log": args.log, "workers": args.workers, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "device": "cpu"}))


if __name__ == "__main__":
    main()
