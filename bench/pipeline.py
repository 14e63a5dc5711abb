"""Module pipelines (`distributed pipeline`) against the same module-wise training in one process.

The time of one whole training step (every module's forward, auxiliary head, local loss,
backward and update: `plan.step(t, x, y)` of `mrc.lower.lower(compiled.graph, compiled.bound,
total)`) of parallel TRGL on the digits as 1×8×8 images, batch 64, sgd(lr=0.1, momentum=0.9,
weight_decay=5e-4), K = 2·N modules (`split = equal(K)`, `transport = fixed(tau=0.5)`, `regime =
parallel`), for `resnet(depth=20, width=16)` with `aux = conv(width=16)` (the family of
specs/modules_trgl.mrs; the last line's figures), and by default also `resnet(depth=20,
width=32)` and `ode_resnet(width=32, depth=8, h=0.5, variant=conv)` with `aux = mlp(hidden=32)`
(no batch norm anywhere: its micro-batched pipeline can be checked against one process), of

  pipe-sync-1  `distributed pipeline(micro_batches=1, buffers=sync)` on the world's N ranks: the
               modules in contiguous blocks, 2 per rank; each rank trains its modules and sends
               its last module's detached output on; one intra-op thread per rank. A send does
               not wait for the receiver (only, at its next call, for its previous message to
               have been taken), so rank r already runs step t+1 while rank r+1 runs step t;
  pipe-sync-M  the same with micro_batches = M (`--micro`, default 4): a batch enters rank r+1 in
               M pieces, so the pipeline fills and drains in 1/M of a stage (the overlap a
               pipeline is for);
  pipe-stale   `buffers=stale`, 1 micro-batch: rank r trains on its predecessor's previous
               message instead of waiting for this step's (the seed's batch buffers; a
               different algorithm, so it is checked for moving only);
  one-N        the same module-wise spec (without `distributed`) in one process, on rank 0 only,
               with N intra-op threads (a block stops after CAP_S seconds, at least one step),
               and `one-1` the same with one thread; the other ranks wait at a barrier.
The baseline of each speed-up one/pipe is the faster of one-N and one-1 (the best a careful
user does with the same cores; the table says which).

All contenders live in the same N processes; a repeat runs each of them (rotated order) for
`--steps` whole steps between two barriers (after warm-up steps), on a fixed cycle of 8 batches;
a figure is rank 0's seconds between the barriers over the steps (so a pipeline's fill and
drain, one stage per block, is in it), the median over the repeats with [min–max]; the
speed-ups are paired per repeat. Each pipeline's messages carry their own tags (a thin wrapper
around `torch.distributed.isend` / `recv` adds a per-contender offset), so a stale pipeline's
message still in flight at the end of its block is not taken by another contender's receive;
the same wrapper clocks, on every rank, the time spent in receives and in a send's wait for its
previous message (waiting for the other rank, plus the transfer); the rest of a rank's busy time
is compute. After the timing the script checks equal work: every contender ran the same steps
(one-N: see CAP_S); `pipe-sync-1`, made whole (`Plan.synchronize`), holds the same parameters
and buffers as `one-1` (the same ops on one thread: float32 ≤ 1e-5, in practice exactly; `--dtype
float64` 1e-12); `pipe-sync-M` is reported against it too (equal up to rounding without batch
norm; batch norm normalises each micro-batch by its own statistics, a different training);
every contender moved its parameters.

    python bench/pipeline.py --quick        # the resnet width 16 only, well under a minute
    python bench/pipeline.py [--world 2]    # the three models: ≤ 3 min on 2 cores
    python bench/pipeline.py --world 4      # 4 processes, K = 8 (oversubscribed on 2 cores)

Last line: {"speedup_sync1": …, "speedup_syncM": …, "speedup_stale": …, "world": …, "device":
…, …} (one/pipe for resnet width 16; every configuration's follow).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import Spread, interleaved, on_ranks, ratios, world_of

SPEC = """
model {model}
data digits(shape=image, batch={batch}, val=0.2)
optimizer sgd(lr=0.1, momentum=0.9, weight_decay=5e-4)
train(steps=10, seed=0, dtype={dtype})
modules {{ split = equal({k}); aux = {aux}; transport = fixed(tau=0.5); regime = parallel }}
{distributed}
"""
N_BATCHES = 8
NAMES = ("pipe-sync-1", "pipe-sync-M", "pipe-stale", "one-N", "one-1")
PIPES = NAMES[:3]
_TAGS = itertools.count(1)
CAP_S = 1.0
"""A block of `one-N` (several intra-op threads) stops after this many seconds (at least one
step): on a shared 2-core machine two spinning intra-op threads have been 50× slower than one,
which would make the run take minutes for a baseline that then loses anyway."""


class Messages:
    """`torch.distributed.isend` / `recv` wrapped for the whole run (mrc's send/recv lowerings
    look them up at each call): the tags of the contender now stepping get its offset, and its
    seconds in receives and in waits on earlier sends are added to its counters."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.current: Contender | None = None
        self.saved = (dist.isend, dist.recv)
        isend, recv = self.saved
        messages = self

        class Waited:
            def __init__(self, work: Any, owner: Contender | None) -> None:
                self.work, self.owner = work, owner

            def wait(self) -> Any:
                start = time.perf_counter()
                out = self.work.wait()
                if self.owner is not None:
                    self.owner.send_wait += time.perf_counter() - start
                return out

        def tagged_isend(tensor: torch.Tensor, *args: Any, tag: int = 0, **kw: Any) -> Any:
            c = messages.current
            work = isend(tensor, *args, tag=tag + (c.tag if c else 0), **kw)
            if c is not None:
                c.sent += tensor.numel() * tensor.element_size()
            return Waited(work, c)

        def tagged_recv(tensor: torch.Tensor, *args: Any, tag: int = 0, **kw: Any) -> Any:
            c = messages.current
            start = time.perf_counter()
            out = recv(tensor, *args, tag=tag + (c.tag if c else 0), **kw)
            if c is not None:
                c.recv_wait += time.perf_counter() - start
                c.recvs += 1
            return out

        dist.isend, dist.recv = tagged_isend, tagged_recv

    def close(self) -> None:
        import torch.distributed as dist

        dist.isend, dist.recv = self.saved


class Contender:
    """One Plan stepped on a fixed cycle of batches, on every rank (`everywhere`) or on rank 0."""

    def __init__(self, spec: Path, world: Any, everywhere: bool, threads: int, total: int,
                 dtype: torch.dtype, messages: Messages) -> None:
        from mrc.api import compile_spec
        from mrc.lower import lower
        from mrc.runtime.world import SOLO

        self.world, self.everywhere, self.threads, self.t = world, everywhere, threads, 0
        self.messages, self.tag = messages, 1000 * next(_TAGS)
        self.runs_here = everywhere or world.rank == 0
        self.compiled = compile_spec(spec, training=True, world=world.size if everywhere else 1)
        self.plan = None
        if self.runs_here:
            self.plan = lower(self.compiled.graph, self.compiled.bound, total,
                              world=None if everywhere else SOLO)
        data = self.compiled.bound.data
        self.batches = [(x.to(dtype), y) for x, y in (data.batch(0, i) for i in range(N_BATCHES))]
        self.first = self.state()
        self.reset()

    def reset(self) -> None:
        """Zero the counters of the timed blocks."""
        self.busy = self.cpu = self.recv_wait = self.send_wait = self.idle_cpu = 0.0
        self.sent = self.recvs = self.timed_steps = 0

    def steps(self, n: int, cap: float = 0.0) -> int:
        """n steps (with `cap` > 0: fewer, at least one, once `cap` seconds have passed); how many."""
        assert self.plan is not None
        loss = None
        start = time.perf_counter()
        self.messages.current = self
        done = 0
        try:
            while done < n and not (cap and done and time.perf_counter() - start > cap):
                x, y = self.batches[self.t % N_BATCHES]
                loss = self.plan.step(self.t, x, y)
                self.t += 1
                done += 1
                if cap and loss is not None:
                    float(loss)
            if loss is not None:
                float(loss)
        finally:
            self.messages.current = None
        return done

    def timed(self, n: int) -> float:
        """Seconds per step over n steps between two barriers (rank 0's clock); a rank that does
        not run this contender waits at the barriers. A one-process contender with several
        threads stops after `CAP_S` (see there)."""
        if self.runs_here:
            torch.set_num_threads(self.threads)
        self.world.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        done = n
        if self.runs_here:
            done = self.steps(n, CAP_S if not self.everywhere and self.threads > 1 else 0.0)
            self.busy += time.perf_counter() - start
            self.cpu += time.process_time() - cpu
            self.timed_steps += done
        self.world.barrier()
        secs = time.perf_counter() - start
        if not self.runs_here:
            self.idle_cpu += time.process_time() - cpu
        return secs / done

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.compiled.bound.model.state_dict().items()
                if v.is_floating_point()}

    def counters(self) -> dict[str, float]:
        """This rank's ms per timed step: busy (from the first barrier to its last step's end),
        in receives, in waits on its sends; bytes sent and receives per step."""
        n = max(self.timed_steps, 1)
        return {"busy": self.busy / n, "recv": self.recv_wait / n, "send_wait": self.send_wait / n,
                "bytes": self.sent / n, "recvs": self.recvs / n, "cpu_per_busy": self.cpu / max(self.busy, 1e-9)}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n].double() - b[n].double()).abs().max()) for n in a)


def run_config(tmp: Path, world: Any, key: str, model: tuple[str, str], args: argparse.Namespace,
               messages: Messages) -> dict[str, Any]:
    """Every rank's part of one configuration; the figures on rank 0 (empty elsewhere)."""
    n = world.size
    k = 2 * n
    fmt = {"model": model[0], "aux": model[1], "batch": args.batch, "dtype": args.dtype, "k": k}
    lines = {"one": "", "sync1": "distributed pipeline(micro_batches=1, buffers=sync)",
             "syncM": f"distributed pipeline(micro_batches={args.micro}, buffers=sync)",
             "stale": "distributed pipeline(micro_batches=1, buffers=stale)"}
    specs = {name: tmp / f"{name}_{key}.mrs" for name in lines}
    if world.rank == 0:
        for name, line in lines.items():
            specs[name].write_text(SPEC.format(**fmt, distributed=line))
    world.barrier()
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    total = args.warmup + args.repeats * args.steps + 1
    runs = {  # name: (spec, on every rank, intra-op threads)
        "pipe-sync-1": (specs["sync1"], True, 1), "pipe-sync-M": (specs["syncM"], True, 1),
        "pipe-stale": (specs["stale"], True, 1), "one-N": (specs["one"], False, n), "one-1": (specs["one"], False, 1),
    }
    assert tuple(runs) == NAMES
    cs = {name: Contender(spec, world, every, threads, total, dtype, messages)
          for name, (spec, every, threads) in runs.items()}
    for c in cs.values():  # warm-up (the stale pipeline fills its buffer at the first step)
        c.timed(args.warmup)
    for c in cs.values():
        c.reset()
    times = interleaved({name: (lambda c=c: c.timed(args.steps)) for name, c in cs.items()}, args.repeats)

    # equal work: the same steps; pipe-sync-1 made whole against one process; everything moved
    steps_each = world.all_gather_object({name: c.t for name, c in cs.items() if c.runs_here})
    for name in PIPES:
        assert cs[name].plan is not None
        cs[name].plan.synchronize()  # each module's parameters and buffers from the rank that trains it
    ones = world.all_gather_object({name: cs[name].state() for name in ("one-N", "one-1")} if world.rank == 0
                                   else None)[0]
    diffs = world.all_gather_object({f"{p}/one-1": max_diff(cs[p].state(), ones["one-1"])
                                     for p in ("pipe-sync-1", "pipe-sync-M")})
    moved = world.all_gather_object({name: max_diff(c.state(), c.first) for name, c in cs.items() if c.runs_here})
    counters = world.all_gather_object({name: cs[name].counters() for name in PIPES})
    idle = world.all_gather_object(sum(cs[name].idle_cpu for name in ("one-N", "one-1")))
    idle_wall = sum(sum(times[name]) * args.steps for name in ("one-N", "one-1"))
    text = cs["pipe-sync-1"].compiled.graph.to_text()
    batchnorm = any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
                    for mod in cs["one-1"].compiled.bound.model.modules())
    for c in cs.values():
        c.plan = None
    if world.rank != 0:
        return {}
    diff = {key: max(d[key] for d in diffs) for key in diffs[0]}
    if steps_each[0]["one-N"] == steps_each[0]["one-1"]:
        diff["one-N/one-1"] = max_diff(ones["one-N"], ones["one-1"])
    ranks = [line.strip() for line in text.splitlines() if line.strip().startswith("rank ") and ":" in line][:n]
    return {"times": times, "k": k, "model": model, "steps_each": steps_each[0], "ranks": ranks,
            "diff": diff, "batchnorm": batchnorm,
            "moved": {name: min(m[name] for m in moved if name in m) for name in NAMES},
            "counters": counters,
            "idle_cpu_per_s": max(idle[1:]) / idle_wall if len(idle) > 1 and idle_wall else 0.0}


def latency(world: Any, shape: tuple[int, ...], rounds: int = 50) -> float:
    """Median seconds of a one-way send of an activation-sized tensor between ranks 0 and 1
    (half a ping-pong), when both sides are ready: the cost of a message without waiting."""
    import statistics

    import torch.distributed as dist

    x, pings = torch.zeros(shape), []
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
    return statistics.median(pings)


CONFIGS = {  # key: (model, auxiliary heads); K = 2·world modules, an equal split
    "resnet_d20_w16": ("resnet(depth=20, width=16)", "conv(width=16)"),
    "resnet_d20_w32": ("resnet(depth=20, width=32)", "conv(width=16)"),
    "ode_conv_d8_w32": ("ode_resnet(width=32, depth=8, h=0.5, variant=conv)", "mlp(hidden=32)"),
}
HEADLINE = "resnet_d20_w16"
"""The configuration of the last line's speed-ups (specs/modules_trgl.mrs's family)."""


def rank_main(args: argparse.Namespace) -> None:
    from mrc.runtime.world import current

    world = current()
    lat = latency(world, (args.batch, 32, 4, 4))
    keys = [HEADLINE] if args.quick else list(CONFIGS)
    wall = time.perf_counter()
    out: dict[str, dict[str, Any]] = {}
    tmp = Path(world.all_gather_object(tempfile.mkdtemp() if world.rank == 0 else "")[0])  # one machine
    messages = Messages()
    try:
        for key in keys:
            out[key] = run_config(tmp, world, key, CONFIGS[key], args, messages)
    finally:
        messages.close()
        world.barrier()
        if world.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    if world.rank == 0:
        report(args, world.size, out, lat, time.perf_counter() - wall)


def report(args: argparse.Namespace, world: int, out: dict[str, dict[str, Any]], lat: float, wall: float) -> None:
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    tol = 1e-12 if args.dtype == "float64" else 1e-5
    m = args.micro
    print(f"parallel TRGL on digits 1×8×8 batch {args.batch}, K = {2 * world} modules (equal split, conv(width=16) "
          f"heads, τ 0.5), sgd(0.1, momentum 0.9, wd 5e-4), {args.dtype}; world {world} (gloo, CPU, {cores} cores"
          f"{', OVERSUBSCRIBED' if world > cores else ''}); torch {torch.__version__}; {args.repeats} interleaved "
          f"repeats × {args.steps} steps: ms per step (rank 0, barrier to barrier), median [min–max]; "
          f"load average {load[0]:.1f} at the end")
    heads = {"pipe-sync-1": "pipe-sync-1", "pipe-sync-M": f"pipe-sync-{m}", "pipe-stale": "pipe-stale",
             "one-N": f"one-{world} ({world} thr)", "one-1": "one-1 (1 thr)"}
    print(f"{'config':>16} " + " ".join(f"{heads[n]:>22}" for n in NAMES))
    table: dict[str, Any] = {}
    lines = []
    for key, r in out.items():
        ts = r["times"]
        sp = {n: Spread.of(ts[n]) for n in NAMES}
        base = min(("one-N", "one-1"), key=lambda n: sp[n].median)
        up = {p: ratios(ts[base], ts[p]) for p in PIPES}
        d = r["diff"]
        table[key] = {"model": r["model"], "k": r["k"], "ms": {n: s.as_json(5) for n, s in sp.items()},
                      "baseline": base, **{f"speedup_{p[5:].replace('-', '')}": v.as_json(3) for p, v in up.items()},
                      "same_params_sync1": d["pipe-sync-1/one-1"] <= tol,
                      "same_params_syncM": None if r["batchnorm"] else d["pipe-sync-M/one-1"] <= tol,
                      "max_abs_diff": {k: float(f"{v:.3g}") for k, v in d.items()},
                      "moved": {n: round(v, 4) for n, v in r["moved"].items()}, "steps_each": r["steps_each"],
                      "ranks": r["ranks"],
                      "per_rank_ms": {p: [{c: round(v * 1e3, 3) for c, v in rk[p].items() if c in
                                           ("busy", "recv", "send_wait")} for rk in r["counters"]] for p in PIPES},
                      "cpu_per_busy_s": {p: [round(rk[p]["cpu_per_busy"], 3) for rk in r["counters"]] for p in PIPES},
                      "bytes_per_step": {p: [int(rk[p]["bytes"]) for rk in r["counters"]] for p in PIPES},
                      "idle_rank_cpu_per_s": round(r["idle_cpu_per_s"], 3)}
        print(f"{key:>16} " + " ".join(f"{sp[n].fmt(1e3, 2):>22}" for n in NAMES))
        lines.append(f"{key:>16} {base:>8} " + " ".join(f"{up[p].fmt(1, 3):>22}" for p in PIPES))
    print("speed-ups one/pipe, paired per repeat (baseline: the faster of one-N and one-1):")
    print(f"{'config':>16} {'baseline':>8} " + " ".join(f"{'one/' + heads[p]:>22}" for p in PIPES))
    print("\n".join(lines))
    for key, r in out.items():
        d, mv, t = r["diff"], r["moved"], table[key]
        print(f"{key} = {r['model'][0]}, aux = {r['model'][1]}; modules on ranks: {'; '.join(r['ranks'])}")
        syncm = ("batch norm normalises each micro-batch by its own statistics: a different training"
                 if r["batchnorm"] else f"≤ {tol:g}: {'yes' if t['same_params_syncM'] else 'NO'}")
        thr = (f"one-N vs one-1 {d['one-N/one-1']:.1e}: another summation order, amplified by the steps"
               if "one-N/one-1" in d else f"one-N ran {r['steps_each']['one-N']} steps: blocks cut at {CAP_S:g} s")
        print(f"  equal work, max |Δ| of the parameters and buffers after the {r['steps_each']['one-1']} steps each "
              f"ran: pipe-sync-1 (made whole) vs one-1 {d['pipe-sync-1/one-1']:.1e} (≤ {tol:g}: "
              f"{'yes' if t['same_params_sync1'] else 'NO'}; {thr}); pipe-sync-{m} vs one-1 "
              f"{d['pipe-sync-M/one-1']:.1e} ({syncm}); moved by " + ", ".join(f"{n} {v:.2f}" for n, v in mv.items()))
        print("  where a pipeline step goes (ms per step per rank over the timed blocks: busy = from the first "
              "barrier to its last step's end; recv = in receives, waiting for the predecessor; send wait = for "
              "its previous message to be taken; CPU: this process's CPU-s per busy s); the waiting ranks used "
              f"{r['idle_cpu_per_s']:.3f} CPU-s per s during the one-process contenders:")
        for p in PIPES:
            parts = []
            for rank, rk in enumerate(r["counters"]):
                c = rk[p]
                comp = c["busy"] - c["recv"] - c["send_wait"]
                parts.append(f"rank {rank} {c['busy'] * 1e3:.2f} = recv {c['recv'] * 1e3:.2f} + send wait "
                             f"{c['send_wait'] * 1e3:.2f} + compute {comp * 1e3:.2f} (CPU {c['cpu_per_busy']:.2f} s/s; "
                             f"{int(c['bytes']):,} B sent)")
            print(f"    {heads[p]:>11}: " + "; ".join(parts))
    print(f"gloo: one-way send of a {args.batch}×32×4×4 float32 activation when both sides are ready "
          f"(median of 50) {lat * 1e3:.3f} ms")
    print(f"wall time {wall:.0f} s")
    head = table[HEADLINE]
    print(json.dumps({
        "speedup_sync1": head["speedup_sync1"]["median"], "speedup_syncM": head["speedup_syncM"]["median"],
        "speedup_stale": head["speedup_stale"]["median"], "world": world, "device": "cpu", "backend": "gloo",
        "config": HEADLINE, "baseline": head["baseline"], "micro_batches": m, "oversubscribed": world > cores,
        **{f"speedup_{s}_{key}": t[f"speedup_{s}"]["median"] for key, t in table.items()
           for s in ("sync1", "syncM", "stale")},
        "same_params_sync1": all(t["same_params_sync1"] for t in table.values()), "configs": table,
        "dtype": args.dtype, "batch": args.batch, "repeats": args.repeats, "steps": args.steps,
        "cores": cores, "load_avg_end": round(load[0], 2), "quick": args.quick,
        "latency_ms": round(lat * 1e3, 4), "torch": torch.__version__, "wall_s": round(wall, 1)}))


# ---- launching ----------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2, help="processes (ignored under torchrun)")
    ap.add_argument("--quick", action="store_true", help="one configuration, fewer repeats and steps")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per timed sample")
    ap.add_argument("--micro", type=int, default=4, help="micro-batches of pipe-sync-M")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = ap.parse_args()
    args.repeats = args.repeats or (5 if args.quick else 7)
    args.steps = args.steps or (8 if args.quick else 16)
    args.warmup = 2 if args.quick else 3
    args.world = world_of(args.world)
    if args.world < 2:
        ap.error("--world must be at least 2")
    on_ranks(rank_main, args)

if __name__ == "__main__":
    main()
