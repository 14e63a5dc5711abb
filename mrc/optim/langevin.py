"""Underdamped Langevin dynamics as a partition's integrator (BAOAB splitting).

    dθ = p dt,   dp = −∇L(θ) dt − γ p dt + √(2γτ) dW

One optimizer step of size h, with the gradient g = ∇L(θ) of the current point, is
    B: p ← p − (h/2)·g     (twice that on later steps: it closes the previous step's final
                            half-kick with the same gradient, so one gradient serves each step)
    A: θ ← θ + (h/2)·p
    O: p ← e^{−γh}·p + √((1−e^{−2γh})·τ)·R,   R ~ N(0, I)
    A: θ ← θ + (h/2)·p
τ = 0 is pure (damped-momentum) optimization; τ > 0 samples at temperature τ.

Two kernels, the same dynamics, different random numbers:

* `kernel="torch"` (default): R is drawn with `torch.randn_like` from torch's global generator,
  which the trainer checkpoints with the run, so resuming is exact.
* `kernel="triton"`: the O-step is `kernels.langevin.langevin_o_triton`, whose R is
  counter-based (Philox keyed by `seed`, counter = a running offset advanced by each tensor's
  size on every step, in parameter order). It does not touch torch's generator, so its numbers
  differ from the torch path's (τ = 0 aside, where both are the same deterministic update);
  they have the same distribution, and the counter is in `state_dict()` (`"noise"`), so a
  resumed run draws exactly the numbers the uninterrupted one would. It needs float32
  parameters (the kernel's momentum is float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


class Langevin(torch.optim.Optimizer):
    """BAOAB underdamped Langevin integrator; see the module docstring for the equations.

    `kernel`: "torch" or "triton" (the O-step as a Triton kernel with counter-based noise);
    `seed`: the Philox key of the Triton path's noise (unused by the torch path). Give each
    partition of a run its own seed, e.g. derived from the run's seed and the partition name.
    """

    def __init__(self, params: Iterable[Any], lr: float, gamma: float = 1.0, tau: float = 0.0,
                 weight_decay: float = 0.0, *, kernel: str = "torch", seed: int = 0) -> None:
        if kernel not in ("torch", "triton"):
            raise ValueError(f"kernel must be 'torch' or 'triton', not {kernel!r}")
        defaults = {"lr": lr, "gamma": gamma, "tau": tau, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.kernel = kernel
        self.seed = int(seed)
        self.noise_offset = 0  # the Triton path's Philox counter of the next draw
        if kernel == "triton":
            for group in self.param_groups:
                for p in group["params"]:
                    if p.dtype != torch.float32:
                        raise TypeError(f"Langevin(kernel='triton') needs float32 parameters, "
                                        f"not {p.dtype}; use kernel='torch'")

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
                    state["momentum"] = (  # contiguous for the Triton O-step's flat view
                        torch.zeros_like(p) if self.kernel == "torch"
                        else torch.zeros(p.shape, dtype=p.dtype, device=p.device))
                    kick = h / 2
                else:
                    kick = h
                m = state["momentum"]
                m.add_(g, alpha=-kick)  # B
                p.add_(m, alpha=h / 2)  # A
                if self.kernel == "triton":
                    self._o_step_triton(m, gamma=gamma, h=h, tau=tau)  # O
                else:
                    m.mul_(decay)  # O
                    if noise:
                        m.add_(torch.randn_like(m), alpha=noise)
                p.add_(m, alpha=h / 2)  # A
        return loss

    def _o_step_triton(self, m: torch.Tensor, *, gamma: float, h: float, tau: float) -> None:
        from mrc.kernels.langevin import langevin_o_triton

        flat = m.view(-1) if m.is_contiguous() else m.contiguous().view(-1)
        langevin_o_triton(flat, gamma=gamma, h=h, tau=tau, seed=self.seed, offset=self.noise_offset)
        if flat.data_ptr() != m.data_ptr():
            m.copy_(flat.view(m.shape))
        self.noise_offset += m.numel()

    def reset_state(self) -> None:
        """Forget the momentum (the next step starts from p = 0 with a half kick). The noise
        counter goes on, so a reset never replays earlier random numbers."""
        self.state.clear()

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state_dict plus `"noise"`: the Triton path's seed and counter."""
        state = super().state_dict()
        state["noise"] = {"seed": self.seed, "offset": self.noise_offset}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        noise = state_dict.pop("noise", None)
        super().load_state_dict(state_dict)
        if noise is not None:
            self.seed, self.noise_offset = int(noise["seed"]), int(noise["offset"])
