"""Fused updates: every partition of one SGD-momentum rule in one flat buffer, one call per step.

The partitions that share an integrator (a "rule") are laid out one after another in a
`kernels.flat.FlatGroup`: the model keeps ordinary parameters (views into the buffer) and
ordinary state_dicts, and each `p.grad` is a view of one flat gradient buffer. On each step the
plan hands the rule a segment table — per partition UPDATE (or FIRST on its first update), DRIFT
(linear drift between its updates) or SKIP — and the rule makes one call of
`kernels.sgd.multirate_sgd_triton` on CUDA or `multirate_sgd_torch` elsewhere (the graph's
`kernel=` field says which). The equations are those of torch.optim.SGD and of the seed's
multirate algorithms (kernels/sgd.py). Adam and AdamW rules do the same with
`kernels.adam.multirate_adam_*`: one call per step over every updating partition, each with
its own step count.

Which rules take which fused integrator is `mrc.optim.families`' decision; `FUSED_RULES` and
`ADAM_RULES` are that table's SGD and Adam families, kept importable for the current lowering.
"""

from __future__ import annotations

from typing import Any

import torch

from mrc.optim.families import FAMILIES

FUSED_RULES: tuple[str, ...] = tuple(name for name, f in FAMILIES.items() if f.sgd_like)
ADAM_RULES: tuple[str, ...] = tuple(name for name, f in FAMILIES.items() if f.adam_like)


class _FlatRule:
    """What every fused rule shares: a FlatGroup whose gradients are views, zeroed per span."""

    flat: Any
    spans: dict[str, tuple[int, int]]
    param_groups: list[dict[str, Any]] = []  # noqa: RUF012 — nothing for the plan's lr loop to set

    def zero_spans(self, names: tuple[str, ...]) -> None:
        """Zero the gradients of the partitions about to be differentiated (autograd adds)."""
        grad = self.flat.grad()
        for n in names:
            a, b = self.spans[n]
            grad[a:b].zero_()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Gradients are views of the flat buffer and are zeroed per span (`zero_spans`)."""

    def reset_state(self) -> None:
        """Forget every partition's integrator state (a brain merge with `momentum = reset`)."""
        raise NotImplementedError


class FusedSGD(_FlatRule):
    """SGD-momentum for the partitions of one rule over a flat buffer.

    partitions: name → (parameters, base step size). `mult` (the schedule's multiplier) is the
    kernel's lr; each segment's `lr_scale` is the partition's base step size, divided by k for a
    partition that drifts with interval k (it moves 1/k of its step per step): each call names
    the intervals of the partitions it holds or drifts (the update group's or drift op's own).

    masks: name → per parameter the bool mask of the elements the partition holds (None: all)
    for element-level partitions. Their tensors (shared with other partitions of the rule) sit
    once in the flat buffer; such a partition's segment spans its tensors and carries a flat
    mask of its elements, so one call still updates the whole group (masked segments run
    through the torch path, also on CUDA).
    """

    def __init__(self, partitions: dict[str, tuple[list[torch.Tensor], float]], *, momentum: float,
                 dampening: float, weight_decay: float, nesterov: bool, kernel: str,
                 masks: dict[str, list[torch.Tensor | None]] | None = None) -> None:
        from mrc.kernels.flat import FlatGroup
        from mrc.kernels.sgd import Mode, Segment

        self.Mode, self.Segment = Mode, Segment
        self.names = list(partitions)
        masks = {n: ms for n, ms in (masks or {}).items() if any(m is not None for m in ms)}
        # whole partitions first, each contiguous; then the tensors element-level ones share
        order = [n for n in self.names if n not in masks] + [n for n in self.names if n in masks]
        params = list({id(p): p for n in order for p in partitions[n][0]}.values())
        self.flat = FlatGroup(params)
        # float32 state for float32/bfloat16 parameters; float64 ones keep float64 state
        self.buf = self.flat.state("momentum", torch.float64 if self.flat.dtype == torch.float64
                                   else torch.float32)
        self.spans = {n: self.flat.span(ps) for n, (ps, _) in partitions.items() if n not in masks}
        self.masks: list[torch.Tensor] = []  # flat masks of the element-level partitions' spans
        self.mask_index: dict[str, int] = {}
        for n, ms in masks.items():
            ps = partitions[n][0]
            idx = [self.flat.index(p) for p in ps]
            a = min(self.flat.offsets[i] for i in idx)
            b = max(self.flat.offsets[i] + self.flat.numels[i] for i in idx)
            flat_mask = torch.zeros(b - a, dtype=torch.bool, device=self.flat.device)
            for i, m in zip(idx, ms, strict=True):
                off = self.flat.offsets[i] - a
                part = flat_mask[off:off + self.flat.numels[i]]
                part.fill_(True) if m is None else part.copy_(m.reshape(-1))
            self.spans[n] = (a, b)
            self.mask_index[n] = len(self.masks)
            self.masks.append(flat_mask)
        self.base = {n: lr for n, (_, lr) in partitions.items()}
        self.momentum, self.dampening, self.wd, self.nesterov = momentum, dampening, weight_decay, nesterov
        self.started: set[str] = set()
        self.mult = 1.0
        self.kernel = kernel
        if kernel == "triton":
            from mrc.kernels.sgd import multirate_sgd_triton as run
        else:
            from mrc.kernels.sgd import multirate_sgd_torch as run
        self._run = run
        self._tables: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def _table(self, updating: tuple[str, ...], drifting: tuple[str, ...],
               intervals: tuple[tuple[str, int], ...]) -> tuple[Any, ...]:
        fresh = frozenset(n for n in updating if n not in self.started)
        key = (updating, drifting, intervals, fresh)
        table = self._tables.get(key)
        if table is None:
            Mode, Segment = self.Mode, self.Segment
            every = dict(intervals)
            segs = []
            for n in self.names:
                a, b = self.spans[n]
                k = every.get(n, 1)
                if n in updating:
                    mode = Mode.FIRST if n in fresh else Mode.UPDATE
                elif n in drifting:
                    mode = Mode.DRIFT
                else:
                    continue
                segs.append(Segment(a, b, mode, self.base[n] / k, self.momentum, self.wd,
                                    self.mask_index.get(n, -1)))
            table = tuple(segs)
            self._tables[key] = table
        return table

    @torch.no_grad()
    def step_partitions(self, updating: tuple[str, ...], drifting: tuple[str, ...],
                        intervals: tuple[tuple[str, int], ...] = ()) -> None:
        """Update `updating`, move `drifting` by their drift step; `intervals`: the drift
        interval k of each partition that drifts (held in `updating`, or in `drifting`)."""
        table = self._table(updating, drifting, intervals)
        if not table:
            return
        grad = self.flat.grad()
        plain = tuple(s for s in table if s.mask < 0)
        if len(plain) == len(table):
            self._run(self.flat.data, grad, self.buf, table, lr=self.mult,
                      dampening=self.dampening, nesterov=self.nesterov)
        else:  # element-level partitions: masked segments take the torch path
            from mrc.kernels.sgd import multirate_sgd_torch

            if plain:
                self._run(self.flat.data, grad, self.buf, plain, lr=self.mult,
                          dampening=self.dampening, nesterov=self.nesterov)
            multirate_sgd_torch(self.flat.data, grad, self.buf,
                                tuple(s for s in table if s.mask >= 0), lr=self.mult,
                                dampening=self.dampening, nesterov=self.nesterov, masks=self.masks)
        self.started.update(updating)

    def reset_state(self) -> None:
        """Forget the momentum: zero buffers, and every partition's next update is a FIRST."""
        with torch.no_grad():
            self.buf.zero_()
        self.started.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.buf.detach().clone(), "started": sorted(self.started)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buf.copy_(state["momentum"])
        self.started = set(state["started"])


class FusedAdam(_FlatRule):
    """Adam / AdamW for the partitions of one rule over a flat buffer (float32 state).

    Each partition keeps its own step count (partitions on different rates take different
    numbers of steps), and one call of `kernels.adam.multirate_adam_{triton,torch}` per step
    updates every updating partition: one segment per partition with its step count and
    learning rate (`base · mult`), so its bias corrections are those of torch.optim.Adam /
    AdamW on that partition alone.
    """

    def __init__(self, partitions: dict[str, tuple[list[torch.Tensor], float]], *, betas: tuple[float, float],
                 eps: float, weight_decay: float, decoupled: bool, kernel: str) -> None:
        from mrc.kernels.adam import AdamSegment
        from mrc.kernels.flat import FlatGroup

        self.AdamSegment = AdamSegment
        params = [p for ps, _ in partitions.values() for p in ps]
        self.flat = FlatGroup(params)
        self.m = self.flat.state("exp_avg")
        self.v = self.flat.state("exp_avg_sq")
        self.spans = {n: self.flat.span(ps) for n, (ps, _) in partitions.items()}
        self.base = {n: lr for n, (_, lr) in partitions.items()}
        self.steps = dict.fromkeys(partitions, 0)
        self.betas, self.eps, self.wd, self.decoupled = betas, eps, weight_decay, decoupled
        self.mult = 1.0
        self.kernel = kernel
        if kernel == "triton":
            from mrc.kernels.adam import multirate_adam_triton as run
        else:
            from mrc.kernels.adam import multirate_adam_torch as run
        self._run = run

    @torch.no_grad()
    def step_partitions(self, updating: tuple[str, ...], drifting: tuple[str, ...],
                        intervals: tuple[tuple[str, int], ...] = ()) -> None:
        """One Adam step of every partition in `updating` (Adam has no drift: `drifting` and
        `intervals` are ignored), in one call."""
        if not updating:
            return
        for n in updating:
            self.steps[n] += 1
        segments = [self.AdamSegment(*self.spans[n], self.steps[n], self.base[n] * self.mult)
                    for n in updating]
        self._run(self.flat.data, self.flat.grad(), self.m, self.v, segments,
                  beta1=self.betas[0], beta2=self.betas[1], eps=self.eps, weight_decay=self.wd,
                  decoupled_weight_decay=self.decoupled)

    def reset_state(self) -> None:
        """Forget the moments and the step counts: the next step of a partition is its first."""
        with torch.no_grad():
            self.m.zero_()
            self.v.zero_()
        self.steps = dict.fromkeys(self.steps, 0)

    def state_dict(self) -> dict[str, Any]:
        return {"exp_avg": self.m.detach().clone(), "exp_avg_sq": self.v.detach().clone(),
                "steps": dict(self.steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m.copy_(state["exp_avg"])
        self.v.copy_(state["exp_avg_sq"])
        self.steps = dict(state["steps"])
