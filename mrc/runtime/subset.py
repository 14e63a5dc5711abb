"""Random-subset regularization (seeds/multirate-training.md, "Neural network regularization").

Every k steps a random subset θ_S of the partition's weights is drawn and held at zero while the
other weights θ_F take fast steps of size h (= the learning rate); at the start of the next
interval θ_S is restored, takes one slow step of size k·h with the gradient at the restored point,
and a new subset is drawn. In equations, with SGD-momentum (μ, weight decay λ) and d = ∇L + λθ:

    interval start:  restore θ_S;  b ← μ b + d  (all elements);
                     θ_S ← θ_S − k·h·b_S;  θ_F ← θ_F − h·b_F;  draw a new S; stash θ_S; θ_S ← 0
    other steps:     b_F ← μ b_F + d_F;  θ_F ← θ_F − h·b_F   (θ_S stays 0, b_S is untouched)

(With Nesterov the step direction is d + μ b instead of b; with dampening τ, b ← μ b + (1−τ) d
after an element's first update, as in torch.optim.SGD.) The subset is drawn with its own torch
generator seeded from (seed, partition, interval), so a resumed run draws the same subsets.
Evaluation and saving see the full weights (`restored()`), and the end of training restores them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def draw_masks(shapes: list[torch.Size], fraction: float, per: str, seed: int,
               device: torch.device) -> list[torch.Tensor]:
    """Boolean masks choosing round(fraction·n) elements per tensor, or over all tensors at once."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    if per == "tensor":
        masks = []
        for shape, n in zip(shapes, sizes, strict=True):
            flat = torch.zeros(n, dtype=torch.bool)
            flat[torch.randperm(n, generator=gen)[:round(fraction * n)]] = True
            masks.append(flat.view(shape).to(device))
        return masks
    total = sum(sizes)
    flat = torch.zeros(total, dtype=torch.bool)
    flat[torch.randperm(total, generator=gen)[:round(fraction * total)]] = True
    return [m.view(s).to(device) for m, s in zip(flat.split(sizes), shapes, strict=True)]


def _seed(seed: int, salt: str, interval: int) -> int:
    digest = hashlib.sha256(f"{seed}:{salt}:{interval}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class RandomSubsetSGD:
    """The integrator of a random-subset partition. It quacks like a torch optimizer
    (`param_groups`, `zero_grad`, `step`, `state_dict`) so the plan can drive it."""

    def __init__(self, params: list[torch.Tensor], *, lr: float, every: int, fraction: float,
                 per: str, seed: int, salt: str, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        self.params = params
        self.param_groups = [{"params": params, "lr": lr}]
        self.every, self.fraction, self.per = every, fraction, per
        self.seed, self.salt = seed, salt
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov
        self.t = 0
        self.bufs = [torch.zeros_like(p) for p in params]
        self.seen = [torch.zeros_like(p, dtype=torch.bool) for p in params]
        self.masks: list[torch.Tensor] | None = None
        self.stash: list[torch.Tensor] | None = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def restore(self) -> None:
        """Put the held-out subset back (start of an interval, end of training)."""
        if self.masks is not None and self.stash is not None:
            for p, m, s in zip(self.params, self.masks, self.stash, strict=True):
                p[m] = s

    @torch.no_grad()
    def step(self) -> None:
        h = self.param_groups[0]["lr"]
        start = self.t % self.every == 0
        mu, tau, wd = self.momentum, self.dampening, self.weight_decay
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d = p.grad.add(p, alpha=wd) if wd else p.grad
            moving = (torch.ones_like(p, dtype=torch.bool) if start or self.masks is None
                      else ~self.masks[i])
            b = self.bufs[i]
            if mu:
                fresh = moving & ~self.seen[i]
                new_b = torch.where(fresh, d, b * mu + d * (1 - tau))
                b.copy_(torch.where(moving, new_b, b))
                self.seen[i] |= moving
                direction = d + mu * b if self.nesterov else b
            else:
                direction = d
            size = torch.full_like(p, h)
            if start and self.masks is not None:
                size = torch.where(self.masks[i], torch.full_like(p, self.every * h), size)
            p.sub_(torch.where(moving, size * direction, torch.zeros_like(p)))
        self.t += 1

    @torch.no_grad()
    def resample(self, interval: int) -> None:
        """Draw the subset of `interval` and hold it at zero."""
        self.masks = draw_masks([p.shape for p in self.params], self.fraction, self.per,
                                _seed(self.seed, self.salt, interval), self.params[0].device)
        self.stash = [p[m].clone() for p, m in zip(self.params, self.masks, strict=True)]
        for p, m in zip(self.params, self.masks, strict=True):
            p[m] = 0

    @contextmanager
    def restored(self) -> Iterator[None]:
        """The full weights for the duration of the block (evaluation, saving)."""
        if self.masks is None:
            yield
            return
        self.restore()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, m in zip(self.params, self.masks, strict=True):
                    p[m] = 0

    def finish(self) -> None:
        """End of training: the model keeps its full weights."""
        self.restore()
        self.masks = self.stash = None

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "bufs": [b.clone() for b in self.bufs],
                "seen": [s.clone() for s in self.seen],
                "masks": None if self.masks is None else [m.clone() for m in self.masks],
                "stash": None if self.stash is None else [s.clone() for s in self.stash],
                "lr": self.param_groups[0]["lr"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.params[0].device
        self.t = state["t"]
        self.bufs = [b.to(dev) for b in state["bufs"]]
        self.seen = [s.to(dev) for s in state["seen"]]
        self.masks = None if state["masks"] is None else [m.to(dev) for m in state["masks"]]
        self.stash = None if state["stash"] is None else [s.to(dev) for s in state["stash"]]
        self.param_groups[0]["lr"] = state["lr"]
