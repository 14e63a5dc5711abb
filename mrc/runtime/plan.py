"""Schedule graph → Plan: per step of the period, a short list of callables prepared once.

Lowering decides everything the runtime would otherwise re-decide per step: which segment runs
with autograd, what is differentiated, which optimizer instance each update group calls and with
which learning-rate scale. The runtime only loops: `plan.step(t, x, y)`.

Optimizer state belongs to partitions, not to steps: each distinct integrator (rule) gets one
torch optimizer with one parameter group per partition, created once. An update group steps its
rule's optimizer; parameters without a gradient on that step (partitions not differentiated) are
left alone by torch's optimizers, so a slow partition's momentum only moves on its own steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mrc.binding import Bound
from mrc.graph import Backward, Forward, Loss, ScheduleGraph, Update, UpdateGroup
from mrc.program import Component


@dataclass
class GroupRunner:
    """One update group: the rule's optimizer and the param-group indices it touches."""

    name: str
    optimizer: torch.optim.Optimizer
    groups: tuple[int, ...]
    scale: float
    lr: float | None


@dataclass
class StepProgram:
    """What one step of the period does, decided at compile time."""

    forward: bool
    grad: bool
    backward: bool
    updates: tuple[GroupRunner, ...]


@dataclass
class Plan:
    """The executable form of a schedule graph."""

    period: int
    module: nn.Module
    steps: tuple[StepProgram, ...]
    optimizers: dict[str, torch.optim.Optimizer]
    base_lrs: dict[str, list[float]]
    schedule: Callable[[int], float]
    label_smoothing: float
    grad_clip: float
    partition_groups: dict[str, tuple[str, int]] = field(default_factory=dict)
    """partition → (rule, index of its param group in that rule's optimizer)."""

    def step(self, t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Run global step `t` on a batch; return the loss (None if the step computes none)."""
        sp = self.steps[t % self.period]
        if not sp.forward:
            return None
        mult = self.schedule(t)
        for runner in sp.updates:
            base = self.base_lrs[runner.name]
            for gi, group in enumerate(runner.optimizer.param_groups):
                group["lr"] = base[gi] * mult
        if sp.grad:
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.module(x), y, label_smoothing=self.label_smoothing)
            if sp.backward:
                loss.backward()
                if self.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
                for runner in sp.updates:
                    runner.optimizer.step()
            return loss.detach()
        with torch.no_grad():
            return F.cross_entropy(self.module(x), y, label_smoothing=self.label_smoothing)

    def learning_rates(self, t: int) -> dict[str, float]:
        """Each partition's learning rate at step t (for the metrics log)."""
        mult = self.schedule(t)
        out = {}
        for part, (rule, gi) in self.partition_groups.items():
            out[part] = self.base_lrs[rule][gi] * mult
        return out

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def _base_lr(comp: Component) -> float:
    from mrc.optim import OPTIMIZERS

    if "lr" in comp.kwargs:
        return float(comp.kwargs["lr"])
    entry = OPTIMIZERS.get(comp.name)
    param = entry.param("lr") if entry else None
    return float(param.default) if param is not None and not param.required else 1e-3


def lower(bound: Bound, graph: ScheduleGraph, total_steps: int) -> Plan:
    """Build the Plan for `graph`: optimizers, parameter groups and per-step programs."""
    from mrc.optim import build_optimizer, build_schedule

    program = bound.program
    module = bound.graph_module
    params = dict(module.named_parameters())
    model_params = dict(bound.model.named_parameters())
    # rule → its partitions, in partition order
    rules: dict[str, list[str]] = {}
    comps: dict[str, Component] = {}
    scales: dict[str, float] = {}
    fixed_lr: dict[str, float | None] = {}
    for op in graph.ops():
        if isinstance(op, Update | UpdateGroup):
            parts = (op.partition,) if isinstance(op, Update) else op.partitions
            for p in parts:
                scales[p] = op.scale
                fixed_lr[p] = op.lr
    for part in bound.partitions:
        comp = part.spec.optimizer or program.optimizer
        rule = comp.describe()
        rules.setdefault(rule, []).append(part.name)
        comps[rule] = comp
    optimizers: dict[str, torch.optim.Optimizer] = {}
    base_lrs: dict[str, list[float]] = {}
    partition_groups: dict[str, tuple[str, int]] = {}
    for rule, parts in rules.items():
        comp = comps[rule]
        groups = []
        lrs = []
        for gi, name in enumerate(parts):
            part = next(p for p in bound.partitions if p.name == name)
            tensors = [params.get(n, model_params[n]) for n in part.params]
            lr = fixed_lr.get(name)
            if lr is None:
                lr = _base_lr(comp) * scales.get(name, float(part.spec.every))
            groups.append({"params": tensors, "lr": lr})
            lrs.append(lr)
            partition_groups[name] = (rule, gi)
        optimizers[rule] = build_optimizer(comp.name, groups, dict(comp.kwargs))
        base_lrs[rule] = lrs
    steps = []
    for t in range(graph.period):
        ops = graph.at(t)
        fwd = [op for op in ops if isinstance(op, Forward)]
        bwd = [op for op in ops if isinstance(op, Backward)]
        loss = [op for op in ops if isinstance(op, Loss)]
        runners = []
        for op in ops:
            if isinstance(op, Update | UpdateGroup):
                parts = (op.partition,) if isinstance(op, Update) else op.partitions
                rule = partition_groups[parts[0]][0]
                idx = tuple(partition_groups[p][1] for p in parts)
                runners.append(GroupRunner(rule, optimizers[rule], idx, op.scale, op.lr))
        steps.append(StepProgram(bool(fwd and loss), any(f.grad for f in fwd), bool(bwd),
                                 tuple(runners)))
    schedule = build_schedule(program.schedule.name, total_steps, dict(program.schedule.kwargs))
    return Plan(graph.period, module, tuple(steps), optimizers, base_lrs, schedule,
                program.train.label_smoothing, program.train.grad_clip, partition_groups)
