"""Batch norm over the whole batch when the batch is split across ranks (data parallelism).

In one process a batch-norm layer normalises by the batch's statistics. With the batch split
into shards, each rank would see only its shard's (what DDP does without SyncBatchNorm, and
torch's SyncBatchNorm runs on GPUs only): the run would no longer be the one-process run. Here
every batch-norm layer of the replicas, in training mode, computes the global batch's mean and
variance by two all-reduces (per channel: the sum, then the sum of squared deviations, so the
variance is the two-pass one), normalises by them and updates its running statistics with them
(unbiased variance over the global count) — so the running statistics are the same on every
rank too.

The backward is the batch-norm backward over the global batch. Each rank back-propagates its own
shard's mean loss L_r; the run's loss is L = Σ_r w_r·L_r (w_r = n_r / N, the shard's share) and
the gradient all-reduce later sums w_r·g_r. So the upstream gradient of rank s is truly
w_s·dy_s, and a rank's local input gradient must be the true one divided by w_r:

    dx_r = invstd·(γ·dy_r − (A + x̂_r·B) / (M·w_r)),   A = Σ_s w_s Σ γ·dy_s,   B = Σ_s w_s Σ γ·dy_s·x̂_s

(M: the global count per channel; A and B by one all-reduce). γ's and β's gradients stay local
(Σ dy·x̂ and Σ dy over the shard): the gradient all-reduce weights them by w_r. In evaluation
mode (or with `track_running_stats` and no batch statistics to compute) the layer runs as it
would in one process.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _GlobalNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                world: Any, share: float, eps: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = x.numel() // x.shape[1]
        stats = torch.cat([x.sum(dims), torch.tensor([float(local)], dtype=x.dtype, device=x.device)])
        world.all_reduce(stats)
        count = stats[-1]
        mean = stats[:-1] / count
        centred = x - mean.view(shape)
        var = world.all_reduce(centred.pow(2).sum(dims)) / count
        invstd = torch.rsqrt(var + eps)
        xhat = centred * invstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * weight.view(shape)
        if bias is not None:
            y = y + bias.view(shape)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.world, ctx.share, ctx.count, ctx.dims, ctx.shape = world, share, float(count), dims, shape
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, *_stats: Any) -> Any:
        xhat, invstd, weight = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        g = dy * weight.view(shape) if weight is not None else dy
        sums = torch.cat([g.sum(dims), (g * xhat).sum(dims)]) * ctx.share
        ctx.world.all_reduce(sums)
        a, b = sums.chunk(2)
        scale = 1.0 / (ctx.count * ctx.share)
        dx = invstd.view(shape) * (g - (a.view(shape) + xhat * b.view(shape)) * scale)
        dw = (dy * xhat).sum(dims) if weight is not None and ctx.needs_input_grad[1] else None
        db = dy.sum(dims) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None


def _global_forward(bn: _BatchNorm, x: torch.Tensor, world: Any, share: list[float]) -> torch.Tensor:
    if not bn.training:
        return bn._mrc_local_forward(x)  # type: ignore[attr-defined]
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    y, mean, var, count = _GlobalNorm.apply(x, bn.weight, bn.bias, world, share[0], bn.eps)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            total = float(count)
            unbiased = var * (total / max(total - 1.0, 1.0))
            bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
    return y


def globalise(modules: list[nn.Module], world: Any, share: list[float]) -> int:
    """Make every batch-norm layer in `modules` normalise over the global batch (see the module
    docstring); `share[0]` is this rank's share of the step's batch, kept current by the shard.
    Returns how many layers it changed (each once)."""
    done = 0
    for module in modules:
        for m in module.modules():
            if isinstance(m, _BatchNorm) and not hasattr(m, "_mrc_local_forward"):
                m._mrc_local_forward = m.forward  # type: ignore[attr-defined]
                m.forward = types.MethodType(lambda self, x: _global_forward(self, x, world, share), m)
                done += 1
    return done
