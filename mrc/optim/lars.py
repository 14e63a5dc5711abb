"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg, 2017, arXiv:1708.03888)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    r"""SGD with momentum whose step is rescaled per parameter tensor by a trust ratio.

    Large-batch training needs a large learning rate, but one global rate is too large for
    some layers and too small for others; LARS gives every tensor ("layer") a local rate
    proportional to ‖w‖/‖g‖ so each moves by about the same *relative* amount.

    For every parameter tensor w with gradient g, at every step:

        local_lr = trust · ‖w‖ / (‖g‖ + wd·‖w‖ + eps)     if ‖w‖ > 0 and ‖g‖ > 0, else 1
        g'       = (g + wd·w) · local_lr
        buf      = μ · buf + g'                            (buf starts at 0, so buf₁ = g')
        w        = w − lr · buf

    with ‖·‖ the Euclidean norm over the whole tensor, lr the (scheduled) global rate, μ the
    momentum, wd the weight decay and trust the trust coefficient η of the paper.

    With `exclude_bias_and_norm` (the default), 1-D tensors — biases and the affine weights of
    normalisation layers — are neither adapted nor decayed: for them g' = g (plain SGD with
    momentum), as is usual practice (e.g. for ResNet-50 / ImageNet at batch 32k).

    Every hyper-parameter may be set per parameter group. The zero-norm test is done on the
    device (torch.where), so a step never synchronises with the host.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, trust_coefficient: float = 0.001,
                 eps: float = 1e-8, exclude_bias_and_norm: bool = True) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}: it must be >= 0")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"invalid momentum {momentum}: it must lie in [0, 1)")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}: it must be >= 0")
        if trust_coefficient <= 0.0:
            raise ValueError(f"invalid trust_coefficient {trust_coefficient}: it must be > 0")
        if eps < 0.0:
            raise ValueError(f"invalid eps {eps}: it must be >= 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps,
                        exclude_bias_and_norm=exclude_bias_and_norm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one LARS step; `closure` re-evaluates the loss, as for any torch optimizer."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            mu = group["momentum"]
            wd = group["weight_decay"]
            trust = group["trust_coefficient"]
            eps = group["eps"]
            exclude = group["exclude_bias_and_norm"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                if exclude and p.ndim <= 1:
                    update = g
                else:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    ratio = trust * w_norm / (g_norm + wd * w_norm + eps)
                    local_lr = torch.where((w_norm > 0) & (g_norm > 0), ratio,
                                           torch.ones_like(ratio))
                    update = g.add(p, alpha=wd) if wd != 0 else g.clone()
                    update.mul_(local_lr)
                if mu != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = update.detach().clone()
                    else:
                        buf.mul_(mu).add_(update)
                    update = buf
                p.add_(update, alpha=-lr)
        return loss
