"""Optimizers against plain-torch references written straight from their update equations.

Every test runs a few steps in float64 on three tensors (a matrix, a bias and a second
matrix) of a small non-quadratic loss, so gradients depend on the trajectory, and compares the
parameters after every step to 1e-12. Each reference is a loop over tensors with explicit
formulas and no torch.optim code; the "power" tests show that a slightly wrong reference is
caught.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from mrc.optim import build_optimizer

TOL = 1e-12
STEPS = 5
Tensors = list[torch.Tensor]


def _problem(zero_bias: bool = False) -> tuple[Tensors, Callable[[Tensors], Tensors]]:
    """Initial values of (W1 [5x4], b1 [5], W2 [3x5]) and a gradient function of them."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    w1 = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 0.7
    b1 = torch.zeros(5, dtype=torch.float64) if zero_bias else \
        torch.randn(5, generator=gen, dtype=torch.float64) * 0.3
    w2 = torch.randn(3, 5, generator=gen, dtype=torch.float64) * 0.5

    def grads(values: Tensors) -> Tensors:
        leaves = [v.detach().clone().requires_grad_(True) for v in values]
        a, b, c = leaves
        loss = ((torch.tanh(x @ a.T + b) @ c.T - y) ** 2).mean()
        return list(torch.autograd.grad(loss, leaves))

    return [w1, b1, w2], grads


def _run_mrc(name: str, kwargs: dict, zero_bias: bool = False) -> list[Tensors]:
    """The trajectory (values after each step) of mrc's optimizer `name`."""
    init, grads = _problem(zero_bias)
    params = [torch.nn.Parameter(v.clone()) for v in init]
    opt = build_optimizer(name, params, kwargs)
    out = []
    for _ in range(STEPS):
        for p, g in zip(params, grads([p.detach() for p in params]), strict=True):
            p.grad = g
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


def _run_ref(update: Callable[[int, int, torch.Tensor, torch.Tensor, dict], torch.Tensor],
             zero_bias: bool = False) -> list[Tensors]:
    """Trajectory of a reference: update(step t >= 1, tensor index, w, g, state) -> new w."""
    values, grads = _problem(zero_bias)
    values = [v.clone() for v in values]
    states: list[dict] = [{} for _ in values]
    out = []
    for t in range(1, STEPS + 1):
        gs = grads(values)
        values = [update(t, i, w, g, states[i]) for i, (w, g) in enumerate(zip(values, gs,
                                                                                  strict=True))]
        out.append([v.clone() for v in values])
    return out


def _max_diff(a: list[Tensors], b: list[Tensors]) -> float:
    return max(float((x - y).abs().max()) for sa, sb in zip(a, b, strict=True)
               for x, y in zip(sa, sb, strict=True))


def _assert_same(a: list[Tensors], b: list[Tensors]) -> None:
    diff = _max_diff(a, b)
    assert diff <= TOL, f"trajectories differ by {diff:.3e}"
    init, _ = _problem()
    moved = max(float((x - y).abs().max()) for x, y in zip(a[-1], init, strict=True))
    assert moved > 1e-3, "the optimizer barely moved: the comparison would prove nothing"


def _norm(t: torch.Tensor) -> float:
    return math.sqrt(float((t * t).sum()))


# --- SGD family -----------------------------------------------------------------------------

def _sgd_ref(lr: float, mu: float = 0.0, wd: float = 0.0, nesterov: bool = False,
             dampening: float = 0.0):
    def update(t, i, w, g, s):
        g = g + wd * w
        if mu == 0:
            return w - lr * g
        # p = μp + (1 − dampening)·g, with p₁ = g (torch's convention: no dampening at t = 1)
        s["p"] = g.clone() if t == 1 else mu * s["p"] + (1 - dampening) * g
        step = g + mu * s["p"] if nesterov else s["p"]
        return w - lr * step
    return update


def test_sgd_plain() -> None:
    _assert_same(_run_mrc("sgd", {"lr": 0.3}), _run_ref(_sgd_ref(0.3)))


def test_sgd_momentum_is_p_mu_p_plus_g() -> None:
    _assert_same(_run_mrc("sgd", {"lr": 0.2, "momentum": 0.9}), _run_ref(_sgd_ref(0.2, 0.9)))
    _assert_same(_run_mrc("momentum", {"lr": 0.2}), _run_ref(_sgd_ref(0.2, 0.9)))


def test_sgd_weight_decay_dampening() -> None:
    _assert_same(_run_mrc("sgd", {"lr": 0.2, "momentum": 0.8, "weight_decay": 0.05,
                                  "dampening": 0.3}),
                 _run_ref(_sgd_ref(0.2, 0.8, wd=0.05, dampening=0.3)))


def test_nesterov() -> None:
    _assert_same(_run_mrc("nesterov", {"lr": 0.1, "weight_decay": 0.01}),
                 _run_ref(_sgd_ref(0.1, 0.9, wd=0.01, nesterov=True)))
    _assert_same(_run_mrc("sgd", {"lr": 0.1, "momentum": 0.5, "nesterov": True}),
                 _run_ref(_sgd_ref(0.1, 0.5, nesterov=True)))


# --- Adam family ----------------------------------------------------------------------------

def _adam_ref(lr: float, b1: float, b2: float, eps: float, wd: float = 0.0,
              decoupled: bool = False):
    def update(t, i, w, g, s):
        if decoupled:
            w = w * (1 - lr * wd)
        else:
            g = g + wd * w
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        m_hat = s["m"] / (1 - b1**t)
        v_hat = s["v"] / (1 - b2**t)
        return w - lr * m_hat / (torch.sqrt(v_hat) + eps)
    return update


def test_adam() -> None:
    _assert_same(_run_mrc("adam", {"lr": 0.05, "betas": [0.8, 0.99]}),
                 _run_ref(_adam_ref(0.05, 0.8, 0.99, 1e-8)))
    _assert_same(_run_mrc("adam", {"lr": 0.05, "weight_decay": 0.1, "eps": 1e-3}),
                 _run_ref(_adam_ref(0.05, 0.9, 0.999, 1e-3, wd=0.1)))


def test_adamw_decouples_weight_decay() -> None:
    _assert_same(_run_mrc("adamw", {"lr": 0.05, "weight_decay": 0.2}),
                 _run_ref(_adam_ref(0.05, 0.9, 0.999, 1e-8, wd=0.2, decoupled=True)))


def test_rmsprop() -> None:
    def update(t, i, w, g, s):
        s["v"] = 0.9 * s.get("v", 0.0) + 0.1 * g * g
        return w - 0.01 * g / (torch.sqrt(s["v"]) + 1e-8)
    _assert_same(_run_mrc("rmsprop", {"lr": 0.01, "alpha": 0.9}), _run_ref(update))


def test_adagrad() -> None:
    def update(t, i, w, g, s):
        s["sum"] = s.get("sum", 0.0) + g * g
        return w - 0.1 * g / (torch.sqrt(s["sum"]) + 1e-10)
    _assert_same(_run_mrc("adagrad", {"lr": 0.1}), _run_ref(update))


# --- LARS -----------------------------------------------------------------------------------

def _lars_ref(lr: float, mu: float, wd: float, trust: float, eps: float, exclude: bool,
              wd_in_denominator: bool = True):
    """You et al. 2017, per tensor, as in the contract (scalar arithmetic on the norms)."""
    def update(t, i, w, g, s):
        if exclude and w.ndim == 1:
            g2 = g
        else:
            wn, gn = _norm(w), _norm(g)
            denom = gn + (wd * wn if wd_in_denominator else 0.0) + eps
            local = trust * wn / denom if (wn > 0 and gn > 0) else 1.0
            g2 = (g + wd * w) * local
        s["buf"] = mu * s.get("buf", 0.0) + g2
        return w - lr * s["buf"]
    return update


LARS_CASES = [
    dict(lr=2.0, momentum=0.9, weight_decay=0.0, trust_coefficient=0.02, eps=1e-8,
         exclude_bias_and_norm=True),
    dict(lr=2.0, momentum=0.8, weight_decay=0.05, trust_coefficient=0.02, eps=1e-8,
         exclude_bias_and_norm=True),
    dict(lr=1.5, momentum=0.9, weight_decay=0.05, trust_coefficient=0.05, eps=1e-3,
         exclude_bias_and_norm=False),
    dict(lr=0.5, momentum=0.0, weight_decay=0.1, trust_coefficient=0.1, eps=1e-8,
         exclude_bias_and_norm=False),
]


@pytest.mark.parametrize("kw", LARS_CASES)
def test_lars_matches_equations(kw: dict) -> None:
    ref = _lars_ref(kw["lr"], kw["momentum"], kw["weight_decay"], kw["trust_coefficient"],
                    kw["eps"], kw["exclude_bias_and_norm"])
    _assert_same(_run_mrc("lars", kw), _run_ref(ref))


def test_lars_zero_weight_uses_local_rate_one() -> None:
    """A zero bias that is adapted takes local_lr = 1 on its first step (‖w‖ = 0)."""
    kw = LARS_CASES[2]
    ref = _lars_ref(kw["lr"], kw["momentum"], kw["weight_decay"], kw["trust_coefficient"],
                    kw["eps"], False)
    _assert_same(_run_mrc("lars", kw, zero_bias=True), _run_ref(ref, zero_bias=True))


def test_lars_reference_has_power() -> None:
    """Dropping wd·‖w‖ from the denominator, or not excluding biases, is detected."""
    kw = LARS_CASES[1]
    got = _run_mrc("lars", kw)
    wrong = _lars_ref(kw["lr"], kw["momentum"], kw["weight_decay"], kw["trust_coefficient"],
                      kw["eps"], True, wd_in_denominator=False)
    assert _max_diff(got, _run_ref(wrong)) > 1e-6
    unexcluded = _lars_ref(kw["lr"], kw["momentum"], kw["weight_decay"],
                           kw["trust_coefficient"], kw["eps"], False)
    assert _max_diff(got, _run_ref(unexcluded)) > 1e-6


# --- LAMB -----------------------------------------------------------------------------------

def _lamb_ref(lr: float, b1: float, b2: float, eps: float, wd: float, bias_correction: bool):
    """You et al. 2019, per tensor, as in the contract."""
    def update(t, i, w, g, s):
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        m_hat, v_hat = s["m"], s["v"]
        if bias_correction:
            m_hat = m_hat / (1 - b1**t)
            v_hat = v_hat / (1 - b2**t)
        r = m_hat / (torch.sqrt(v_hat) + eps) + wd * w
        wn, rn = _norm(w), _norm(r)
        phi = wn / rn if (wn > 0 and rn > 0) else 1.0
        return w - lr * phi * r
    return update


LAMB_CASES = [
    dict(lr=0.05, betas=[0.9, 0.999], eps=1e-6, weight_decay=0.01, bias_correction=True),
    dict(lr=0.1, betas=[0.8, 0.95], eps=1e-4, weight_decay=0.1, bias_correction=True),
    dict(lr=0.05, betas=[0.9, 0.99], eps=1e-6, weight_decay=0.0, bias_correction=False),
]


@pytest.mark.parametrize("kw", LAMB_CASES)
def test_lamb_matches_equations(kw: dict) -> None:
    ref = _lamb_ref(kw["lr"], *kw["betas"], kw["eps"], kw["weight_decay"],
                    kw["bias_correction"])
    _assert_same(_run_mrc("lamb", kw), _run_ref(ref))


def test_lamb_zero_weight_uses_trust_one() -> None:
    kw = LAMB_CASES[1]
    ref = _lamb_ref(kw["lr"], *kw["betas"], kw["eps"], kw["weight_decay"], True)
    _assert_same(_run_mrc("lamb", kw, zero_bias=True), _run_ref(ref, zero_bias=True))


def test_lamb_reference_has_power() -> None:
    kw = LAMB_CASES[1]
    got = _run_mrc("lamb", kw)
    no_bc = _lamb_ref(kw["lr"], *kw["betas"], kw["eps"], kw["weight_decay"], False)
    assert _max_diff(got, _run_ref(no_bc)) > 1e-6
    no_wd = _lamb_ref(kw["lr"], *kw["betas"], kw["eps"], 0.0, True)
    assert _max_diff(got, _run_ref(no_wd)) > 1e-6


# --- on a GPU -------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("name", "kw"), [("lars", LARS_CASES[2]), ("lamb", LAMB_CASES[1])])
def test_cuda_matches_cpu_without_host_syncs(name: str, kw: dict) -> None:
    """Same trajectory on the GPU; a step never waits for the device (no .item())."""
    init, grads = _problem(zero_bias=True)
    trajectories = []
    for device in ("cpu", "cuda"):
        params = [torch.nn.Parameter(v.clone().to(device)) for v in init]
        opt = build_optimizer(name, params, kw)
        out = []
        for _ in range(STEPS):
            for p, g in zip(params, grads([p.detach().cpu() for p in params]), strict=True):
                p.grad = g.to(device)
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("error")
            try:
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            out.append([p.detach().cpu().clone() for p in params])
        trajectories.append(out)
    assert _max_diff(*trajectories) <= TOL
