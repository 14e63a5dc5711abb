"""Layer-parallel training by MGRIT against the strongest serial loops, on one device.

(1) Step time. For `ode_resnet(width=W, depth=D, h=0.01)` (dense, tanh) on `levelsets(batch=64)`
with sgd(lr=0.05, momentum=0.9), (D, W) ∈ {(1024, 8), (1024, 32), (256, 32)}, the time of one
whole training step (forward + backward + update) of
  mgrit     mrc with one-shot MGRIT (levels 3, coarsening 4, FCF, 2 forward and 1 backward
            iterations, `--warm-start`'s guess: `cache` unless told): `mrc.api.lower(...).step(t, x, y)`;
  serial    mrc without the `mgrit` block: the stack run layer after layer, autograd;
  linear    a hand loop over the same model (per-layer `nn.Linear` steps, y ← y + h·σ(W_n y + b_n)),
            `loss.backward()`, `torch.optim.SGD(foreach=True)`;
  stacked   a hand loop whose stack is one `[N, w, w]` weight and one `[N, w]` bias, unbound into
            per-layer views once per forward (one gather of the gradients in the backward), three
            ops per layer (`addmm`, `tanh`, `add(alpha=h)`), foreach SGD over 6 tensors: what a
            careful user writes;
  compiled  `torch.compile` of the stacked model (inductor, forward and backward), foreach SGD;
            compiled before timing (the compile time is reported, never timed); left out, with
            the reason, where it does not compile (`--no-compile` skips it).
With `--threads` > 1 on the CPU each serial contender is also timed at one thread (`serial@1`, …,
interleaved with the rest): a serial stack's small ops lose from threads, and the best serial
contender is the fastest at either count, so MGRIT's threads are measured against serial training
at its own best.
All start from the same initial weights. The contenders run interleaved (rotated order)
`--repeats` times; each sample is `--steps` whole steps after warm-up, on a fixed cycle of 8
batches; tables give medians [min–max]. The speed-up of MGRIT is against the best serial
contender (the serial one with the smallest median), paired per repeat: best[i] / mgrit[i].

Op counts: one step of each eager contender under a TorchDispatchMode counting every aten call
(forward, autograd's backward, optimizer; views included: each is a dispatch too). With the
per-op overhead measured here (median µs of tiny eager ops: add, mul, tanh, addmm on [64, 8]),
the physical ceiling of MGRIT's speed-up at its current op count is
best serial ms / (MGRIT ops × per-op ms): the speed-up if every one of its ops cost only the
dispatch overhead. The other bound is arithmetic: the matrix-product FLOPs of one step
(FlopCounterMode), MGRIT over mrc serial (`work_ratio`): where a layer's product is compute-bound
rather than overhead-bound, MGRIT's speed-up is at most the parallelism its batched calls get
(threads, a GPU) over that ratio. For depth 1024, width 8 a breakdown of the MGRIT step (its forward solve,
adjoint solve, fine-level parameter gradients and weight re-stacking) against the whole step,
and the optimizer's update in the per-layer hand loop.

(2) Across ranks (not with `--quick`, `--no-ranks` skips it): `bench/layers.py` on 2 processes
(`distributed layers`), its one-process MGRIT over 2-rank MGRIT at depth 1024 width 32.

(3) Accuracy, only with `--accuracy` (6 runs of 6300 steps: longer than all the timing): the
issue's setting on the level sets of specs/mgrit_levelsets.mrs (`peaks`): `ode_resnet(width=8,
depth=64, h=0.05)`, adam(lr=0.01), cosine schedule, `--epochs` (100) epochs, trained by mrc
serially and with one-shot MGRIT (3 levels, cf 4, FCF, 2 forward / 1 backward iterations,
`--warm-start`'s guess), seeds 0 … `--seeds`−1: final validation accuracy per seed and the mean. Without
`--accuracy`, acc_serial and acc_mgrit are null.

    python bench/mgrit.py                 # timing, op counts, 2 ranks (2-core CPU: ≈ 2 min with --repeats 5)
    python bench/mgrit.py --accuracy      # and the accuracy runs: 3 seeds × 100 epochs × 2
    python bench/mgrit.py --quick         # 2 repeats × 2 steps, no ranks (with --accuracy: 1 seed × 5 epochs)
    python bench/mgrit.py --quick --no-compile --configs 256x32   # a smoke run (≈ 1 min)
    python bench/mgrit.py --device cuda   # on a GPU (synchronised around every timed region)

Last line: {"speedup_vs_best_d1024_w8": …, "speedup_vs_best_d1024_w32": …,
"serial_vs_stacked_hand": …, "ranks2_vs_one_d1024_w32": …, "acc_serial": …, "acc_mgrit": …,
"device": …, …}; serial_vs_stacked_hand is stacked / serial time (≥ 1: mrc's serial step is as
fast as the stacked hand loop), the worst over the configurations.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import Spread, interleaved, ratios, sync
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mrc import api
from mrc.runtime.trainer import Trainer

TIMING = """
model ode_resnet(width={width}, depth={depth}, h=0.01)
data levelsets(batch={batch})
optimizer sgd(lr=0.05, momentum=0.9)
train(steps=10, seed=0, device={device})
{mgrit}
"""

ACCURACY = """
model ode_resnet(width=8, depth=64, h=0.05, activation=tanh)
data peaks(batch=64)
optimizer adam(lr=0.01)
schedule cosine()
train(epochs={epochs}, seed={seed}, device={device}, log_every=1000000, threads={threads})
{mgrit}
"""

MGRIT = ('mgrit "stack" { levels = 3; coarsening = 4; relax = FCF; forward_iters = 2; '
         'backward_iters = 1 }')
WARM = {"guess": "cache"}  # --warm-start: the guess of every MGRIT run here (main sets it)


def mgrit_block() -> str:
    """The MGRIT block of this run's specs: `MGRIT` with `--warm-start`'s guess."""
    return MGRIT.replace(" }", f"; warm_start = {WARM['guess']} }}")

CONFIGS = ((1024, 8), (1024, 32), (256, 32))  # (depth, width)
SERIAL = ("serial", "linear", "stacked", "compiled")
LR, MOMENTUM = 0.05, 0.9
N_BATCHES = 8
RECURSION = 50_000  # Python's limit while compiling: the default 1000 is too few for depth 1024


def _spec(tmp: Path, name: str, text: str) -> Path:
    path = tmp / f"{name}.mrs"
    path.write_text(text)
    return path


class Contender:
    """One way of running training steps of one configuration, timed `steps` steps at a time."""

    def __init__(self, step: Callable[[int, torch.Tensor, torch.Tensor], Any],
                 batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> None:
        self.step_fn, self.batches, self.device, self.t = step, batches, device, 0

    def run(self, steps: int) -> float:
        """Seconds per step over `steps` whole steps (the loss read once at the end)."""
        sync(self.device)
        start = time.perf_counter()
        loss = None
        for _ in range(steps):
            x, y = self.batches[self.t % len(self.batches)]
            loss = self.step_fn(self.t, x, y)
            self.t += 1
        if loss is not None:
            float(loss.detach())
        sync(self.device)
        return (time.perf_counter() - start) / steps


def _batches(compiled: api.Compiled, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = compiled.bound.data
    return [tuple(t.to(device) for t in data.batch(0, i)) for i in range(N_BATCHES)]  # type: ignore[misc]


def mrc_contender(spec: Path, device: torch.device) -> tuple[Contender, api.Compiled, Any]:
    """`api.lower(...).step` on the batches; where a lowering reads each batch's training examples
    (`warm_start = cache`) they are set on the Plan's Env before each step, as the training loop does."""
    compiled = api.compile_spec(spec, training=True)
    compiled.bound.model.to(device)
    compiled.bound.graph_module.to(device)
    plan = api.lower(compiled, 10**7, str(device))
    batches = _batches(compiled, device)
    if not plan.hooks.examples:
        return Contender(plan.step, batches, device), compiled, plan
    examples = compiled.bound.data.batch_indices(0)[:N_BATCHES]

    def step(t: int, x: torch.Tensor, y: torch.Tensor) -> Any:
        plan.env.examples = examples[t % N_BATCHES]
        return plan.step(t, x, y)

    return Contender(step, batches, device), compiled, plan


class StackedNet(nn.Module):
    """The ODE-ResNet with its stack as one weight [N, w, w] and one bias [N, w] (a copy of a
    built model's weights): per layer y ← y + h·tanh(y W_nᵀ + b_n) as addmm, tanh, add(alpha)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.stem, self.head = copy.deepcopy(model.stem), copy.deepcopy(model.head)
        layers = model.stack.layers
        self.weight_t = nn.Parameter(torch.stack([layer.weight.detach().t() for layer in layers]).contiguous())
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))
        self.h = float(model.stack.h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(torch.flatten(x, 1))
        for w_t, b in zip(self.weight_t.unbind(0), self.bias.unbind(0), strict=True):
            y = torch.add(y, torch.tanh(torch.addmm(b, y, w_t)), alpha=self.h)
        return self.head(y)


def hand_contender(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                   clock: dict[str, float] | None = None) -> Contender:
    """A hand-written loop over `model` with foreach SGD; with `clock`, the optimizer's seconds are
    added to clock["update"] (synchronised: only for the breakdown)."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, foreach=True)

    def step(t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if clock is None:
            opt.step()
        else:
            sync(device)
            start = time.perf_counter()
            opt.step()
            sync(device)
            clock["update"] = clock.get("update", 0.0) + time.perf_counter() - start
        return loss

    return Contender(step, batches, device)


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def compiled_contender(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                       warmup: int) -> tuple[Contender | None, float, str]:
    """`torch.compile` of the stacked model, compiled (and warmed up) here: (the contender or None,
    compile seconds, why not)."""
    net = StackedNet(model).to(device)
    contender = hand_contender(torch.compile(net), batches, device)  # type: ignore[arg-type]
    start = time.perf_counter()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, RECURSION))  # inductor walks a graph of the unrolled stack recursively
    try:
        contender.run(max(warmup, 2))  # the first call compiles forward and backward
    except Exception as err:  # any compile failure is reported, not raised
        return None, time.perf_counter() - start, _one_line(err)
    finally:
        sys.setrecursionlimit(limit)
    return contender, time.perf_counter() - start, ""


class OpCounter(TorchDispatchMode):
    """Counts every aten call dispatched while active (forward, backward, optimizer, views)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_ops(contender: Contender) -> collections.Counter[str]:
    """The aten calls of one whole step of `contender`."""
    counter = OpCounter()
    with counter:
        contender.run(1)
    return counter.counts


def _one_thread(contender: Contender, steps: int, threads: int) -> float:
    """`contender.run(steps)` with one intra-op thread, then `threads` again."""
    torch.set_num_threads(1)
    try:
        return contender.run(steps)
    finally:
        torch.set_num_threads(threads)


def count_flops(contender: Contender) -> int:
    """The matrix-product FLOPs (mm, addmm, bmm, baddbmm, convolutions: torch's FlopCounterMode) of
    one whole step of `contender`: the arithmetic it cannot avoid, whatever its op count."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        contender.run(1)
    return int(counter.get_total_flops())


def per_op_seconds(device: torch.device, calls: int = 2000, repeats: int = 5) -> float:
    """The median over add, mul, tanh and addmm on [64, 8] tensors of the best seconds per call:
    the cost of an eager op that does next to no work."""
    a = torch.randn(64, 8, device=device)
    b = torch.randn(64, 8, device=device)
    w = torch.randn(8, 8, device=device)
    bias = torch.randn(8, device=device)
    ops: list[Callable[[], Any]] = [lambda: a + b, lambda: a * b, lambda: torch.tanh(a),
                                    lambda: torch.addmm(bias, a, w)]
    per = []
    for op in ops:
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            for _ in range(calls):
                op()
            sync(device)
            best = min(best, (time.perf_counter() - start) / calls)
        per.append(best)
    return statistics.median(per)


def time_config(tmp: Path, width: int, depth: int, batch: int, device: torch.device, repeats: int, steps: int,
                warmup: int, compile_it: bool) -> dict[str, Any]:
    """Interleaved timings of every contender at one configuration, the compile time and reason,
    and the op counts of one step of each eager contender."""
    name = f"w{width}_d{depth}"
    fmt = {"width": width, "depth": depth, "batch": batch, "device": device.type}
    serial_spec = _spec(tmp, f"serial_{name}", TIMING.format(**fmt, mgrit=""))
    mgrit_spec = _spec(tmp, f"mgrit_{name}", TIMING.format(**fmt, mgrit=mgrit_block()))
    serial, compiled, _ = mrc_contender(serial_spec, device)
    initial = copy.deepcopy(compiled.bound.model).to(device)  # before any step: every hand loop starts here
    batches = serial.batches
    contenders: dict[str, Contender] = {
        "mgrit": mrc_contender(mgrit_spec, device)[0],
        "serial": serial,
        "linear": hand_contender(copy.deepcopy(initial), batches, device),
        "stacked": hand_contender(StackedNet(initial).to(device), batches, device),
    }
    compile_s, why = 0.0, "skipped (--no-compile)"
    if compile_it:
        got, compile_s, why = compiled_contender(initial, batches, device, warmup)
        if got is not None:
            contenders["compiled"] = got
    for c in contenders.values():
        c.run(warmup)
    runs = {n: (lambda c=c: c.run(steps)) for n, c in contenders.items()}
    threads = torch.get_num_threads()
    if device.type == "cpu" and threads > 1:
        # a serial loop's small ops gain nothing from threads (they lose): each serial contender is also
        # timed at its best, one thread, and the best serial is the fastest of all
        for n in SERIAL:
            if n in contenders:
                runs[f"{n}@1"] = lambda c=contenders[n]: _one_thread(c, steps, threads)
    times = interleaved(runs, repeats)
    ops = {n: count_ops(c) for n, c in contenders.items() if n != "compiled"}
    flops = {n: count_flops(contenders[n]) for n in ("mgrit", "serial")}
    return {"times": times, "compile_s": compile_s, "compile_error": why, "ops": ops, "flops": flops}


def breakdown(tmp: Path, width: int, depth: int, batch: int, device: torch.device,
              steps: int, warmup: int) -> dict[str, float]:
    """ms per step of the MGRIT step's parts (wrappers around the solve's methods, synchronised)
    and of the optimizer's update in the per-layer hand loop."""
    fmt = {"width": width, "depth": depth, "batch": batch, "device": device.type}
    spec = _spec(tmp, "breakdown", TIMING.format(**fmt, mgrit=mgrit_block()))
    contender, compiled, plan = mrc_contender(spec, device)
    initial = copy.deepcopy(compiled.bound.model)
    contender.run(warmup)  # lowers the solve (made at the first step)
    from mrc.techniques.mgrit.lower import MgritState

    solves = plan.ctx.state_of(MgritState).solves  # (replica, stack path) → StackSolve
    if len(solves) != 1:
        raise RuntimeError(f"expected one MGRIT stack solve, found {len(solves)}")
    (solve,) = solves.values()
    clock: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kw: Any) -> Any:
            sync(device)
            start = time.perf_counter()
            out = fn(*args, **kw)
            sync(device)
            clock[name] = clock.get(name, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    prop = solve.prop
    solve.forward = timed("forward solve (incl. refresh)", solve.forward)
    solve.backward = timed("adjoint solve + param grads", solve.backward)
    prop.refresh = timed("refresh (re-stack weights)", prop.refresh)
    prop.param_grads = timed("param_grads (batched + per-layer .grad)", prop.param_grads)
    whole = contender.run(steps)
    out = {name: secs / steps * 1e3 for name, secs in clock.items()}
    out["whole step"] = whole * 1e3
    hand_clock: dict[str, float] = {}
    hand = hand_contender(initial, contender.batches, device, hand_clock)
    hand.run(warmup)
    hand_clock.clear()
    hand.run(steps)
    out["foreach SGD update (per-layer hand loop)"] = hand_clock["update"] / steps * 1e3
    return out


def ranks2() -> tuple[float | None, str]:
    """One-process MGRIT over 2-rank `distributed layers` at depth 1024, width 32, from
    bench/layers.py (its own run: 4 configurations, 2 processes); (None, why) when it fails."""
    args = [sys.executable, str(Path(__file__).with_name("layers.py")), "--world", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=3600, env=env, check=False)
    except subprocess.TimeoutExpired:
        return None, "bench/layers.py took over an hour"
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"bench/layers.py failed (exit {done.returncode}): {tail[:200]}"
    value = json.loads(lines[-1]).get("speedup_layers_vs_mgrit1_d1024_w32")
    return value, "" if value is not None else "bench/layers.py did not measure depth 1024 width 32"


def accuracy(tmp: Path, seeds: list[int], epochs: int, device: torch.device,
             threads: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"serial": [], "mgrit": []}
    for seed in seeds:
        for name, line in (("serial", ""), ("mgrit", mgrit_block())):
            spec = _spec(tmp, f"acc_{name}_{seed}", ACCURACY.format(
                epochs=epochs, seed=seed, device=device.type, threads=threads, mgrit=line))
            result = Trainer(api.compile_spec(spec, training=True), tmp / f"run_{name}_{seed}").run()
            out[name].append(float(result.summary["val_acc"]))
    return out


def _total(counts: collections.Counter[str]) -> int:
    return sum(counts.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="2 repeats × 2 steps, no ranks; 1 seed × 5 epochs")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per timed sample")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=None, help="accuracy seeds 0..n-1")
    ap.add_argument("--epochs", type=int, default=None, help="accuracy epochs (default 100; 5 with --quick)")
    ap.add_argument("--configs", default=",".join(f"{d}x{w}" for d, w in CONFIGS),
                    help="depth×width pairs to time, e.g. 256x32,1024x8 (default: %(default)s)")
    ap.add_argument("--no-compile", action="store_true", help="no torch.compile contender")
    ap.add_argument("--no-ranks", action="store_true", help="no 2-rank run (bench/layers.py)")
    ap.add_argument("--accuracy", action="store_true", help="the accuracy runs (serial and one-shot MGRIT)")
    ap.add_argument("--warm-start", default="cache", choices=("cache", "shifted", "previous", "coarse", "off"),
                    help="every MGRIT run's initial guess (default cache: each example's own states)")
    args = ap.parse_args()
    WARM["guess"] = args.warm_start
    try:
        configs = [tuple(int(v) for v in pair.split("x")) for pair in args.configs.split(",")]
    except ValueError:
        ap.error(f"--configs takes depth×width pairs like 256x32,1024x8, not {args.configs!r}")
    if any(len(c) != 2 or min(c) < 1 for c in configs):
        ap.error(f"--configs takes depth×width pairs like 256x32,1024x8, not {args.configs!r}")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 7)
    steps = args.steps or (2 if args.quick else 10)
    warmup = 2 if args.quick else 5
    n_seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (5 if args.quick else 100)
    wall = time.perf_counter()
    per_op = per_op_seconds(device)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        runs = {(depth, width): time_config(tmp, width, depth, args.batch, device, repeats, steps, warmup,
                                            not args.no_compile) for depth, width in configs}
        try:
            parts, parts_error = breakdown(tmp, 8, 1024, args.batch, device, steps, warmup), ""
        except (AttributeError, KeyError, RuntimeError) as err:  # mrc's solve internals moved
            parts, parts_error = {}, _one_line(err)
        if args.quick or args.no_ranks:
            ranks, ranks_why = None, "not run (--quick or --no-ranks)"
        else:
            ranks, ranks_why = ranks2()
        acc = accuracy(tmp, list(range(n_seeds)), epochs, device, args.threads) if args.accuracy else {
            "serial": [], "mgrit": []}
    load_end = os.getloadavg()[0]
    where = f"{torch.get_num_threads()} thread(s)" if device.type == "cpu" else torch.cuda.get_device_name()
    print(f"ode_resnet dense tanh h=0.01, levelsets batch {args.batch}, sgd(0.05, momentum 0.9); MGRIT: 3 levels, "
          f"cf 4, FCF, 2 fwd / 1 bwd iterations, warm_start {WARM['guess']}; device {args.device} ({where}), torch "
          f"{torch.__version__}; {repeats} interleaved repeats × {steps} steps: ms per step, median [min–max]; "
          f"load average {load_start:.1f} at the start, {load_end:.1f} at the end")
    at_one = [f"{n}@1" for n in SERIAL if any(f"{n}@1" in run["times"] for run in runs.values())]
    names = ("mgrit", *SERIAL, *at_one)  # name@1: a serial contender timed at one thread (with --threads > 1)
    print(f"{'depth':>5} {'width':>5} " + " ".join(f"{n:>22}" for n in names)
          + f" {'best serial':>12} {'speed-up vs best':>24} {'stacked/serial':>20}")
    summary: dict[str, Any] = {}
    table: dict[str, Any] = {}
    for (depth, width), run in runs.items():
        ts = run["times"]
        sp = {n: Spread.of(v) for n, v in ts.items()}
        best = min((n for n in ts if n.split("@")[0] in SERIAL), key=lambda n: sp[n].median)
        up = ratios(ts[best], ts["mgrit"])
        own = ratios(ts["stacked"], ts["serial"])
        key = f"d{depth}_w{width}"
        summary[f"speedup_vs_best_{key}"] = round(up.median, 3)
        summary[f"serial_vs_stacked_hand_{key}"] = round(own.median, 3)
        cells = " ".join(f"{sp[n].fmt(1e3, 2) if n in sp else 'n/a':>22}" for n in names)
        print(f"{depth:>5} {width:>5} {cells} {best:>12} {up.fmt(1, 3):>24} {own.fmt(1, 3):>20}")
        ops = {n: _total(c) for n, c in run["ops"].items()}
        ceiling = sp[best].median / (ops["mgrit"] * per_op)
        table[key] = {"ms": {n: s.as_json(5) for n, s in sp.items()}, "best_serial": best,
                      "speedup_vs_best": up.as_json(3), "stacked_over_serial": own.as_json(3),
                      "compile_s": round(run["compile_s"], 1), "compile_error": run["compile_error"] or None,
                      "ops_per_step": ops, "ceiling_speedup": round(ceiling, 3),
                      "matmul_flops_per_step": run["flops"],
                      "work_ratio": round(run["flops"]["mgrit"] / max(run["flops"]["serial"], 1), 2),
                      "top_ops": {n: dict(c.most_common(6)) for n, c in run["ops"].items()}}
    print(f"ops per step (aten calls, TorchDispatchMode) and the ceiling best serial / (MGRIT ops × "
          f"{per_op * 1e6:.2f} µs per op):")
    for key, row in table.items():
        ops = row["ops_per_step"]
        compiled = (f"compiled in {row['compile_s']:.0f} s" if row["compile_error"] is None
                    else f"not compiled: {row['compile_error']}")
        print(f"  {key:<10} " + "  ".join(f"{n} {v}" for n, v in ops.items())
              + f"  → ceiling {row['ceiling_speedup']:.2f}×  ({compiled})")
        print(f"  {'':<10} matmul FLOPs per step: MGRIT {row['matmul_flops_per_step']['mgrit'] / 1e6:.1f} M, "
              f"serial {row['matmul_flops_per_step']['serial'] / 1e6:.1f} M: MGRIT does {row['work_ratio']:.2f}× "
              "serial's arithmetic, so where the layers are compute-bound its speed-up is at most "
              f"{1 / row['work_ratio']:.2f}× the parallelism its batched calls get")
    if parts:
        print("MGRIT step at depth 1024, width 8, ms per step (parts overlap: the solves include refresh and "
              "param_grads):")
        for name, ms in parts.items():
            print(f"  {name:<44}{ms:>9.2f}")
    else:
        print(f"MGRIT step breakdown unavailable: {parts_error}")
    print(f"2 ranks (distributed layers) over one process, depth 1024 width 32: "
          f"{ranks if ranks is not None else 'null (' + ranks_why + ')'}")
    if acc["serial"]:
        print(f"accuracy: ode_resnet(width=8, depth=64, h=0.05), adam(0.01), cosine, {epochs} epochs of peaks, "
              f"seeds {list(range(n_seeds))}")
        for name, accs in acc.items():
            print(f"  {name:<8} mean {statistics.mean(accs):.4f}  per seed " + ", ".join(f"{a:.4f}" for a in accs))
    wall = time.perf_counter() - wall
    print(f"wall time {wall:.0f} s")
    worst = min(v for k, v in summary.items() if k.startswith("serial_vs_stacked_hand_"))
    print(json.dumps({
        "speedup_vs_best_d1024_w8": summary.get("speedup_vs_best_d1024_w8"),
        "speedup_vs_best_d1024_w32": summary.get("speedup_vs_best_d1024_w32"),
        "serial_vs_stacked_hand": worst,
        "ranks2_vs_one_d1024_w32": ranks,
        "acc_serial": round(statistics.mean(acc["serial"]), 4) if acc["serial"] else None,
        "acc_mgrit": round(statistics.mean(acc["mgrit"]), 4) if acc["mgrit"] else None,
        "device": args.device, **summary, "ranks2_note": ranks_why or None,
        "acc_serial_seeds": acc["serial"], "acc_mgrit_seeds": acc["mgrit"], "acc_epochs": epochs,
        "per_op_us": round(per_op * 1e6, 3), "breakdown_ms_d1024_w8": {k: round(v, 3) for k, v in parts.items()},
        "configs": table, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "warm_start": WARM["guess"],
        "load_avg": [round(load_start, 2), round(load_end, 2)], "repeats": repeats, "steps": steps,
        "batch": args.batch, "quick": args.quick, "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
