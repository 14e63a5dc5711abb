"""A flat gradient bucket: the gradients of some tensors packed into one buffer (made once),
reduced over the ranks by one collective, and unpacked — for the tensors whose gradients do not
already sit in a flat buffer of their own (a fused rule's do: mrc/runtime/fused.py).

Packing and unpacking are one `torch._foreach_copy_` each, between the gradients and views of
the buffer made once with it: a stack of thousands of small layers (an MGRIT stack) pays no
per-tensor Python loop."""

from __future__ import annotations

from typing import Any

import torch


class GradBucket:
    """The gradients of `params` (deduplicated) in one flat buffer."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = list({id(p): p for p in params}.values())
        sizes = [p.numel() for p in self.params]
        self.flat = (torch.zeros(sum(sizes), dtype=self.params[0].dtype, device=self.params[0].device)
                     if self.params else None)
        self.views: list[torch.Tensor] = []
        if self.flat is not None:
            self.views = [v.view_as(p) for v, p in zip(self.flat.split(sizes), self.params, strict=True)]

    def all_reduce(self, world: Any, scale: float = 1.0, fill: bool = True) -> None:
        """Sum every rank's gradients (each scaled by `scale` first); a tensor without a
        gradient counts as zeros. `fill`: it then gets the sum as its gradient (a layer outside
        this rank's block, which another rank differentiated); otherwise it keeps none (a tensor
        no rank's forward used: the optimizer skips it, as in one process)."""
        flat = self.flat
        if flat is None:
            return
        missing = [p for p in self.params if p.grad is None]
        for p in missing:
            p.grad = torch.zeros_like(p)
        grads = [p.grad for p in self.params]
        torch._foreach_copy_(self.views, grads)
        if scale != 1.0:
            flat.mul_(scale)
        world.all_reduce(flat)
        torch._foreach_copy_(grads, self.views)
        if not fill:
            for p in missing:
                p.grad = None
