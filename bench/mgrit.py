"""Layer-parallel training by MGRIT against the serial network, on one device.

(1) Step time. For `ode_resnet(width=W, depth=D, h=0.01)` (dense, tanh) on `levelsets(batch=64)`
with sgd(lr=0.05, momentum=0.9), the time of one whole training step (forward + backward +
update, as mrc's Plan runs it: `mrc.api.lower(...).step(t, x, y)`) of
  serial  the spec without the `mgrit` line: mrc's serial network, the stack run layer after layer
          (`y ← y + h·σ(W_n y + b_n)`, a Python loop of eager ops) and differentiated by autograd;
  mgrit   the same spec with one-shot MGRIT (levels 3, coarsening 4, FCF, 2 forward and 1
          backward iterations, warm start): the stack is one autograd Function whose forward and
          backward run the forward and adjoint solves (batched propagator, bmm over intervals);
  hand    a hand-written PyTorch loop over the same model (its own forward, loss.backward(),
          torch.optim.SGD): the eager serial baseline mrc's serial should match. It is the best
          serial baseline measured here; a compiled serial stack (torch.compile) is not timed.
The three run interleaved (rotated order) `--repeats` times; each sample is `--steps` whole steps
(after warm-up steps), on a fixed cycle of 8 batches; the table gives medians [min–max] and the
per-repeat paired ratios serial/mgrit (speed-up of MGRIT) and hand/serial.
For one configuration (depth 1024, width 8) a breakdown of the MGRIT step: its forward solve,
adjoint solve, fine-level parameter gradients and weight re-stacking (`refresh`), against the
whole step, and the optimizer's update measured in the hand loop.

(2) Accuracy. `ode_resnet(width=8, depth=64, h=0.05)`, adam(lr=0.01), 10 epochs of levelsets
(specs/mgrit_levelsets.mrs), trained by `mrc train` serially and with one-shot MGRIT, seeds 0–2
(`--seeds`): validation accuracy per seed and the mean.

    python bench/mgrit.py                 # the full benchmark (2-core CPU: ≈ 1.5 min)
    python bench/mgrit.py --quick         # fewer configurations, repeats and seeds (< 1 min)
    python bench/mgrit.py --device cuda   # on a GPU (synchronised around every timed region)

Last line: {"speedup_d1024_w8": …, "speedup_d256_w32": …, "acc_serial": …, "acc_mgrit": …,
"device": …, …} (speed-ups are medians of the paired per-repeat ratios serial / mgrit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import Spread, interleaved, ratios, sync

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
data levelsets(batch=64)
optimizer adam(lr=0.01)
train(epochs={epochs}, seed={seed}, device={device}, log_every=1000000, threads={threads})
{mgrit}
"""

MGRIT = ('mgrit "stack" { levels = 3; coarsening = 4; relax = FCF; forward_iters = 2; '
         'backward_iters = 1 }')

LR, MOMENTUM = 0.05, 0.9
N_BATCHES = 8


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
            float(loss)
        sync(self.device)
        return (time.perf_counter() - start) / steps


def _batches(compiled: api.Compiled, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = compiled.bound.data
    return [tuple(t.to(device) for t in data.batch(0, i)) for i in range(N_BATCHES)]  # type: ignore[misc]


def mrc_contender(spec: Path, device: torch.device) -> tuple[Contender, api.Compiled, Any]:
    compiled = api.compile_spec(spec, training=True)
    compiled.bound.model.to(device)
    compiled.bound.graph_module.to(device)
    plan = api.lower(compiled, 10**7, str(device))
    return Contender(plan.step, _batches(compiled, device), device), compiled, plan


def hand_contender(spec: Path, device: torch.device,
                   clock: dict[str, float] | None = None) -> Contender:
    """The hand-written eager loop; with `clock`, the optimizer's seconds are added to
    clock["update"] (synchronised: only for the breakdown)."""
    compiled = api.compile_spec(spec, training=True)
    model = compiled.bound.model.to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

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

    return Contender(step, _batches(compiled, device), device)


def time_config(tmp: Path, width: int, depth: int, batch: int, device: torch.device,
                repeats: int, steps: int, warmup: int) -> dict[str, list[float]]:
    name = f"w{width}_d{depth}"
    fmt = {"width": width, "depth": depth, "batch": batch, "device": device.type}
    serial_spec = _spec(tmp, f"serial_{name}", TIMING.format(**fmt, mgrit=""))
    mgrit_spec = _spec(tmp, f"mgrit_{name}", TIMING.format(**fmt, mgrit=MGRIT))
    contenders = {
        "serial": mrc_contender(serial_spec, device)[0],
        "mgrit": mrc_contender(mgrit_spec, device)[0],
        "hand": hand_contender(serial_spec, device),
    }
    for c in contenders.values():
        c.run(warmup)
    return interleaved({n: (lambda c=c: c.run(steps)) for n, c in contenders.items()}, repeats)


def breakdown(tmp: Path, width: int, depth: int, batch: int, device: torch.device,
              steps: int, warmup: int) -> dict[str, float]:
    """ms per step of the MGRIT step's parts (wrappers around the solve's methods, synchronised)
    and of the optimizer's update in the hand loop."""
    fmt = {"width": width, "depth": depth, "batch": batch, "device": device.type}
    spec = _spec(tmp, "breakdown", TIMING.format(**fmt, mgrit=MGRIT))
    contender, _, plan = mrc_contender(spec, device)
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
    hand = hand_contender(spec, device, hand_clock)
    hand.run(warmup)
    hand_clock.clear()
    hand.run(steps)
    out["optimizer update (hand loop)"] = hand_clock["update"] / steps * 1e3
    return out


def accuracy(tmp: Path, seeds: list[int], epochs: int, device: torch.device,
             threads: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"serial": [], "mgrit": []}
    for seed in seeds:
        for name, line in (("serial", ""), ("mgrit", MGRIT)):
            spec = _spec(tmp, f"acc_{name}_{seed}", ACCURACY.format(
                epochs=epochs, seed=seed, device=device.type, threads=threads, mgrit=line))
            result = Trainer(api.compile_spec(spec, training=True), tmp / f"run_{name}_{seed}").run()
            out[name].append(float(result.summary["val_acc"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="2 depths, fewer repeats/steps, 1 seed")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per timed sample")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=None, help="accuracy seeds 0..n-1")
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    depths = (256, 1024) if args.quick else (64, 256, 1024)
    widths = (8, 32)
    repeats = args.repeats or (3 if args.quick else 7)
    steps = args.steps or (4 if args.quick else 10)
    warmup = 3 if args.quick else 5
    n_seeds = args.seeds or (1 if args.quick else 3)
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        timings: dict[tuple[int, int], dict[str, list[float]]] = {}
        for depth in depths:
            for width in widths:
                timings[(width, depth)] = time_config(tmp, width, depth, args.batch, device,
                                                      repeats, steps, warmup)
        parts = breakdown(tmp, 8, 1024, args.batch, device, steps, warmup)
        acc = accuracy(tmp, list(range(n_seeds)), args.epochs, device, args.threads)
    threads = f"{torch.get_num_threads()} thread(s)" if device.type == "cpu" else torch.cuda.get_device_name()
    print(f"ode_resnet dense tanh h=0.01, levelsets batch {args.batch}, sgd(0.05, momentum 0.9); "
          f"MGRIT: 3 levels, cf 4, FCF, 2 fwd / 1 bwd iterations, warm start; device {args.device} "
          f"({threads}), torch {torch.__version__}; {repeats} interleaved repeats × {steps} steps: "
          f"median [min–max]")
    print(f"{'width':>5} {'depth':>5} {'serial ms':>22} {'mgrit ms':>22} {'hand ms':>22} "
          f"{'speed-up serial/mgrit':>24} {'hand/serial':>20}")
    speedups: dict[str, float] = {}
    table: dict[str, Any] = {}
    for (width, depth), ts in timings.items():
        sp = {n: Spread.of(v) for n, v in ts.items()}
        up = ratios(ts["serial"], ts["mgrit"])
        own = ratios(ts["hand"], ts["serial"])
        speedups[f"speedup_d{depth}_w{width}"] = round(up.median, 3)
        table[f"d{depth}_w{width}"] = {**{n: s.as_json(5) for n, s in sp.items()},
                                       "speedup": up.as_json(3), "hand_over_serial": own.as_json(3)}
        print(f"{width:>5} {depth:>5} {sp['serial'].fmt(1e3, 2):>22} {sp['mgrit'].fmt(1e3, 2):>22} "
              f"{sp['hand'].fmt(1e3, 2):>22} {up.fmt(1, 3):>24} {own.fmt(1, 3):>20}")
    print("MGRIT step at width 8, depth 1024, ms per step (parts overlap: the solves include "
          "refresh and param_grads):")
    for name, ms in parts.items():
        print(f"  {name:<42}{ms:>9.2f}")
    print(f"accuracy: ode_resnet(width=8, depth=64, h=0.05), adam(0.01), {args.epochs} epochs of "
          f"levelsets, seeds {list(range(n_seeds))}")
    for name, accs in acc.items():
        print(f"  {name:<8} mean {statistics.mean(accs):.4f}  per seed "
              + ", ".join(f"{a:.4f}" for a in accs))
    wall = time.perf_counter() - wall
    print(f"wall time {wall:.0f} s")
    print(json.dumps({
        "speedup_d1024_w8": speedups.get("speedup_d1024_w8"),
        "speedup_d256_w32": speedups.get("speedup_d256_w32"),
        "acc_serial": round(statistics.mean(acc["serial"]), 4),
        "acc_mgrit": round(statistics.mean(acc["mgrit"]), 4),
        "device": args.device, **speedups, "cpu_goal_met": (speedups.get("speedup_d1024_w8") or 0) >= 2.0,
        "acc_serial_seeds": acc["serial"], "acc_mgrit_seeds": acc["mgrit"],
        "breakdown_ms_d1024_w8": {k: round(v, 3) for k, v in parts.items()},
        "timings_s": table, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "repeats": repeats, "steps": steps, "batch": args.batch, "quick": args.quick,
        "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
