"""Data-parallel multirate on W processes against torch DistributedDataParallel: bytes and time.

On W processes (gloo on the CPU; NCCL with `--device cuda`, one GPU per process), on the same
model, initialisation, data and batch order, every rank taking the same contiguous share of each
global batch:

  (a) full training (one partition, every step):
      mrc    `distributed data` (the default for several processes): the global batch sharded,
             one flat all-reduce of every gradient after the backward;
      DDP    `DistributedDataParallel(model)` + `torch.optim.SGD` over every parameter: the plain
             DDP loop (bucketed all-reduce overlapped with the backward).
  (b) multirate transfer at k = 5 (head every step, backbone `every = 5`: differentiated and
      moved with step size k·h on steps 0, 5, 10, …):
      mrc       the backbone's gradients are reduced only on its update steps;
      DDP       the seed's official code under DDP: on the k−1 fast steps the backbone's
                parameters get `requires_grad = False` (its backward is skipped), which DDP
                allows only with `find_unused_parameters=True` — and then it still all-reduces
                every bucket, the backbone's as zeros, every step;
      DDP-all   DDP over the whole model every step (full backward and reduction every step),
                the backbone's optimizer stepped every 5th step only (the gradient of the
                other steps is computed, reduced and thrown away);
      DDP-sync  the strongest hand-written loop: the slow step is a plain DDP step (bucketed,
                overlapped reduction of everything); the fast steps run under `ddp.no_sync()`
                with the backbone's requires_grad off, then one hand-written flat all-reduce of
                the head's gradients — the same bytes as mrc.
      Every contender of (b) uses two torch.optim.SGD (head lr h, backbone lr k·h), so all of
      them solve the same equations as mrc.

Bytes are counted, not estimated, on separate probe copies before the timing (so no counting
code is in a timed step), over their second period of 5 steps (DDP rebuilds its buckets after
its first iteration): mrc's by wrapping
`mrc.runtime.world.World.all_reduce` / `broadcast` (every collective of mrc goes through the
World), DDP's by a comm hook (`ddp.register_comm_hook`) that counts each bucket and then
all-reduces it as the default hook does, the hand-written all-reduce by itself. A figure is
`numel · element_size` per rank per step, summed over the collectives of a step.

Time: every contender lives in the same W processes; a repeat runs each of them (rotated order)
for `--periods` whole periods of 5 steps after a barrier; a contender's figure is the median
over the repeats of its seconds per step (rank 0's clock), with min–max; ratios are paired per
repeat. One intra-op thread per process unless `--threads`. After the measured steps the script
checks that mrc and DDP hold the same parameters (full training, and every (b) contender
against mrc's multirate), so the comparison is of equal work.

    python bench/distributed.py --quick          # well under a minute on 2 cores
    python bench/distributed.py [--world 2]      # a few minutes
    torchrun --nproc-per-node 2 bench/distributed.py --quick
    python bench/distributed.py --device cuda --world 2   # NCCL, one GPU per process

Last line: {"bytes_ratio_transfer_k5": …, "time_vs_ddp_full": …, "time_vs_ddp_transfer_k5": …,
"world": …, "device": …, …} (mrc over DDP; for (b) over the seed's code under DDP; the other
baselines' ratios follow).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _common import Spread, interleaved, on_ranks, ratios, sync, world_of
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

K = 5
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4

SPEC = """
model {model}
data {data}
optimizer sgd(lr={lr}, momentum={momentum}, weight_decay={wd})
{partitions}
train(steps={total}, seed=0, device={device}, threads={threads})
"""
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(DDP).parameters
                  else {"broadcast_buffers": False})
"""DDP without its per-forward broadcast of buffers (its newer name where torch has it)."""
PARTITIONS = 'partition head = module("head")\npartition backbone = rest {{ every = {k} }}'


# ---- counting bytes --------------------------------------------------------------------


class Counter:
    """Bytes handed to collectives while `on` (per rank)."""

    def __init__(self) -> None:
        self.on = False
        self.nbytes = 0
        self.calls = 0

    def add(self, tensor: torch.Tensor) -> None:
        if self.on:
            self.nbytes += tensor.numel() * tensor.element_size()
            self.calls += 1

    def measure(self, fn: Callable[[], None]) -> tuple[int, int]:
        """Bytes and calls of the collectives `fn` makes."""
        self.nbytes = self.calls = 0
        self.on = True
        try:
            fn()
        finally:
            self.on = False
        return self.nbytes, self.calls


COUNTER = Counter()


def counting_hook(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's default all-reduce of a bucket (sum, then ÷ world), its bytes counted first."""
    COUNTER.add(bucket.buffer())
    return default_hooks.allreduce_hook(state, bucket)


# DDP checks the hook's annotations as objects (this module's are strings)
counting_hook.__annotations__.update(bucket=dist.GradBucket, state=Any,
                                     **{"return": torch.futures.Future[torch.Tensor]})


class CountingWorld:
    """A context in which mrc's World collectives are counted (patched on the class: the plan's
    lowerings hold the World instance)."""

    def __enter__(self) -> None:
        from mrc.runtime.world import World

        self.saved = World.all_reduce, World.broadcast
        reduce, broadcast = self.saved

        def counted_reduce(w: World, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
            COUNTER.add(tensor)
            return reduce(w, tensor, op)

        def counted_broadcast(w: World, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
            COUNTER.add(tensor)
            return broadcast(w, tensor, src)

        World.all_reduce, World.broadcast = counted_reduce, counted_broadcast  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        from mrc.runtime.world import World

        World.all_reduce, World.broadcast = self.saved  # type: ignore[method-assign]


# ---- the contenders ----------------------------------------------------------------------


@dataclass
class Batches:
    """The global batches (index tensors, full size only) and this rank's share of each."""

    x: torch.Tensor
    y: torch.Tensor
    index: list[torch.Tensor]
    share: tuple[int, int]

    def whole(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.index[t % len(self.index)]
        return self.x[idx], self.y[idx]

    def mine(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share, gathered alone (as a DistributedSampler gives it)."""
        a, b = self.share
        idx = self.index[t % len(self.index)][a:b]
        return self.x[idx], self.y[idx]


class Contender:
    """One training loop with its own model copy and step counter."""

    name = ""

    def __init__(self) -> None:
        self.t = 0

    def step(self, t: int) -> None:
        raise NotImplementedError

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step(self.t)
            self.t += 1

    def state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class Mrc(Contender):
    """An mrc Plan, compiled for W processes and stepped by hand on the global batch."""

    def __init__(self, spec: Path, world: int, total: int, device: torch.device, data: Batches) -> None:
        super().__init__()
        from mrc.api import compile_spec
        from mrc.lower import lower

        compiled = compile_spec(spec, training=True, world=world)
        self.model = compiled.bound.model.to(device)
        compiled.bound.graph_module.to(device)
        self.template = copy.deepcopy(self.model)  # the initialisation, for DDP's copies
        self.plan = lower(compiled.graph, compiled.bound, total, device)
        self.data = data

    def step(self, t: int) -> None:
        x, y = self.data.whole(t)
        self.plan.step(t, x, y)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


class DdpLoop(Contender):
    """A DDP loop over a copy of the initial model; `kind`: full, toggle, all or nosync."""

    def __init__(self, kind: str, template: nn.Module, device: torch.device, data: Batches,
                 count: bool = False) -> None:
        super().__init__()
        self.kind, self.data, self.k = kind, data, K
        self.model = copy.deepcopy(template).to(device)
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        # BatchNorm buffers: mrc keeps each rank's own running statistics until it synchronizes
        # (evaluation, saving); DDP would broadcast rank 0's at every forward (bytes no comm hook
        # sees). The same as mrc: no per-step broadcast.
        self.ddp = DDP(self.model, device_ids=ids, find_unused_parameters=(kind == "toggle"),
                       **NO_BUFFER_SYNC)
        if count:
            self.ddp.register_comm_hook(None, counting_hook)
        self.head = [p for n, p in self.model.named_parameters() if n.startswith("head.")]
        self.body = [p for n, p in self.model.named_parameters() if not n.startswith("head.")]
        kw = {"momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY}
        if kind == "full":
            self.opts = [torch.optim.SGD(self.model.parameters(), lr=LR, **kw)]
        else:
            self.opt_head = torch.optim.SGD(self.head, lr=LR, **kw)
            self.opt_body = torch.optim.SGD(self.body, lr=K * LR, **kw)  # the slow step: k·h
        self.world = dist.get_world_size()
        self.flat = torch.zeros(sum(p.numel() for p in self.head), device=device)
        self.trainable = True

    def _trainable(self, flag: bool) -> None:
        if flag != self.trainable:
            for p in self.body:
                p.requires_grad_(flag)
            self.trainable = flag

    def _reduce_head(self) -> None:
        """The hand-written all-reduce: the head's gradients in one flat buffer, mean over ranks."""
        off = 0
        for p in self.head:
            n = p.numel()
            self.flat[off:off + n].copy_(p.grad.reshape(-1))
            off += n
        COUNTER.add(self.flat)
        dist.all_reduce(self.flat)
        self.flat.div_(self.world)
        off = 0
        for p in self.head:
            n = p.numel()
            p.grad.copy_(self.flat[off:off + n].view_as(p))
            off += n

    def step(self, t: int) -> None:
        x, y = self.data.mine(t)
        if self.kind == "full":
            opt = self.opts[0]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(self.ddp(x), y).backward()
            opt.step()
            return
        slow = t % self.k == 0
        self.opt_head.zero_grad(set_to_none=True)
        self.opt_body.zero_grad(set_to_none=True)
        if self.kind == "all":  # everything every step; the backbone moves on slow steps only
            F.cross_entropy(self.ddp(x), y).backward()
        elif self.kind == "toggle":  # the seed's code: the backbone frozen on fast steps
            self._trainable(slow)
            F.cross_entropy(self.ddp(x), y).backward()
        elif slow:  # nosync, slow step: a plain DDP step
            self._trainable(True)
            F.cross_entropy(self.ddp(x), y).backward()
        else:  # nosync, fast step: no DDP reduction; the head's gradients reduced by hand
            self._trainable(False)
            with self.ddp.no_sync():
                F.cross_entropy(self.ddp(x), y).backward()
            self._reduce_head()
        self.opt_head.step()
        if slow:
            self.opt_body.step()

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


# ---- one rank ----------------------------------------------------------------------------


def model_text(args: argparse.Namespace) -> tuple[str, str]:
    """The model and data statements of the workload."""
    if args.model == "resnet":
        return (f"resnet(depth=8, width={args.width})",
                f"digits(shape=image, batch={args.batch}, val=0.2)")
    hidden = ", ".join([str(args.width)] * args.layers)
    return f"mlp(hidden=[{hidden}])", f"digits(batch={args.batch}, val=0.2)"


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n].double() - b[n].double()).abs().max()) for n in a)


def rank_main(args: argparse.Namespace) -> None:
    from mrc.runtime.world import current
    from mrc.techniques.distributed.bind import blocks

    world = current()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda", world.local_rank % torch.cuda.device_count()) \
        if args.device == "cuda" else torch.device("cpu")
    per_round = args.periods * K
    total = (1 + args.repeats) * per_round + 2 * K  # warm-up round, repeats, probes
    model, data_text = model_text(args)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        specs = {}
        for case, parts in (("full", ""), ("transfer", PARTITIONS.format(k=K))):
            specs[case] = tmp / f"{case}.mrs"
            specs[case].write_text(SPEC.format(model=model, data=data_text, lr=LR, momentum=MOMENTUM,
                                               wd=WEIGHT_DECAY, partitions=parts, total=total,
                                               device=args.device, threads=args.threads))
        from mrc.api import compile_spec

        bundle = compile_spec(specs["full"], training=True, world=world.size).bound.data
        index = [i for e in range(-(-total // max(1, bundle.steps_per_epoch())) + 1)
                 for i in bundle.batch_indices(e) if len(i) == args.batch][:total]
        data = Batches(bundle.train_x.to(device), bundle.train_y.to(device), index,
                       blocks(args.batch, world.size)[world.rank])

        def build(case: str, kind: str, count: bool = False) -> Contender:
            if kind == "mrc":
                return Mrc(specs[case], world.size, total, device, data)
            template = Mrc(specs[case], world.size, total, device, data).template
            return DdpLoop(kind, template, device, data, count)

        kinds = {"full": ("mrc", "full"), "transfer": ("mrc", "toggle", "all", "nosync")}
        names = [(case, kind) for case, ks in kinds.items() for kind in ks]

        # bytes: one period of fresh probe copies, counted
        nbytes: dict[tuple[str, str], tuple[int, int]] = {}
        for case, kind in names:
            probe = build(case, kind, count=True)
            probe.run(K)  # a first period (DDP's first iteration differs: it rebuilds buckets)
            if kind == "mrc":
                with CountingWorld():
                    nbytes[case, kind] = COUNTER.measure(lambda p=probe: p.run(K))
            else:
                nbytes[case, kind] = COUNTER.measure(lambda p=probe: p.run(K))
            del probe

        # time: every contender in these processes, interleaved
        runs = {key: build(*key) for key in names}
        first = runs["full", "mrc"].state()

        def timed(c: Contender) -> Callable[[], float]:
            def block() -> float:
                world.barrier()
                sync(device)
                start = time.perf_counter()
                c.run(per_round)
                sync(device)
                return (time.perf_counter() - start) / per_round
            return block

        for c in runs.values():  # the warm-up round
            c.run(per_round)
        times = interleaved({f"{case}/{kind}": timed(c) for (case, kind), c in runs.items()},
                            args.repeats)
        states = {key: c.state() for key, c in runs.items()}
    diffs = {key: max_diff(states[key], states[key[0], "mrc"]) for key in names if key[1] != "mrc"}
    diffs["moved", ""] = max_diff(states["full", "mrc"], first)  # the check is not of a model at rest
    # every rank's view of the parameter checks (the replicas must agree too)
    all_diffs = world.all_gather_object(diffs)
    worst = {key: max(d[key] for d in all_diffs) for key in diffs}
    moved = worst.pop(("moved", ""))
    if world.rank == 0:
        report(args, world.size, device, nbytes, times, worst, moved, runs)


def report(args: argparse.Namespace, world: int, device: torch.device,
           nbytes: dict[tuple[str, str], tuple[int, int]], times: dict[str, list[float]],
           worst: dict[tuple[str, str], float], moved: float,
           runs: dict[tuple[str, str], Contender]) -> None:
    mrc = runs["full", "mrc"]
    assert isinstance(mrc, Mrc)
    n_all = sum(p.numel() for p in mrc.model.parameters())
    n_head = sum(p.numel() for n, p in mrc.model.named_parameters() if n.startswith("head."))
    per_step = {key: b / K for key, (b, _) in nbytes.items()}
    calls = {key: c / K for key, (_, c) in nbytes.items()}
    spread = {key: Spread.of(ts) for key, ts in times.items()}
    model, data_text = model_text(args)
    backend = "nccl" if device.type == "cuda" else "gloo"
    print(f"model {model}: {n_all:,} parameters, head {n_head:,} ({n_head / n_all:.1%}); "
          f"data {data_text}, {args.batch // world} per rank; world {world}, {backend}, {device.type}, "
          f"{args.threads} intra-op thread(s) per process; {args.repeats} interleaved repeats of "
          f"{args.periods} periods of {K} steps each: median [min–max]")
    rows = (
        ("full", "mrc", "(a) mrc, one partition"),
        ("full", "full", "(a) DDP + torch.optim"),
        ("transfer", "mrc", f"(b) mrc, backbone every {K}"),
        ("transfer", "toggle", "(b) DDP, seed's requires_grad toggle"),
        ("transfer", "all", f"(b) DDP-all, backbone stepped every {K}th"),
        ("transfer", "nosync", "(b) DDP-sync, no_sync + hand all-reduce"),
    )
    print(f"{'':<44}{'bytes/step':>12}{'calls/step':>11}{'ms/step':>26}")
    for case, kind, label in rows:
        print(f"{label:<44}{per_step[case, kind]:>12,.0f}{calls[case, kind]:>11.1f}"
              f"{spread[f'{case}/{kind}'].fmt(1e3, 3):>26}")

    def t_ratio(case: str, kind: str) -> Spread:
        return ratios(times[f"{case}/mrc"], times[f"{case}/{kind}"])

    def b_ratio(case: str, kind: str) -> float:
        return per_step[case, "mrc"] / per_step[case, kind]

    print("mrc / baseline (time paired per repeat):")
    for case, kind, label in rows:
        if kind != "mrc":
            print(f"  vs {label[4:]:<40} bytes {b_ratio(case, kind):.3f}   time {t_ratio(case, kind).fmt()}")
    tol = 1e-5
    same = {key: d <= tol for key, d in worst.items()}
    print(f"same parameters as mrc after the {mrc.t} steps each ran (max |Δ| over ranks, ≤ {tol:g}; the "
          f"parameters moved by up to {moved:.2e} from their start): " +
          ", ".join(f"{case}/{kind} {worst[case, kind]:.1e} {same[case, kind]}" for case, kind in worst))
    full_t, tr_t = t_ratio("full", "full"), t_ratio("transfer", "toggle")
    print(json.dumps({
        "bytes_ratio_transfer_k5": round(b_ratio("transfer", "toggle"), 4),
        "time_vs_ddp_full": round(full_t.median, 3),
        "time_vs_ddp_transfer_k5": round(tr_t.median, 3),
        "world": world, "device": device.type,
        "bytes_ratio_full": round(b_ratio("full", "full"), 4),
        "bytes_ratio_vs_ddp_all_transfer_k5": round(b_ratio("transfer", "all"), 4),
        "bytes_ratio_vs_ddp_nosync_transfer_k5": round(b_ratio("transfer", "nosync"), 4),
        "time_vs_ddp_all_transfer_k5": round(t_ratio("transfer", "all").median, 3),
        "time_vs_ddp_nosync_transfer_k5": round(t_ratio("transfer", "nosync").median, 3),
        "time_spread": {"full": full_t.as_json(3), "transfer_k5": tr_t.as_json(3)},
        "bytes_per_step": {f"{c}/{k}": int(b) for (c, k), b in per_step.items()},
        "ms_per_step": {key: round(s.median * 1e3, 3) for key, s in spread.items()},
        "same_params_full": same["full", "full"],
        "same_params_transfer": all(v for (c, _), v in same.items() if c == "transfer"),
        "max_abs_diff_full": worst["full", "full"],
        "model": model, "backend": "nccl" if device.type == "cuda" else "gloo",
        "threads": args.threads, "repeats": args.repeats, "periods": args.periods}))


# ---- launching ----------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2, help="processes (ignored under torchrun)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--model", default="mlp", choices=("mlp", "resnet"))
    ap.add_argument("--width", type=int, default=None, help="hidden width (mlp) or base width (resnet)")
    ap.add_argument("--layers", type=int, default=3, help="hidden layers of the mlp")
    ap.add_argument("--batch", type=int, default=None, help="the global batch")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--periods", type=int, default=None, help="whole periods of 5 steps per timing")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    ap.add_argument("--quick", action="store_true", help="a smaller model, fewer repeats")
    args = ap.parse_args()
    quick = args.quick
    if args.width is None:
        args.width = (256 if quick else 1024) if args.model == "mlp" else (16 if quick else 32)
    args.batch = args.batch or (64 if quick else 128)
    args.repeats = args.repeats or (5 if quick else 9)
    args.periods = args.periods or (2 if quick else 4)
    args.world = world_of(args.world)
    if args.world < 2:
        ap.error("--world must be at least 2")
    if args.batch % args.world:
        ap.error(f"--batch {args.batch} does not split evenly across {args.world} processes")
    if args.device == "cuda" and torch.cuda.device_count() < args.world:
        ap.error(f"--device cuda needs one GPU per process: {torch.cuda.device_count()} for "
                 f"--world {args.world}")
    on_ranks(rank_main, args, threads=args.threads, backend="auto", device=args.device)


if __name__ == "__main__":
    main()
