"""The integrator of random-subset regularization (seeds/multirate-training.md, "Neural network
regularization").

Every k steps a random subset θ_S of the partition's weights is drawn and held at zero while the
other weights θ_F take fast steps of size h (= the learning rate); at the start of the next
interval θ_S is restored, takes one slow step of size k·h with the gradient at the restored point,
and a new subset is drawn. In equations, with SGD-momentum (μ, weight decay λ) and d = ∇L + λθ:

    interval start:  restore θ_S;  b ← μ b + d  (all elements);
                     θ_S ← θ_S − k·h·b_S;  θ_F ← θ_F − h·b_F;  draw a new S; stash θ_S; θ_S ← 0
    other steps:     b_F ← μ b_F + d_F;  θ_F ← θ_F − h·b_F   (θ_S stays 0, b_S is untouched)

(With Nesterov the step direction is d + μ b instead of b; with dampening τ, b ← μ b + (1−τ) d
after an element's first update, as in torch.optim.SGD.) The subset is drawn with its own torch
generator seeded from (seed, partition, interval), so a resumed run draws the same subsets
(`mrc.techniques.random_subsets.masks`, the one implementation of the draw). Evaluation and saving
see the full weights (`restored()`), and the end of training restores them.

The integrator keeps no clock of its own: the graph's ops drive it. A `resample` op draws the
next interval's subset with the op's fraction, scope and interval k (`resample(fraction, per,
k)`; the integrator counts the draws, `drawn`, checkpointed), and a `restore` op starts that
interval (`start()`: the subset rejoins, and this step's update moves it at k·h).

`kernel="triton"` runs the hold-out and the re-activation as the Triton kernels of
`kernels.subset` and the masked SGD-momentum update as `kernels.sgd.sgd_triton(mask=…)`, one
launch per tensor (two on an interval's first step: the complement at h, the subset at k·h).
The numbers are those of the torch path to float32 rounding (the zero/restore exactly). The
update falls back to the torch code for a tensor the kernel cannot take: not float32, not
contiguous, or momentum whose "already started" elements are neither none, all nor exactly the
complement of the current subset (only after a `reset_state()` followed by a resample
mid-interval).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def draw_masks(shapes: list[torch.Size], fraction: float, per: str, seed: int,
               device: torch.device) -> list[torch.Tensor]:
    """Boolean masks choosing round(fraction·n) elements per tensor (`per="tensor"`), or over
    all tensors at once (`per="global"`): `random_subsets.masks.random_subset_masks`."""
    from mrc.techniques.random_subsets.masks import random_subset_masks

    if per not in ("tensor", "global"):
        raise ValueError(f"per must be 'tensor' or 'global', not {per!r}")
    return random_subset_masks(shapes, fraction, seed, per_tensor=per == "tensor", device=device)


def _seed(seed: int, salt: str, interval: int) -> int:
    digest = hashlib.sha256(f"{seed}:{salt}:{interval}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# Which elements of a tensor's momentum have started (the `seen` mask), as far as the Triton
# path needs to know: none, all, exactly the complement of the current subset, or anything else.
_NONE, _ALL, _COMPLEMENT, _MIXED = "none", "all", "complement", "mixed"


class RandomSubsetSGD:
    """The integrator of a random-subset partition. It quacks like a torch optimizer
    (`param_groups`, `zero_grad`, `step`, `state_dict`) so the plan can drive it.

    `kernel`: "torch" (plain torch ops) or "triton" (the kernels of `kernels.subset` and
    `kernels.sgd`, see the module docstring). Both keep the same state and state_dict.
    """

    def __init__(self, params: list[torch.Tensor], *, lr: float, seed: int, salt: str, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 kernel: str = "torch") -> None:
        if kernel not in ("torch", "triton"):
            raise ValueError(f"kernel must be 'torch' or 'triton', not {kernel!r}")
        self.params = params
        self.param_groups = [{"params": params, "lr": lr}]
        self.seed, self.salt = seed, salt
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov
        self.kernel = kernel
        self.drawn = 0
        """Subsets drawn so far: the next draw is that of interval `drawn`."""
        self.interval = 0
        """k of the subset drawn last: at its interval's start it moves at k·h."""
        self.starting = False
        """The next step starts an interval (the subset is restored and takes its slow step)."""
        self.bufs = [torch.zeros_like(p) for p in params]
        self.seen = [torch.zeros_like(p, dtype=torch.bool) for p in params]
        self._seen_kind = [_NONE] * len(params)
        self.masks: list[torch.Tensor] | None = None
        # the held-out values: θ[mask] per tensor (torch) or a full copy of θ per tensor, as
        # the zero kernel writes it (triton; `stash` is then None and `saved` holds them)
        self.stash: list[torch.Tensor] | None = None
        self.saved: list[torch.Tensor] | None = None
        self._keep: list[torch.Tensor] | None = None  # ~mask per tensor (triton)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def reset_state(self) -> None:
        """Forget the momentum (and which elements have started it); the current subset and
        its held-out values stay."""
        with torch.no_grad():
            for b, s in zip(self.bufs, self.seen, strict=True):
                b.zero_()
                s.zero_()
        self._seen_kind = [_NONE] * len(self.params)

    # ------------------------------------------------------------ hold-out and re-activation

    def _held(self) -> bool:
        return self.masks is not None and (self.stash is not None or self.saved is not None)

    @torch.no_grad()
    def restore(self) -> None:
        """Put the held-out subset back (start of an interval, end of training)."""
        if not self._held():
            return
        assert self.masks is not None
        if self.saved is None:
            assert self.stash is not None
            for p, m, s in zip(self.params, self.masks, self.stash, strict=True):
                p[m] = s
            return
        from mrc.kernels.subset import subset_restore_triton

        for p, m, s in zip(self.params, self.masks, self.saved, strict=True):
            if p.is_contiguous():
                subset_restore_triton(p.view(-1), m.view(-1), s.view(-1))
            else:
                torch.where(m, s, p, out=p)

    def _zero(self) -> None:
        """Hold the current subset at zero, saving its values."""
        assert self.masks is not None
        if self.kernel == "torch":
            self.stash = [p[m].clone() for p, m in zip(self.params, self.masks, strict=True)]
            for p, m in zip(self.params, self.masks, strict=True):
                p[m] = 0
            return
        from mrc.kernels.subset import subset_zero_triton

        if self.saved is None:
            self.saved = [torch.empty_like(p) for p in self.params]  # θ's layout
        self.stash = None
        for p, m, s in zip(self.params, self.masks, self.saved, strict=True):
            if p.is_contiguous():
                subset_zero_triton(p.view(-1), m.view(-1), s.view(-1))
            else:
                s.copy_(p)
                p.masked_fill_(m, 0)
        self._keep = [~m for m in self.masks]

    def start(self) -> None:
        """Start an interval: the held-out subset rejoins, and the next step moves it at k·h
        (its slow step, k the interval its draw was made for)."""
        self.restore()
        self.starting = True

    @torch.no_grad()
    def resample(self, fraction: float, per: str, every: int) -> None:
        """Draw the subset of the next interval, of `every` steps (`fraction` of the elements,
        `per` tensor or global), and hold it at zero."""
        self.masks = draw_masks([p.shape for p in self.params], fraction, per,
                                _seed(self.seed, self.salt, self.drawn), self.params[0].device)
        self.drawn += 1
        self.interval = every
        # momentum started on exactly the old complement is no longer "the complement"
        self._seen_kind = [_MIXED if k == _COMPLEMENT else k for k in self._seen_kind]
        self._zero()

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
                # a plain fill on both paths: the held-out values stay those saved at the draw
                for p, m in zip(self.params, self.masks, strict=True):
                    p.masked_fill_(m, 0)

    def finish(self) -> None:
        """End of training: the model keeps its full weights."""
        self.restore()
        self.masks = self.stash = self.saved = self._keep = None
        self._seen_kind = [_MIXED if k == _COMPLEMENT else k for k in self._seen_kind]

    # ------------------------------------------------------------ the update

    @torch.no_grad()
    def step(self) -> None:
        h = self.param_groups[0]["lr"]
        start = self.starting
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self.kernel == "triton" and self._triton_can_step(i):
                self._step_triton(i, h, start)
            else:
                self._step_torch(i, h, start)
        self.starting = False

    def _step_torch(self, i: int, h: float, start: bool) -> None:
        p = self.params[i]
        assert p.grad is not None
        mu, tau, wd = self.momentum, self.dampening, self.weight_decay
        d = p.grad.add(p, alpha=wd) if wd else p.grad
        whole = start or self.masks is None
        moving = torch.ones_like(p, dtype=torch.bool) if whole else ~self.masks[i]
        b = self.bufs[i]
        if mu:
            fresh = moving & ~self.seen[i]
            new_b = torch.where(fresh, d, b * mu + d * (1 - tau))
            b.copy_(torch.where(moving, new_b, b))
            self.seen[i] |= moving
            if whole:
                self._seen_kind[i] = _ALL
            elif self._seen_kind[i] == _NONE:
                self._seen_kind[i] = _COMPLEMENT
            direction = d + mu * b if self.nesterov else b
        else:
            direction = d
        size = torch.full_like(p, h)
        if start and self.masks is not None:
            size = torch.where(self.masks[i], torch.full_like(p, self.interval * h), size)
        p.sub_(torch.where(moving, size * direction, torch.zeros_like(p)))

    def _triton_can_step(self, i: int) -> bool:
        p, g = self.params[i], self.params[i].grad
        assert g is not None
        return (p.dtype == torch.float32 and g.dtype == torch.float32 and p.is_contiguous()
                and g.is_contiguous() and self.bufs[i].is_contiguous()
                and (not self.momentum or self._seen_kind[i] != _MIXED)
                and (self.masks is None or self._keep is not None))

    def _step_triton(self, i: int, h: float, start: bool) -> None:
        """`_step_torch` as masked `sgd_triton` launches over the tensor's flat view."""
        from mrc.kernels.sgd import sgd_triton

        p = self.params[i]
        assert p.grad is not None
        mu = self.momentum
        theta, grad = p.view(-1), p.grad.view(-1)
        buf = self.bufs[i].view(-1) if mu else None
        kind = self._seen_kind[i]
        hyper = {"momentum": mu, "dampening": self.dampening, "weight_decay": self.weight_decay,
                 "nesterov": self.nesterov and bool(mu)}
        if self.masks is None:  # no subset yet: everything moves at h
            sgd_triton(theta, grad, buf, lr=h, first_step=kind == _NONE, **hyper)
            new_kind = _ALL
        else:
            assert self._keep is not None
            keep = self._keep[i].view(-1)
            # the complement moves at h; it has started unless nothing has
            sgd_triton(theta, grad, buf, lr=h, first_step=kind == _NONE, mask=keep, **hyper)
            if start:  # the re-activated subset takes its slow step k·h
                sgd_triton(theta, grad, buf, lr=self.interval * h, first_step=kind != _ALL,
                           mask=self.masks[i].view(-1), **hyper)
            new_kind = _ALL if start else (_COMPLEMENT if kind == _NONE else kind)
        if mu and new_kind != kind:  # keep the `seen` masks right for the state_dict
            if new_kind == _ALL:
                self.seen[i].fill_(True)
            else:
                self.seen[i].copy_(self._keep[i])  # type: ignore[index]
            self._seen_kind[i] = new_kind

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The same on both kernels: the held-out values as θ[mask] per tensor."""
        stash = self.stash
        if stash is None and self.saved is not None and self.masks is not None:
            stash = [s[m] for s, m in zip(self.saved, self.masks, strict=True)]
        return {"drawn": self.drawn, "interval": self.interval, "bufs": [b.clone() for b in self.bufs],
                "seen": [s.clone() for s in self.seen],
                "masks": None if self.masks is None else [m.clone() for m in self.masks],
                "stash": None if stash is None else [s.clone() for s in stash],
                "lr": self.param_groups[0]["lr"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.params[0].device
        self.starting = False  # a checkpoint is taken between steps: no interval is half-started
        self.drawn, self.interval = state["drawn"], state["interval"]
        # copies, so two integrators loaded from one state never share their tensors
        self.bufs = [b.to(dev, copy=True) for b in state["bufs"]]
        self.seen = [s.to(dev, copy=True) for s in state["seen"]]
        self.masks = (None if state["masks"] is None
                      else [m.to(dev, copy=True) for m in state["masks"]])
        stash = None if state["stash"] is None else [s.to(dev, copy=True) for s in state["stash"]]
        self.stash = self.saved = self._keep = None
        if self.kernel == "torch" or stash is None or self.masks is None:
            self.stash = stash
        else:
            self.saved = [torch.zeros_like(p) for p in self.params]
            for s, m, v in zip(self.saved, self.masks, stash, strict=True):
                s[m] = v
            self._keep = [~m for m in self.masks]
        self._seen_kind = [self._infer_seen(i) for i in range(len(self.params))]
        self.param_groups[0]["lr"] = state["lr"]

    def _infer_seen(self, i: int) -> str:
        seen = self.seen[i]
        if not seen.any():
            return _NONE
        if seen.all():
            return _ALL
        if self.masks is not None and torch.equal(seen, ~self.masks[i]):
            return _COMPLEMENT
        return _MIXED
