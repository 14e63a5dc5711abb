"""Integrators the update-group lowering drives, one per (replica, rule, kernel).

`TorchRule` is a torch optimizer over every partition of one rule in one replica (a parameter
group per partition, created once): a group of the graph steps only its own partitions' groups,
each at its learning rate times the schedule's multiplier. Partitions with linear drift are
"held": the optimizer computes their whole step, the partition is put back, and the step is kept
as a drift buffer that drift ops apply 1/k at a time. The fused integrators (`FusedSGD`,
`FusedAdam`, mrc/runtime/fused.py) lay a rule's partitions out in one flat buffer.

Element-level partitions: where a partition holds only some elements of a tensor (a boolean
mask), the optimizer steps a 1-D "shadow" tensor of exactly those elements instead: before the
step it takes θ[mask] and ∇[mask], after it θ[mask] gets the shadow back. So the rule's state
(momentum, Adam's moments), weight decay and step size touch the partition's elements only, and
the other partitions' elements of the tensor neither move nor move it — exactly, for any rule
(a norm-based rule such as LARS takes the norms over the partition's elements).
"""

from __future__ import annotations

from typing import Any

import torch

from mrc.ir.ops import Rule


class TorchRule:
    """A torch.optim optimizer for one rule's partitions (see the module docstring)."""

    def __init__(self, rule: Rule, parts: dict[str, list[torch.Tensor]], lrs: dict[str, float],
                 kernel: str = "torch.optim", noise_seed: int = 0,
                 masks: dict[str, list[torch.Tensor | None]] | None = None) -> None:
        from mrc.optim import build_optimizer

        self.names = list(parts)
        self.params = parts
        # per partition: (tensor, mask, shadow) for each tensor it holds in part
        self.shadows: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        groups = []
        for n in self.names:
            stepped = []
            for i, p in enumerate(parts[n]):
                m = (masks or {}).get(n, [None] * len(parts[n]))[i]
                if m is None:
                    stepped.append(p)
                    continue
                shadow = p.detach()[m].clone().requires_grad_(p.requires_grad)
                self.shadows.setdefault(n, []).append((p, m, shadow))
                stepped.append(shadow)
            groups.append({"params": stepped, "lr": lrs[n]})
        kwargs = {**rule.kwargs, "lr": lrs[self.names[0]]}
        if kernel == "triton" and rule.name == "langevin":  # the O-step as a Triton kernel
            from mrc.optim import OPTIMIZERS, resolve_kwargs
            from mrc.optim.langevin import Langevin

            checked = resolve_kwargs(OPTIMIZERS.get("langevin"), kwargs, "optimizer")
            self.optimizer = Langevin(groups, **checked, kernel="triton", seed=noise_seed)
        else:
            self.optimizer = build_optimizer(rule.name, groups, kwargs)
        self.index = {n: i for i, n in enumerate(self.names)}
        self._all = list(self.optimizer.param_groups)
        self._shadows_of = {id(self._all[self.index[n]]): views for n, views in self.shadows.items()}

    def groups(self, names: tuple[str, ...]) -> list[dict[str, Any]]:
        """The parameter groups of `names` (prepared once per update op)."""
        return [self._all[self.index[n]] for n in names]

    def step(self, groups: list[dict[str, Any]], lrs: tuple[float, ...], mult: float) -> None:
        """Step only `groups`, each at its lr × mult."""
        for g, lr in zip(groups, lrs, strict=True):
            g["lr"] = lr * mult
        views = [v for g in groups for v in self._shadows_of.get(id(g), ())]
        if views:
            with torch.no_grad():
                for p, m, shadow in views:  # this partition's elements and their gradient
                    shadow.copy_(p[m])
                    shadow.grad = None if p.grad is None else p.grad[m]
        opt = self.optimizer
        if len(groups) == len(self._all):
            opt.step()
        else:
            opt.param_groups = groups
            try:
                opt.step()
            finally:
                opt.param_groups = self._all
        if views:
            with torch.no_grad():
                for p, m, shadow in views:
                    p.masked_scatter_(m, shadow)

    def reset_state(self) -> None:
        reset = getattr(type(self.optimizer), "reset_state", None)
        if reset is not None:  # e.g. Langevin: its own state beyond torch's (the noise counter)
            reset(self.optimizer)
        else:
            self.optimizer.state.clear()

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # torch's load_state_dict makes new group dicts; keep ours (update ops hold them)
        self.optimizer.load_state_dict(state)
        for mine, loaded in zip(self._all, self.optimizer.param_groups, strict=True):
            mine.update(loaded)
        self.optimizer.param_groups = self._all
