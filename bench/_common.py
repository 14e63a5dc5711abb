"""What the benches share: mrc's per-step clock, interleaved repeats, medians with spread.

The house rule: speed is measured, not asserted. Interleave the contenders (each repeat runs
every contender once, in a rotated order, so drift in the machine's speed hits all alike),
repeat, and report the median over the repeats with its spread (min–max); time whole periods of
a schedule, not single steps or best-of epochs.

`step_clock` is the one place that reads per-step times out of an mrc run: today the `time`
stamps of its metrics log. When the runtime grows an observer hook, change it here only.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mrc.target import launcher_place


def step_clock(result: Any) -> dict[int, float]:
    """Seconds since the start of the run at each logged step of an mrc `TrainResult`.

    A stamp at step s is taken after s optimizer steps, when the loss of step s is read (one
    device sync), so the gap between the stamps of steps a < b is the time of steps a+1..b.
    """
    return {int(m["step"]): float(m["time"]) for m in result.metrics if "loss" in m}


def window(stamps: dict[int, float], first: int, last: int) -> float:
    """Seconds per step over the steps first+1..last, from stamps taken at both ends."""
    if first not in stamps or last not in stamps or last <= first:
        raise ValueError(f"no stamps at steps {first} and {last} (have {sorted(stamps)[:5]}…)")
    return (stamps[last] - stamps[first]) / (last - first)


def period_times(stamps: dict[int, float], first: int, last: int, period: int) -> list[float]:
    """Seconds of each whole period first+1..first+period, …, up to last (stamps every period).

    The median of these is robust to a stall of the (shared) machine in one period, and every
    value covers the same mix of steps of the schedule.
    """
    steps = range(first, last + 1, period)
    missing = [s for s in steps if s not in stamps]
    if missing or len(steps) < 2:
        raise ValueError(f"no stamps at steps {missing[:3]} (or fewer than 2 in {first}..{last})")
    return [stamps[b] - stamps[a] for a, b in itertools.pairwise(steps)]


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclass(frozen=True, slots=True)
class Spread:
    """The median of repeated measurements, with their min and max."""

    median: float
    lo: float
    hi: float
    n: int

    @staticmethod
    def of(values: Sequence[float]) -> Spread:
        return Spread(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, scale: float = 1.0, digits: int = 3) -> str:
        return (f"{self.median * scale:.{digits}f} "
                f"[{self.lo * scale:.{digits}f}–{self.hi * scale:.{digits}f}]")

    def as_json(self, digits: int = 4) -> dict[str, float | int]:
        return {"median": round(self.median, digits), "min": round(self.lo, digits),
                "max": round(self.hi, digits), "n": self.n}


def interleaved(contenders: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Run every contender once per repeat, rotating the order each repeat; their results."""
    names = list(contenders)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            results[name].append(contenders[name]())
    return results


def ratios(numer: Sequence[float], denom: Sequence[float]) -> Spread:
    """Per-repeat ratios numer[i] / denom[i] (paired: measured in the same repeat)."""
    return Spread.of([a / b for a, b in zip(numer, denom, strict=True)])


# ---- running a bench on several processes ------------------------------------------------


def _rank_entry(index: int, rank_main: Callable[[Any], None], args: Any, port: int, threads: int,
                backend: str, device: str) -> None:
    import os

    os.environ.update(RANK=str(index), LOCAL_RANK=str(index), WORLD_SIZE=str(args.world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
    _joined(rank_main, args, threads, backend, device)


def _joined(rank_main: Callable[[Any], None], args: Any, threads: int, backend: str, device: str) -> None:
    from mrc.runtime import world as worlds
    from mrc.target import detect

    torch.set_num_threads(threads)
    worlds.join(detect(device, backend=backend), timeout_s=300.0)
    try:
        rank_main(args)
    except BaseException:
        worlds.leave(meet=False)
        raise
    worlds.leave()


def on_ranks(rank_main: Callable[[Any], None], args: Any, *, threads: int = 1, backend: str = "gloo",
             device: str = "cpu") -> None:
    """Run `rank_main(args)` on every rank: in this process when torchrun started it (then
    `args.world` is set to its WORLD_SIZE), else on `args.world` spawned processes here."""
    import socket

    if launcher_place() is not None:
        args.world = world_of(args.world)
        _joined(rank_main, args, threads, backend, device)
        return
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.start_processes(_rank_entry, args=(rank_main, args, port, threads, backend, device), nprocs=args.world,
                       start_method="spawn")


def world_of(asked: int) -> int:
    """The number of processes: torchrun's WORLD_SIZE when it started this one, else `asked`."""
    placed = launcher_place()
    return placed[0] if placed is not None else asked
