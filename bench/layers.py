"""MGRIT across ranks (`distributed layers`) against one-process MGRIT and the serial network.

The time of one whole training step (forward + backward + update, `plan.step(t, x, y)` of
`mrc.lower.lower(compiled.graph, compiled.bound, total)`) for `ode_resnet(width=W, depth=D,
h=0.01)` (dense, tanh) on `levelsets(batch=64)`, sgd(lr=0.05, momentum=0.9), one-shot MGRIT
(levels 3, coarsening 4, FCF, 2 forward / 1 backward iterations, warm start), of

  layers    MGRIT across the world's N ranks (compiled with world=N, `distributed layers`): each
            rank relaxes its block of the stack's layers, exchanges one state per block boundary
            with its neighbours, solves the gathered coarsest level; stem, head and update are
            replicated on every rank; one intra-op thread per rank. Timed on rank 0.
  data      for reference, the same MGRIT spec with `distributed data` on the same N ranks (the
            batch split, each rank solving the whole stack on its share).
  mgrit-1   the same MGRIT spec in one process (compiled with world=1) on rank 0 only, with N
            intra-op threads, and `mgrit-1t` the same with one thread; the other ranks wait at a
            barrier.
  serial-1  the serial network (the spec without `mgrit`) on rank 0 only with N intra-op threads,
            and `serial-1t` the same with one thread.
The baseline of each speed-up is the faster of the N-thread and the 1-thread run (the best a
careful user does with the same cores; the table says which).

All contenders live in the same N processes; a repeat runs each of them (rotated order) for
`--steps` whole steps between two barriers (after warm-up steps), on a fixed cycle of 8 batches;
figures are medians over the repeats with [min–max]; the speed-ups serial/layers and
mgrit-1/layers are paired per repeat. After the timing the script checks that `layers` (on
every rank) and `mgrit-1` hold the same parameters after the same steps (equal work: float32
~1e-5, `--dtype float64` ~1e-12), then runs a few probe steps of `layers` with clocks around the
MGRIT solves, the point-to-point messages, the collectives and the gradient sum, for where the
time goes (communication includes waiting for the other rank), and reports how much CPU the
waiting ranks used during the one-process contenders (a busy-waiting barrier would steal a core).

    python bench/layers.py --quick          # (256, 8) and (1024, 8), well under a minute on 2 cores
    python bench/layers.py [--world 2]      # (256, 8), (1024, 8), (256, 32), (1024, 32): ≤ 3 min
    python bench/layers.py --world 4        # 4 processes (oversubscribed on a 2-core machine)

Last line: {"speedup_layers_vs_serial_d1024_w8": …, "speedup_layers_vs_mgrit1_d1024_w8": …,
"world": …, "device": …, …}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import Spread, interleaved, on_ranks, ratios, world_of

SPEC = """
model ode_resnet(width={width}, depth={depth}, h=0.01)
data levelsets(batch={batch})
optimizer sgd(lr=0.05, momentum=0.9)
train(steps=10, seed=0, dtype={dtype})
{mgrit}
{distributed}
"""
MGRIT = ('mgrit "stack" { levels = 3; coarsening = 4; relax = FCF; forward_iters = 2; '
         'backward_iters = 1 }')
N_BATCHES = 8
NAMES = ("layers", "data", "mgrit-1", "mgrit-1t", "serial-1", "serial-1t")


class Contender:
    """One Plan stepped on a fixed cycle of batches, on every rank (`everywhere`) or on rank 0."""

    def __init__(self, spec: Path, world: Any, everywhere: bool, threads: int, total: int,
                 dtype: torch.dtype) -> None:
        from mrc.api import compile_spec
        from mrc.lower import lower
        from mrc.runtime.world import SOLO

        self.world, self.everywhere, self.threads, self.t = world, everywhere, threads, 0
        self.runs_here = everywhere or world.rank == 0
        self.compiled = compile_spec(spec, training=True, world=world.size if everywhere else 1)
        self.plan = None
        if self.runs_here:
            self.plan = lower(self.compiled.graph, self.compiled.bound, total,
                              world=None if everywhere else SOLO)
        data = self.compiled.bound.data
        self.batches = [(x.to(dtype), y) for x, y in (data.batch(0, i) for i in range(N_BATCHES))]
        self.idle_cpu = 0.0  # CPU seconds this (waiting) rank used during the timed rounds

    def steps(self, n: int) -> None:
        assert self.plan is not None
        loss = None
        for _ in range(n):
            x, y = self.batches[self.t % N_BATCHES]
            loss = self.plan.step(self.t, x, y)
            self.t += 1
        if loss is not None:
            float(loss)

    def timed(self, n: int) -> float:
        """Seconds per step over n steps between two barriers (rank 0's clock); a rank that does
        not run this contender waits at the barriers."""
        if self.runs_here:
            torch.set_num_threads(self.threads)
        self.world.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        if self.runs_here:
            self.steps(n)
        self.world.barrier()
        secs = time.perf_counter() - start
        if not self.runs_here:
            self.idle_cpu += time.process_time() - cpu
        return secs / n

    def params(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.compiled.bound.graph_module.named_parameters()}


class Clocks:
    """Seconds spent in the MGRIT solves, the point-to-point messages, the collectives and the stack's
    gradient sum while on (patched on the classes and on torch.distributed: the Plan's lowerings
    hold the instances, ranks.py looks `dist.isend`/`dist.recv` up at each call)."""

    def __init__(self) -> None:
        self.secs: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.nbytes = {"solves": 0, "gradient sum": 0}
        self._depth = 0

    def add(self, key: str, secs: float, call: bool = True) -> None:
        self.secs[key] = self.secs.get(key, 0.0) + secs
        if call:
            self.calls[key] = self.calls.get(key, 0) + 1

    def __enter__(self) -> Clocks:
        import torch.distributed as dist

        from mrc.runtime.world import World
        from mrc.techniques.distributed.buckets import GradBucket
        from mrc.techniques.mgrit.lower import StackSolve

        self.saved = (dist.isend, dist.recv, World.all_reduce, World.broadcast, GradBucket.all_reduce,
                      StackSolve.forward, StackSolve.backward)
        isend, recv, reduce, broadcast, bucket, fwd, bwd = self.saved
        clocks = self

        def clocked(key: str, fn: Callable[..., Any], nested: bool = False) -> Callable[..., Any]:
            def wrapper(*args: Any, **kw: Any) -> Any:
                if nested and clocks._depth:  # inside the gradient sum: counted there
                    return fn(*args, **kw)
                start = time.perf_counter()
                out = fn(*args, **kw)
                clocks.add(key, time.perf_counter() - start)
                return out
            return wrapper

        class Waited:
            def __init__(self, work: Any) -> None:
                self.work = work

            def wait(self) -> Any:
                start = time.perf_counter()
                out = self.work.wait()
                clocks.add("p2p", time.perf_counter() - start, call=False)
                return out

        def timed_isend(tensor: torch.Tensor, *args: Any, **kw: Any) -> Any:
            clocks.nbytes["solves"] += tensor.numel() * tensor.element_size()
            start = time.perf_counter()
            work = isend(tensor, *args, **kw)
            clocks.add("p2p", time.perf_counter() - start)
            return Waited(work)

        def counted(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
            inner = clocked(key, fn, nested=True)

            def wrapper(w: Any, tensor: torch.Tensor, *args: Any, **kw: Any) -> Any:
                clocks.nbytes["gradient sum" if clocks._depth else "solves"] += tensor.numel() * tensor.element_size()
                return inner(w, tensor, *args, **kw)
            return wrapper

        def summed(b: Any, *args: Any, **kw: Any) -> Any:
            clocks._depth += 1
            try:
                return clocked("gradient sum (pack, all-reduce, unpack)", bucket)(b, *args, **kw)
            finally:
                clocks._depth -= 1

        dist.isend = timed_isend
        dist.recv = clocked("p2p", recv)
        World.all_reduce = counted(reduce, "collectives in the solves")  # type: ignore[method-assign]
        World.broadcast = counted(broadcast, "collectives in the solves")  # type: ignore[method-assign]
        GradBucket.all_reduce = summed  # type: ignore[method-assign]
        StackSolve.forward = clocked("forward solve", fwd)  # type: ignore[method-assign]
        StackSolve.backward = clocked("adjoint solve + block gradients", bwd)  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        import torch.distributed as dist

        from mrc.runtime.world import World
        from mrc.techniques.distributed.buckets import GradBucket
        from mrc.techniques.mgrit.lower import StackSolve

        (dist.isend, dist.recv, World.all_reduce, World.broadcast, GradBucket.all_reduce,  # type: ignore[method-assign]
         StackSolve.forward, StackSolve.backward) = self.saved


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n].double() - b[n].double()).abs().max()) for n in a)


def run_config(tmp: Path, world: Any, width: int, depth: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every rank's part of one configuration; the figures on rank 0 (empty elsewhere)."""
    fmt = {"width": width, "depth": depth, "batch": args.batch, "dtype": args.dtype}
    specs = {}
    for name, line, mode in (("serial", "", ""), ("mgrit", MGRIT, ""), ("layers", MGRIT, "distributed layers"),
                             ("data", MGRIT, "distributed data")):
        specs[name] = tmp / f"{name}_w{width}_d{depth}.mrs"
        if world.rank == 0:
            specs[name].write_text(SPEC.format(**fmt, mgrit=line, distributed=mode))
    world.barrier()
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    total = args.warmup + args.repeats * args.steps + args.probe + 1
    n = world.size
    runs = {  # name: (spec, on every rank, intra-op threads)
        "layers": (specs["layers"], True, 1), "data": (specs["data"], True, 1),
        "mgrit-1": (specs["mgrit"], False, n), "mgrit-1t": (specs["mgrit"], False, 1),
        "serial-1": (specs["serial"], False, n), "serial-1t": (specs["serial"], False, 1),
    }
    assert tuple(runs) == NAMES
    cs = {name: Contender(spec, world, every, threads, total, dtype) for name, (spec, every, threads) in runs.items()}
    first = cs["layers"].params()
    for c in cs.values():  # warm-up (the MGRIT solves are made at the first step)
        c.timed(args.warmup)
    for c in cs.values():
        c.idle_cpu = 0.0
    times = interleaved({name: (lambda c=c: c.timed(args.steps)) for name, c in cs.items()}, args.repeats)

    # equal work: every rank's `layers` (and `data`) replica against one process's MGRIT after the same steps
    assert world.rank != 0 or cs["layers"].t == cs["data"].t == cs["mgrit-1"].t == cs["mgrit-1t"].t
    one = world.all_gather_object(cs["mgrit-1"].params() if world.rank == 0 else None)[0]
    diffs = world.all_gather_object({k: max_diff(cs[k].params(), one) for k in ("layers", "data")})
    moved = max_diff(cs["layers"].params(), first)

    # where the time goes: probe steps of `layers` with clocks (after the check: they move it on)
    torch.set_num_threads(1)
    world.barrier()
    with Clocks() as clocks:
        start = time.perf_counter()
        cs["layers"].steps(args.probe)
        step = time.perf_counter() - start
    parts = {k: v / args.probe for k, v in clocks.secs.items()}
    parts["whole step"] = step / args.probe
    probe = world.all_gather_object({"parts": parts, "bytes": {k: v / args.probe for k, v in clocks.nbytes.items()},
                                     "calls": {k: v / args.probe for k, v in clocks.calls.items()}})
    idle = world.all_gather_object(sum(c.idle_cpu for c in cs.values()))
    alone = [k for k, (_, every, _) in runs.items() if not every]
    idle_wall = sum(sum(times[k]) * args.steps for k in alone)
    text = cs["layers"].compiled.graph.to_text()
    for c in cs.values():
        c.plan = None
    if world.rank != 0:
        return {}
    shown = next((line for line in text.splitlines() if "(forward) on ranks" in line), "")
    shown = shown[shown.find("blocks"):].split(" @")[0] if "blocks" in shown else ""
    return {"times": times, "moved": moved, "probe": probe, "steps_each": cs["layers"].t, "blocks": shown,
            "diff": {k: max(d[k] for d in diffs) for k in ("layers", "data")},
            "idle_cpu_per_s": max(idle[1:]) / idle_wall if len(idle) > 1 and idle_wall else 0.0}


def latency(world: Any, rounds: int = 50) -> dict[str, float]:
    """The machine's message latency, for scale: median seconds of a one-way send of a state-sized tensor
    between ranks 0 and 1 (half a ping-pong), and of an all-reduce of one number over every rank."""
    import statistics

    import torch.distributed as dist

    x, one, pings, reduces = torch.zeros(64, 8), torch.zeros(1, dtype=torch.float64), [], []
    world.barrier()
    for _ in range(rounds):
        start = time.perf_counter()
        if world.rank == 0:
            dist.send(x, 1)
            dist.recv(x, 1)
        elif world.rank == 1:
            dist.recv(x, 0)
            dist.send(x, 0)
        pings.append((time.perf_counter() - start) / 2)
    world.barrier()
    for _ in range(rounds):
        start = time.perf_counter()
        world.all_reduce(one)
        reduces.append(time.perf_counter() - start)
    return {"p2p_one_way": statistics.median(pings), "all_reduce_1": statistics.median(reduces)}


def rank_main(args: argparse.Namespace) -> None:
    from mrc.runtime.world import current

    world = current()
    lat = latency(world)
    configs = [(8, 256), (8, 1024)] if args.quick else [(8, 256), (8, 1024), (32, 256), (32, 1024)]
    wall = time.perf_counter()
    out: dict[tuple[int, int], dict[str, Any]] = {}
    tmp = Path(world.all_gather_object(tempfile.mkdtemp() if world.rank == 0 else "")[0])  # one machine
    try:
        for width, depth in configs:
            out[width, depth] = run_config(tmp, world, width, depth, args)
    finally:
        world.barrier()
        if world.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    if world.rank == 0:
        report(args, world.size, out, lat, time.perf_counter() - wall)


def best_of(sp: dict[str, Spread], *names: str) -> str:
    return min(names, key=lambda n: sp[n].median)


def report(args: argparse.Namespace, world: int, out: dict[tuple[int, int], dict[str, Any]],
           lat: dict[str, float], wall: float) -> None:
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    tol = 1e-12 if args.dtype == "float64" else 1e-5
    print(f"ode_resnet dense tanh h=0.01, levelsets batch {args.batch}, sgd(0.05, momentum 0.9), {args.dtype}; "
          f"MGRIT: 3 levels, cf 4, FCF, 2 fwd / 1 bwd iterations, warm start; world {world} (gloo, CPU, "
          f"{cores} cores{', OVERSUBSCRIBED' if world > cores else ''}); torch {torch.__version__}; "
          f"{args.repeats} interleaved repeats × {args.steps} steps: ms per step, median [min–max]; "
          f"load average {load[0]:.1f} at the end")
    heads = {"layers": f"layers ({world} ranks)", "data": f"data ({world} ranks)", "mgrit-1": f"mgrit-1 ({world} thr)",
             "mgrit-1t": "mgrit-1t (1 thr)", "serial-1": f"serial-1 ({world} thr)", "serial-1t": "serial-1t (1 thr)"}
    print(f"{'width':>5} {'depth':>5} " + " ".join(f"{heads[n]:>22}" for n in NAMES))
    summary: dict[str, Any] = {}
    table: dict[str, Any] = {}
    lines = []
    for (width, depth), r in out.items():
        ts = r["times"]
        sp = {n: Spread.of(ts[n]) for n in NAMES}
        serial, mgrit = best_of(sp, "serial-1", "serial-1t"), best_of(sp, "mgrit-1", "mgrit-1t")
        up = {"serial": ratios(ts[serial], ts["layers"]), "mgrit1": ratios(ts[mgrit], ts["layers"]),
              "mgrit1_nthreads": ratios(ts["mgrit-1"], ts["layers"]), "data": ratios(ts["data"], ts["layers"])}
        key = f"d{depth}_w{width}"
        summary[f"speedup_layers_vs_serial_{key}"] = round(up["serial"].median, 3)
        summary[f"speedup_layers_vs_mgrit1_{key}"] = round(up["mgrit1"].median, 3)
        table[key] = {"ms": {n: s.as_json(5) for n, s in sp.items()}, "serial_baseline": serial,
                      "mgrit1_baseline": mgrit, **{f"layers_vs_{k}": v.as_json(3) for k, v in up.items()},
                      "same_params": r["diff"]["layers"] <= tol, "max_abs_diff": r["diff"]["layers"],
                      "max_abs_diff_data": r["diff"]["data"], "moved": round(r["moved"], 4), "blocks": r["blocks"],
                      "probe_ms": [{k: round(v * 1e3, 3) for k, v in p["parts"].items()} for p in r["probe"]],
                      "probe_calls_per_step": [p["calls"] for p in r["probe"]],
                      "probe_bytes_per_step": [{k: int(v) for k, v in p["bytes"].items()} for p in r["probe"]],
                      "idle_rank_cpu_per_s": round(r["idle_cpu_per_s"], 3)}
        print(f"{width:>5} {depth:>5} " + " ".join(f"{sp[n].fmt(1e3, 2):>22}" for n in NAMES))
        lines.append(f"{width:>5} {depth:>5} {up['serial'].fmt(1, 3):>22} {serial:>10} {up['mgrit1'].fmt(1, 3):>22} "
                     f"{mgrit:>9} {up['mgrit1_nthreads'].fmt(1, 3):>22} {up['data'].fmt(1, 3):>22}")
    print("speed-ups of layers, paired per repeat (baseline: the faster of the N-thread and 1-thread runs):")
    print(f"{'width':>5} {'depth':>5} {'serial/layers':>22} {'(baseline)':>10} {'mgrit-1/layers':>22} "
          f"{'(baseline)':>9} {f'mgrit-1 ({world} thr)/layers':>22} {'data/layers':>22}")
    print("\n".join(lines))
    print(f"same parameters as one process's MGRIT after the {next(iter(out.values()))['steps_each']} steps each "
          f"ran (max |Δ| over every rank's replica, ≤ {tol:g}): "
          + "; ".join(f"d{d} w{w} layers {r['diff']['layers']:.1e}, data {r['diff']['data']:.1e} "
                      f"(moved {r['moved']:.2e})" for (w, d), r in out.items()))
    print(f"where a `layers` step goes ({args.probe} probe steps with clocks, ms per step per rank; communication "
          "includes waiting for the other ranks; calls per step):")
    for (width, depth), r in out.items():
        print(f"  d{depth} w{width}, forward {r['blocks']}; the waiting ranks used {r['idle_cpu_per_s']:.3f} "
              "CPU-s per s during the one-process contenders")
        for rank, p in enumerate(r["probe"]):
            parts, calls = p["parts"], p["calls"]
            solves = parts.get("forward solve", 0) + parts.get("adjoint solve + block gradients", 0)
            comm = parts.get("p2p", 0) + parts.get("collectives in the solves", 0)
            grad_sum = parts.get("gradient sum (pack, all-reduce, unpack)", 0)
            rest = parts["whole step"] - solves - grad_sum
            print(f"    rank {rank}: step {parts['whole step'] * 1e3:.2f} = solves {solves * 1e3:.2f} (of them "
                  f"p2p {parts.get('p2p', 0) * 1e3:.2f} in {calls.get('p2p', 0):.0f} sends+recvs, collectives "
                  f"{parts.get('collectives in the solves', 0) * 1e3:.2f} in "
                  f"{calls.get('collectives in the solves', 0):.0f}; compute {(solves - comm) * 1e3:.2f}) + gradient "
                  f"sum {grad_sum * 1e3:.2f} + the rest {rest * 1e3:.2f} (stem, head, update: replicated); "
                  f"sent per step {int(p['bytes']['solves']):,} B in the solves, "
                  f"{int(p['bytes']['gradient sum']):,} B in the gradient sum")
    print(f"gloo latency on this machine (median of 50, rank 0's clock): one-way send of a 64×8 state "
          f"{lat['p2p_one_way'] * 1e3:.3f} ms, all-reduce of one number {lat['all_reduce_1'] * 1e3:.3f} ms")
    print(f"wall time {wall:.0f} s")
    w8 = "d1024_w8"
    print(json.dumps({
        "speedup_layers_vs_serial_d1024_w8": summary.get(f"speedup_layers_vs_serial_{w8}"),
        "speedup_layers_vs_mgrit1_d1024_w8": summary.get(f"speedup_layers_vs_mgrit1_{w8}"),
        "world": world, "device": "cpu", "backend": "gloo", "oversubscribed": world > cores, **summary,
        "same_params": all(t["same_params"] for t in table.values()), "configs": table,
        "dtype": args.dtype, "batch": args.batch, "repeats": args.repeats, "steps": args.steps,
        "cores": cores, "load_avg_end": round(load[0], 2), "quick": args.quick,
        "latency_ms": {k: round(v * 1e3, 4) for k, v in lat.items()},
        "torch": torch.__version__, "wall_s": round(wall, 1)}))


# ---- launching ----------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2, help="processes (ignored under torchrun)")
    ap.add_argument("--quick", action="store_true", help="2 configurations, fewer repeats and steps")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per timed sample")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = ap.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.steps = args.steps or (4 if args.quick else 8)
    args.warmup = 2 if args.quick else 3
    args.probe = 2 if args.quick else 4
    args.world = world_of(args.world)
    if args.world < 2:
        ap.error("--world must be at least 2")
    on_ranks(rank_main, args)

if __name__ == "__main__":
    main()
