"""Learning-rate schedules: closed formulas, torch's schedulers, warm-up, validation."""

from __future__ import annotations

import inspect
import math
from itertools import pairwise

import pytest
import torch
from torch.optim import lr_scheduler

from mrc.optim import SCHEDULES, apply_lr, base_lrs, build_schedule, with_warmup

T = 60
EXPECTED = {"constant", "step", "multistep", "exponential", "linear", "cosine", "cyclic",
            "onecycle"}


def _values(name: str, kwargs: dict, total: int = T, upto: int | None = None) -> list[float]:
    m = build_schedule(name, total, kwargs)
    return [m(t) for t in range((total if upto is None else upto) + 1)]


def _close(got: list[float], want: list[float], tol: float = 1e-12) -> None:
    assert len(got) == len(want)
    for t, (a, b) in enumerate(zip(got, want, strict=True)):
        assert math.isclose(a, b, rel_tol=tol, abs_tol=tol), f"t={t}: {a} != {b}"


def _torch_lrs(make, steps: int, base: float = 0.5) -> list[float]:
    """The lr a torch scheduler sets for steps 0..steps-1, divided by the base lr."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"] / base)
        opt.step()
        sched.step()
    return out


def test_registry_holds_the_expected_schedules() -> None:
    assert SCHEDULES.family == "schedule"
    assert set(SCHEDULES.names()) == EXPECTED


@pytest.mark.parametrize("entry", list(SCHEDULES), ids=lambda e: e.name)
def test_every_schedule_takes_warmup_and_matches_its_signature(entry) -> None:
    assert entry.doc
    assert entry.param("warmup").kind == "int" and entry.param("warmup").default == 0
    assert entry.param("warmup_start").default == 0.0
    sig = inspect.signature(entry.build)
    assert next(iter(sig.parameters)) == "total_steps"
    for p in entry.params:
        assert p.doc
        default = sig.parameters[p.name].default
        if p.required:
            assert default is inspect.Parameter.empty
        else:
            assert default == p.default, (entry.name, p.name)
            assert p.validate(p.default)[1] is None


# --- closed formulas at every step ----------------------------------------------------------

def test_constant() -> None:
    _close(_values("constant", {}), [1.0] * (T + 1))


def test_step() -> None:
    _close(_values("step", {"every": 7, "gamma": 0.5}), [0.5 ** (t // 7) for t in range(T + 1)])
    _close(_values("step", {"every": 1}), [0.1**t for t in range(T + 1)])


def test_multistep() -> None:
    want = [1.0 if t < 10 else 0.3 if t < 25 else 0.09 if t < 40 else 0.027
            for t in range(T + 1)]
    _close(_values("multistep", {"milestones": [25, 10, 40], "gamma": 0.3}), want)


def test_exponential() -> None:
    _close(_values("exponential", {"gamma": 0.95}), [0.95**t for t in range(T + 1)])


@pytest.mark.parametrize("end", [0.0, 0.1])
def test_linear(end: float) -> None:
    _close(_values("linear", {"end": end}, upto=T + 10),
           [1 - (1 - end) * min(t, T) / T for t in range(T + 11)])


@pytest.mark.parametrize("end", [0.0, 0.05])
def test_cosine(end: float) -> None:
    want = [end + (1 - end) * (1 + math.cos(math.pi * min(t, T) / T)) / 2 for t in range(T + 11)]
    got = _values("cosine", {"end": end}, upto=T + 10)
    _close(got, want)
    assert got[0] == 1.0 and math.isclose(got[T // 2], (1 + end) / 2) and got[T] == end


@pytest.mark.parametrize("mode", ["triangular", "triangular2"])
def test_cyclic_formula(mode: str) -> None:
    low, high, period = 0.2, 1.0, 12

    def want(t: int) -> float:
        cycle, pos = divmod(t, period)
        amp = 1.0 if mode == "triangular" else 0.5**cycle
        up = pos / (period / 2) if pos <= period / 2 else (period - pos) / (period / 2)
        return low + (high - low) * up * amp

    got = _values("cyclic", {"low": low, "high": high, "period": period, "mode": mode})
    _close(got, [want(t) for t in range(T + 1)])


def test_cyclic_triangular_shape() -> None:
    got = _values("cyclic", {"low": 0.1, "high": 0.9, "period": 10})
    for k in range(T // 10):
        assert math.isclose(got[10 * k], 0.1) and math.isclose(got[10 * k + 5], 0.9)
        up = got[10 * k:10 * k + 6]
        down = got[10 * k + 5:10 * k + 11]
        assert all(b > a for a, b in pairwise(up))
        assert all(b < a for a, b in pairwise(down))
        steps = {round(b - a, 12) for a, b in pairwise(up)}
        assert steps == {0.16}  # linear: equal increments of (0.9 − 0.1)/5
    halving = _values("cyclic", {"low": 0.1, "high": 0.9, "period": 10, "mode": "triangular2"})
    peaks = [halving[10 * k + 5] - 0.1 for k in range(4)]
    for a, b in pairwise(peaks):
        assert math.isclose(b, a / 2)


def _onecycle_formula(t: int, total: int, pct: float, div: float, final_div: float,
                      anneal: str) -> float:
    initial, final = 1 / div, 1 / div / final_div
    t = min(t, total - 1)
    up_end = pct * total - 1
    if t <= up_end:
        start, end, a, b = 0.0, up_end, initial, 1.0
    else:
        start, end, a, b = up_end, total - 1, 1.0, final
    p = (t - start) / (end - start)
    if anneal == "cos":
        return b + (a - b) * (1 + math.cos(math.pi * p)) / 2
    return a + (b - a) * p


@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_onecycle_formula(anneal: str) -> None:
    kw = {"pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0, "anneal": anneal}
    got = _values("onecycle", kw, upto=T + 5)
    want = [_onecycle_formula(t, T, 0.25, 10.0, 100.0, anneal) for t in range(T + 6)]
    _close(got, want)
    assert math.isclose(got[0], 0.1) and math.isclose(max(got), 1.0)
    assert math.isclose(got[T - 1], 1e-3) and got[T + 5] == got[T - 1]


# --- the same sequences as torch's schedulers -----------------------------------------------

TORCH_CASES = [
    ("step", {"every": 9, "gamma": 0.7}, lambda o: lr_scheduler.StepLR(o, 9, 0.7)),
    ("multistep", {"milestones": [5, 20, 33]},
     lambda o: lr_scheduler.MultiStepLR(o, [5, 20, 33], 0.1)),
    ("exponential", {"gamma": 0.93}, lambda o: lr_scheduler.ExponentialLR(o, 0.93)),
    ("linear", {"end": 0.2},
     lambda o: lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.2, total_iters=T)),
    ("cosine", {"end": 0.1},
     lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=T, eta_min=0.1 * 0.5)),
    ("cyclic", {"low": 0.2, "high": 1.0, "period": 16},
     lambda o: lr_scheduler.CyclicLR(o, base_lr=0.1, max_lr=0.5, step_size_up=8,
                                     cycle_momentum=False)),
    ("cyclic", {"low": 0.2, "high": 1.0, "period": 16, "mode": "triangular2"},
     lambda o: lr_scheduler.CyclicLR(o, base_lr=0.1, max_lr=0.5, step_size_up=8,
                                     mode="triangular2", cycle_momentum=False)),
]


@pytest.mark.parametrize(("name", "kw", "make"), TORCH_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TORCH_CASES)])
def test_matches_torch_scheduler(name: str, kw: dict, make) -> None:
    m = build_schedule(name, T, kw)
    _close([m(t) for t in range(T)], _torch_lrs(make, T), tol=1e-9)


@pytest.mark.parametrize(("total", "kw"), [
    (100, {}),
    (100, {"anneal": "linear"}),
    (37, {"pct_start": 0.4, "div_factor": 5.0, "final_div_factor": 50.0}),
    (50, {"three_phase": True}),
    (50, {"three_phase": True, "anneal": "linear", "pct_start": 0.2}),
])
def test_onecycle_matches_torch(total: int, kw: dict) -> None:
    m = build_schedule("onecycle", total, kw)
    torch_kw = {"pct_start": kw.get("pct_start", 0.3), "div_factor": kw.get("div_factor", 25.0),
                "final_div_factor": kw.get("final_div_factor", 1e4),
                "anneal_strategy": kw.get("anneal", "cos"),
                "three_phase": kw.get("three_phase", False), "cycle_momentum": False}
    base = 0.8
    want = _torch_lrs(lambda o: lr_scheduler.OneCycleLR(o, max_lr=base, total_steps=total,
                                                        **torch_kw), total, base)
    _close([m(t) for t in range(total)], want, tol=1e-12)


# --- warm-up --------------------------------------------------------------------------------

def test_warmup_with_cosine() -> None:
    total, w, s = 50, 10, 0.1
    got = _values("cosine", {"warmup": w, "warmup_start": s}, total=total)
    want = [s + (1 - s) * (t + 1) / w if t < w
            else (1 + math.cos(math.pi * (t - w) / (total - w))) / 2 for t in range(total + 1)]
    _close(got, want)
    assert math.isclose(got[0], 0.19) and got[w - 1] == 1.0 and got[w] == 1.0
    assert got[total] == 0.0  # the cosine runs over total − warmup steps and ends at `end`
    assert all(b > a for a, b in pairwise(got[:w]))


def test_warmup_with_step() -> None:
    got = _values("step", {"every": 5, "gamma": 0.5, "warmup": 4}, total=30)
    want = [(t + 1) / 4 if t < 4 else 0.5 ** ((t - 4) // 5) for t in range(31)]
    _close(got, want)
    assert got[0] == 0.25


def test_warmup_ramps_to_the_schedules_first_value() -> None:
    """With a schedule that does not start at 1 (one-cycle starts at 1/div_factor)."""
    got = _values("onecycle", {"warmup": 5, "warmup_start": 0.0, "div_factor": 20.0}, total=40)
    _close(got[:5], [0.05 * (t + 1) / 5 for t in range(5)])
    _close(got[5:40], [build_schedule("onecycle", 35, {"div_factor": 20.0})(t)
                       for t in range(35)])


def test_warmup_validation_and_edges() -> None:
    # a run shorter than its warm-up warms up over the whole run
    _close(_values("cosine", {"warmup": 50}, total=10, upto=9),
           [(t + 1) / 10 for t in range(10)])
    only = _values("linear", {"warmup": 10}, total=10, upto=11)  # all warm-up: ramps to 1
    _close(only[:10], [(t + 1) / 10 for t in range(10)])
    assert only[11] == 0.0  # and the empty decay is over after it
    with pytest.raises(ValueError, match="warmup"):
        build_schedule("constant", 10, {"warmup": -1})
    with pytest.raises(ValueError, match="warmup"):
        build_schedule("constant", 10, {"warmup": 2.5})
    assert with_warmup(math.cos, 0) is math.cos


def test_schedule_is_a_pure_function_of_the_step() -> None:
    m = build_schedule("onecycle", 40, {"warmup": 3})
    forward = [m(t) for t in range(40)]
    backward = [m(t) for t in reversed(range(40))][::-1]
    assert forward == backward
    assert all(isinstance(v, float) for v in forward)


# --- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "kw", "match"), [
    ("step", {"every": 2.5}, "every` must be an integer"),
    ("step", {"every": 0}, "out of range"),
    ("step", {}, "needs `every`"),
    ("step", {"every": 3, "gamma": -0.1}, "out of range"),
    ("multistep", {"milestones": [10, 2.5]}, "integer"),
    ("exponential", {"gamma": 0.0}, "out of range"),
    ("cyclic", {"period": 1}, "out of range"),
    ("cyclic", {"period": 10, "mode": "exp_range"}, "must be one of"),
    ("onecycle", {"pct_start": 1.5}, "out of range"),
    ("onecycle", {"anneal": "cosine"}, "must be one of"),
    ("cosine", {"ends": 0.1}, "did you mean `end`"),
    ("cosin", {}, "did you mean `cosine`"),
])
def test_bad_arguments_are_rejected(name: str, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_schedule(name, 100, kw)


def test_every_must_be_an_integer_param() -> None:
    every = SCHEDULES.get("step").param("every")
    assert every.validate(2.5)[1] is not None
    assert every.validate(3.0) == (3, None)


@pytest.mark.parametrize("total", [0, -5, 2.0, True])
def test_total_steps_must_be_a_positive_integer(total) -> None:
    with pytest.raises(ValueError, match="total_steps"):
        build_schedule("constant", total, {})


# --- end to end with an optimizer -----------------------------------------------------------

def test_apply_lr_with_cosine_matches_torch_training_loop() -> None:
    def run(use_mrc: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
        x = torch.randn(8, 3)
        if use_mrc:
            m, bases = build_schedule("cosine", 20, {}), base_lrs(opt)
        else:
            sched = lr_scheduler.CosineAnnealingLR(opt, T_max=20)
        for t in range(20):
            if use_mrc:
                apply_lr(opt, bases, m(t))
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            if not use_mrc:
                sched.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.testing.assert_close(run(True), run(False), rtol=1e-6, atol=1e-7)
