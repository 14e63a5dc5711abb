"""The learning-rate schedule registry: every `schedule NAME(...)` a spec can say.

A schedule is a pure function of the optimizer step: `build(total_steps, **kwargs)` returns
`m: int -> float`, the MULTIPLIER of the base learning rate at optimizer step t, where t = 0 is
the first step. The runtime sets `lr = base_lr · m(t)` before step t (`apply_lr`). Because m
depends on t alone (no internal state, unlike torch's LRScheduler), resuming at step t is exact.

`total_steps` = T is the number of optimizer steps of the run. The decaying schedules reach
their final value at t = T (as torch's `T_max` / `total_iters`), so the last step taken,
t = T − 1, is one step short of it; after T they hold that value.

Warm-up (every schedule accepts `warmup` = W ≥ 0 and `warmup_start` = s ≥ 0, a fraction of the
base rate) is one wrapper around the schedule f built over the remaining T − W steps:

    m(t) = s + (f(0) − s) · (t + 1) / W      for 0 ≤ t < W    (linear ramp)
    m(t) = f(t − W)                           for t ≥ W

The ramp starts one increment above s (no step is wasted at lr = 0 when s = 0) and reaches
f(0), the schedule's own first value, on the last warm-up step t = W − 1; the wrapped schedule
then starts from its beginning at t = W, as if training began there. So a cosine decays over
the T − W steps after warm-up, and step/multistep boundaries count from the end of warm-up.
"""

from __future__ import annotations

import bisect
import inspect
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mrc.registry import REQUIRED, Entry, Param, Registry

if TYPE_CHECKING:
    import torch

Schedule = Callable[[int], float]
"""A learning-rate multiplier as a function of the optimizer step (0-based)."""

SCHEDULES = Registry("schedule")

WARMUP_PARAMS = (
    Param("warmup", "int", 0, "linear warm-up over this many first steps", lo=0),
    Param("warmup_start", "float", 0.0,
          "warm-up starts from this fraction of the base learning rate", lo=0.0),
)


def with_warmup(schedule: Schedule, warmup: int, warmup_start: float = 0.0) -> Schedule:
    """Prefix `schedule` with a linear warm-up of `warmup` steps (see the module docstring)."""
    if warmup < 0:
        raise ValueError(f"`warmup` must be >= 0, not {warmup}")
    if warmup == 0:
        return schedule
    target = schedule(0)

    def warmed(t: int) -> float:
        if t < warmup:
            frac = (t + 1) / warmup  # written so that frac = 1 gives `target` exactly
            return warmup_start * (1.0 - frac) + target * frac
        return schedule(t - warmup)

    return warmed


def _register(name: str, *params: Param, doc: str) -> Callable[[Callable[..., Schedule]],
                                                                 Callable[..., Schedule]]:
    """Register schedule `fn(total_steps, **kw)` with the warm-up wrapper around it."""

    def wrap(fn: Callable[..., Schedule]) -> Callable[..., Schedule]:
        def build(total_steps: int, warmup: int = 0, warmup_start: float = 0.0,
                  **kwargs: Any) -> Schedule:
            # A run shorter than its warm-up (a smoke test with --steps 3, say) warms up for
            # the whole run rather than failing.
            warmup = min(warmup, total_steps)
            return with_warmup(fn(total_steps - warmup, **kwargs), warmup, warmup_start)

        inner = inspect.signature(fn)
        extra = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default,
                                   annotation=int if p.kind == "int" else float)
                 for p in WARMUP_PARAMS]
        build.__signature__ = inner.replace(  # type: ignore[attr-defined]
            parameters=[*inner.parameters.values(), *extra])
        build.__name__ = build.__qualname__ = fn.__name__
        build.__doc__ = fn.__doc__
        build.__wrapped__ = fn  # type: ignore[attr-defined]
        SCHEDULES.add(Entry(name, build, (*params, *WARMUP_PARAMS), doc))
        return fn

    return wrap


def _progress(t: int, total: int) -> float:
    """Fraction of the run done at step t, clamped to [0, 1].

    An empty run (total = 0, e.g. warm-up takes every step) is at its start at t = 0, so the
    warm-up ramps to the schedule's start value, and at its end from t = 1 on.
    """
    if total <= 0:
        return 0.0 if t <= 0 else 1.0
    return min(max(t, 0), total) / total


@_register("constant", doc="constant: m(t) = 1")
def constant(total_steps: int) -> Schedule:
    """The base learning rate throughout."""
    return lambda t: 1.0


@_register(
    "step",
    Param("every", "int", REQUIRED, "decay period in steps", lo=1),
    Param("gamma", "float", 0.1, "decay factor", lo=0.0, lo_open=True),
    doc="step decay: m(t) = gamma^⌊t / every⌋",
)
def step(total_steps: int, every: int, gamma: float = 0.1) -> Schedule:
    """Multiply the rate by `gamma` every `every` steps (torch StepLR)."""
    return lambda t: gamma ** (t // every)


@_register(
    "multistep",
    Param("milestones", "ints", REQUIRED, "steps at which the rate is multiplied by gamma",
          lo=0),
    Param("gamma", "float", 0.1, "decay factor", lo=0.0, lo_open=True),
    doc="multi-step decay: m(t) = gamma^(number of milestones ≤ t)",
)
def multistep(total_steps: int, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """Multiply the rate by `gamma` at each milestone (torch MultiStepLR)."""
    marks = sorted(int(m) for m in milestones)
    return lambda t: gamma ** bisect.bisect_right(marks, t)


@_register(
    "exponential",
    Param("gamma", "float", REQUIRED, "decay factor per step", lo=0.0, lo_open=True),
    doc="exponential decay per step: m(t) = gamma^t",
)
def exponential(total_steps: int, gamma: float) -> Schedule:
    """Multiply the rate by `gamma` every step (torch ExponentialLR)."""
    return lambda t: gamma**t


@_register(
    "linear",
    Param("end", "float", 0.0, "final multiplier, reached at total_steps", lo=0.0),
    doc="linear decay: m(t) = 1 + (end − 1)·min(t, T)/T",
)
def linear(total_steps: int, end: float = 0.0) -> Schedule:
    """Linear decay from 1 to `end` over the run (torch LinearLR)."""
    return lambda t: 1.0 + (end - 1.0) * _progress(t, total_steps)


@_register(
    "cosine",
    Param("end", "float", 0.0, "final multiplier, reached at total_steps", lo=0.0),
    doc="cosine annealing: m(t) = end + (1 − end)·(1 + cos(π·min(t, T)/T))/2",
)
def cosine(total_steps: int, end: float = 0.0) -> Schedule:
    """Cosine annealing from 1 to `end` over the run (torch CosineAnnealingLR, one cycle)."""
    return lambda t: end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * _progress(t, total_steps)))


@_register(
    "cyclic",
    Param("low", "float", 0.1, "multiplier at the bottom of a cycle", lo=0.0),
    Param("high", "float", 1.0, "multiplier at the top of a cycle", lo=0.0),
    Param("period", "int", REQUIRED, "length of one full cycle (low → high → low) in steps",
          lo=2),
    Param("mode", "choice", "triangular", "triangular: every cycle equal; "
          "triangular2: the amplitude halves every cycle", choices=("triangular", "triangular2")),
    doc="cyclic (triangular): m(t) = low + (high − low)·(1 − |2·frac(t/period) − 1|)·scale",
)
def cyclic(total_steps: int, period: int, low: float = 0.1, high: float = 1.0,
           mode: str = "triangular") -> Schedule:
    """Triangular cyclic rate (Smith 2017, torch CyclicLR with step_size_up = period/2).

    c = ⌊t / period⌋, φ = (t mod period)/period, m(t) = low + (high − low)·(1 − |2φ − 1|)·a_c
    with a_c = 1 (triangular) or 2^(−c) (triangular2).
    """
    if mode not in ("triangular", "triangular2"):
        raise ValueError(f"unknown cyclic mode {mode!r}")
    halving = mode == "triangular2"

    def cyc(t: int) -> float:
        cycle, pos = divmod(t, period)
        height = 1.0 - abs(2.0 * pos / period - 1.0)
        if halving:
            height *= 0.5**cycle
        return low + (high - low) * height

    return cyc


@_register(
    "onecycle",
    Param("pct_start", "float", 0.3, "fraction of the run spent rising to the peak",
          lo=0.0, hi=1.0),
    Param("div_factor", "float", 25.0, "initial multiplier = 1/div_factor", lo=0.0,
          lo_open=True),
    Param("final_div_factor", "float", 1e4,
          "final multiplier = 1/(div_factor·final_div_factor)", lo=0.0, lo_open=True),
    Param("anneal", "choice", "cos", "interpolation within a phase", choices=("cos", "linear")),
    Param("three_phase", "bool", False,
          "fall back to the initial rate symmetrically, then anneal to the final rate"),
    doc="one-cycle (Smith 2018): rise from 1/div_factor to 1, then anneal to the final rate",
)
def onecycle(total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
             final_div_factor: float = 1e4, anneal: str = "cos",
             three_phase: bool = False) -> Schedule:
    """One-cycle policy, the formula of torch's OneCycleLR relative to its max_lr.

    The base rate given to the optimizer is the PEAK rate (OneCycleLR's max_lr); the multiplier
    starts at i = 1/div_factor, rises to 1 by step pct_start·T − 1, then anneals to
    i/final_div_factor at step T − 1 (three_phase: back to i by 2·pct_start·T − 2 first). Within
    a phase from a to b over steps [s, e]: p = (t − s)/(e − s), and m = b + (a − b)(1 + cos πp)/2
    (cos) or a + (b − a)p (linear). Steps past T − 1 hold the final value.
    """
    if anneal not in ("cos", "linear"):
        raise ValueError(f"unknown anneal {anneal!r}")
    initial = 1.0 / div_factor
    final = initial / final_div_factor
    t_total = float(total_steps)
    if three_phase:
        phases = [(pct_start * t_total - 1, initial, 1.0),
                  (2 * pct_start * t_total - 2, 1.0, initial),
                  (t_total - 1, initial, final)]
    else:
        phases = [(pct_start * t_total - 1, initial, 1.0), (t_total - 1, 1.0, final)]
    last = max(total_steps - 1, 0)
    cos_mode = anneal == "cos"

    def one(t: int) -> float:
        t = min(max(t, 0), last)
        start = 0.0
        for i, (end, a, b) in enumerate(phases):
            if t <= end or i == len(phases) - 1:
                span = end - start
                p = (t - start) / span if span != 0 else 1.0
                if cos_mode:
                    return b + (a - b) / 2.0 * (math.cos(math.pi * p) + 1.0)
                return (b - a) * p + a
            start = end
        raise AssertionError("unreachable")  # pragma: no cover

    return one


def apply_lr(optimizer: torch.optim.Optimizer, base_lrs: Sequence[float],
             multiplier: float) -> None:
    """Set each param group's lr to base · multiplier (runs every step, so kept minimal)."""
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        lr = group["lr"]
        if not isinstance(lr, float | int):  # a tensor lr (fused and capturable optimizers)
            lr.fill_(base * multiplier)
        else:
            group["lr"] = base * multiplier


def base_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """The current lr of each param group, as floats: the bases that `apply_lr` scales."""
    return [float(group["lr"]) for group in optimizer.param_groups]
