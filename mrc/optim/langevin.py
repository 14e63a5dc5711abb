"""Underdamped Langevin dynamics as a partition's integrator (BAOAB splitting).

    dθ = p dt,   dp = −∇L(θ) dt − γ p dt + √(2γτ) dW

One optimizer step of size h, with the gradient g = ∇L(θ) of the current point, is
    B: p ← p − (h/2)·g     (twice that on later steps: it closes the previous step's final
                            half-kick with the same gradient, so one gradient serves each step)
    A: θ ← θ + (h/2)·p
    O: p ← e^{−γh}·p + √((1 − e^{−2γh})·τ)·R,   R ~ N(0, I)
    A: θ ← θ + (h/2)·p
τ = 0 is pure (damped-momentum) optimization; τ > 0 samples at temperature τ. The noise is drawn
from torch's generator (checkpointed with the run, so resuming is exact).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


class Langevin(torch.optim.Optimizer):
    """BAOAB underdamped Langevin integrator; see the module docstring for the equations."""

    def __init__(self, params: Iterable[Any], lr: float, gamma: float = 1.0, tau: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        defaults = {"lr": lr, "gamma": gamma, "tau": tau, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            h, gamma, tau, wd = group["lr"], group["gamma"], group["tau"], group["weight_decay"]
            decay = math.exp(-gamma * h)
            noise = math.sqrt(max(0.0, (1 - decay * decay) * tau))
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=wd) if wd else p.grad
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                    kick = h / 2
                else:
                    kick = h
                m = state["momentum"]
                m.add_(g, alpha=-kick)  # B
                p.add_(m, alpha=h / 2)  # A
                m.mul_(decay)  # O
                if noise:
                    m.add_(torch.randn_like(m), alpha=noise)
                p.add_(m, alpha=h / 2)  # A
        return loss
