"""LAMB: layer-wise adaptive moments for batch training (You et al., 2019, arXiv:1904.00962)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


class LAMB(Optimizer):
    r"""Adam (with decoupled weight decay) whose step is rescaled per tensor by a trust ratio.

    LAMB is to Adam what LARS is to SGD: the Adam direction r of each parameter tensor is
    rescaled so that the tensor moves by lr·‖w‖, which keeps very large batches (BERT at 64k)
    stable without per-layer tuning.

    For every parameter tensor w with gradient g, at step t = 1, 2, …:

        m  = β₁·m + (1 − β₁)·g                    (m, v start at 0)
        v  = β₂·v + (1 − β₂)·g²
        m̂  = m / (1 − β₁ᵗ),  v̂ = v / (1 − β₂ᵗ)    (m̂ = m, v̂ = v when bias_correction is false)
        r  = m̂ / (√v̂ + eps) + wd·w
        φ  = ‖w‖ / ‖r‖                            if ‖w‖ > 0 and ‖r‖ > 0, else 1
        w  = w − lr·φ·r

    with ‖·‖ the Euclidean norm over the whole tensor. The scaling function of the paper is
    the identity (no clipping of ‖w‖), as in its reference experiments.

    Every hyper-parameter may be set per parameter group. The zero-norm test is done on the
    device (torch.where), so a step never synchronises with the host.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, bias_correction: bool = True) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}: it must be >= 0")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid betas {betas}: two numbers in [0, 1) are needed")
        if eps <= 0.0:
            raise ValueError(f"invalid eps {eps}: it must be > 0")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}: it must be >= 0")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one LAMB step; `closure` re-evaluates the loss, as for any torch optimizer."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            beta1, beta2 = group["betas"]
            eps = group["eps"]
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                if group["bias_correction"]:
                    bc1 = 1.0 - beta1**t
                    bc2 = 1.0 - beta2**t
                else:
                    bc1 = bc2 = 1.0
                denom = (v / bc2).sqrt_().add_(eps) if bc2 != 1.0 else v.sqrt().add_(eps)
                r = (m / bc1).div_(denom) if bc1 != 1.0 else m.div(denom)
                if wd != 0:
                    r.add_(p, alpha=wd)
                w_norm = torch.linalg.vector_norm(p)
                r_norm = torch.linalg.vector_norm(r)
                phi = torch.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm,
                                  torch.ones_like(w_norm))
                p.sub_(r.mul_(phi), alpha=lr)
        return loss

