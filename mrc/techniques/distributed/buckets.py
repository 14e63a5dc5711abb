"""A flat gradient bucket: the gradients of some tensors packed into one buffer (made once),
reduced over the ranks by one collective, and unpacked — for the tensors whose gradients do not
already sit in a flat buffer of their own (a fused rule's do: mrc/runtime/fused.py)."""

from __future__ import annotations

from typing import Any

import torch


class GradBucket:
    """The gradients of `params` (deduplicated) in one flat buffer."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = list({id(p): p for p in params}.values())
        self.sizes = [p.numel() for p in self.params]
        self.flat = (torch.zeros(sum(self.sizes), dtype=self.params[0].dtype, device=self.params[0].device)
                     if self.params else None)

    def all_reduce(self, world: Any, scale: float = 1.0) -> None:
        """Sum every rank's gradients (each scaled by `scale` first); a tensor without a
        gradient counts as zeros, and gets the sum as its gradient."""
        flat = self.flat
        if flat is None:
            return
        off = 0
        for p, size in zip(self.params, self.sizes, strict=True):
            part = flat[off:off + size]
            if p.grad is None:
                part.zero_()
            else:
                part.copy_(p.grad.reshape(-1))
            off += size
        if scale != 1.0:
            flat.mul_(scale)
        world.all_reduce(flat)
        off = 0
        for p, size in zip(self.params, self.sizes, strict=True):
            if p.grad is None:
                p.grad = flat[off:off + size].view_as(p).clone()
            else:
                p.grad.copy_(flat[off:off + size].view_as(p))
            off += size
