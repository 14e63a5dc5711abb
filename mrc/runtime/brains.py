"""Multirate across networks: brains on several time-scales, merged when their times align.

Brain i (rate k_i, step size h_i = k_i·h unless it sets `lr`) steps on the global steps t with
t % k_i == 0 and so reaches time t + k_i; after global step t every brain whose time is t + 1
has arrived together, and two or more such brains are merged by the spec's rule. All brains
start from the same initial weights. What each brain sees: `data = shared` — the batch of the
global step it steps on; `data = own` — the n-th batch of its own order (seeded by the run's
seed and the brain's position) on its n-th step.

Execution: brains that step together run as one batched computation over stacked parameters
(mrc.runtime.batched) when the model and integrator allow it; otherwise one after another. The
schedule graph (`mrc graph`) says which.

Merge rules (over the brains L that arrived together, parameters and float buffers alike):
    mean:      θ ← (1/|L|) Σ_{i∈L} θ_i
    weighted:  θ ← Σ_{i∈L} w_i θ_i / Σ_{i∈L} w_i      (w from the spec, in declaration order)
    best:      θ ← θ_j, j = the brain of L with the best validation metric
    ema:       θ̄ ← d·θ̄ + (1−d)·mean_L θ_i (θ̄ starts at the first mean);  θ ← θ̄
and every brain of L continues from θ. Optimizer state: `keep` (each brain keeps its own),
`reset` (cleared) or `average` (averaged like the parameters, by the plain mean).
The final model is the rule applied to all brains at the end of training.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mrc.binding import Bound
from mrc.graph import Forward, Merge, ScheduleGraph
from mrc.program import Brain, Component
from mrc.runtime.plan import _base_lr


@dataclass
class BrainStepProgram:
    stepping: tuple[str, ...]
    batched: tuple[str, ...]  # those of `stepping` that run as one batched computation
    merges: tuple[tuple[str, ...], ...]


class BrainsPlan:
    """The executable form of a brains schedule; quacks like `mrc.runtime.plan.Plan`."""

    def __init__(self, bound: Bound, graph: ScheduleGraph, total_steps: int) -> None:
        from mrc.optim import build_optimizer, build_schedule

        program = bound.program
        self.bound = bound
        self.brains: dict[str, Brain] = {b.name: b for b in program.brains}
        self.order = [b.name for b in program.brains]
        self.merge_spec = program.merge
        self.period = graph.period
        self.label_smoothing = program.train.label_smoothing
        self.modules: dict[str, nn.Module] = {n: copy.deepcopy(bound.graph_module) for n in self.order}
        self.optimizers: dict[str, Any] = {}
        self.base_lrs: dict[str, list[float]] = {}
        for name, brain in self.brains.items():
            comp: Component = brain.optimizer or program.optimizer
            lr = brain.lr if brain.lr is not None else _base_lr(comp) * brain.every
            params = list(self.modules[name].parameters())
            self.optimizers[name] = build_optimizer(comp.name, [{"params": params, "lr": lr}],
                                                    dict(comp.kwargs))
            self.base_lrs[name] = [lr]
        self.schedule: Callable[[int], float] = build_schedule(
            program.schedule.name, total_steps, dict(program.schedule.kwargs))
        self.part_plans: dict[str, Any] = {}
        if program.partitions:
            self._partition_plans(bound, total_steps)
        steps = []
        for t in range(graph.period):
            ops = graph.at(t)
            stepping = tuple(n for n in self.order
                             if any(isinstance(op, Forward) and n in op.grad for op in ops))
            batched = tuple(n for n in stepping if any(
                isinstance(op, Forward) and op.segment.startswith("batched") and n in op.grad for op in ops))
            merges = tuple(op.brains for op in ops if isinstance(op, Merge))
            steps.append(BrainStepProgram(stepping, batched, merges))
        self.steps = tuple(steps)
        self.stack = None
        if any(sp.batched for sp in steps):  # the batch-brains pass chose batched execution
            from mrc.runtime.batched import BrainStack, StackedSGD

            comp = program.brains[0].optimizer or program.optimizer
            kw = {"momentum": 0.9 if comp.name in ("momentum", "nesterov") else 0.0,
                  "nesterov": comp.name == "nesterov",
                  **{k: v for k, v in comp.kwargs.items() if k != "lr"}}
            self.stack = BrainStack(copy.deepcopy(bound.graph_module),
                                    [bound.graph_module.state_dict()] * len(self.order))
            self.stacked_sgd = StackedSGD(self.stack.stacked_parameters(), len(self.order),
                                          momentum=float(kw["momentum"]),
                                          dampening=float(kw.get("dampening", 0.0)),
                                          weight_decay=float(kw.get("weight_decay", 0.0)),
                                          nesterov=bool(kw["nesterov"]))
            self.modules = {}
            self.optimizers = {}
            self.index = {n: i for i, n in enumerate(self.order)}
            self.sel = [torch.tensor([self.index[n] for n in sp.stepping]) for sp in steps]
            self.lr_vec = [torch.tensor([self.base_lrs[n][0] for n in sp.stepping], dtype=torch.float64)
                           for sp in steps]
        self.data = bound.data
        self.own = {n: replace(bound.data, seed=bound.data.seed + 7919 * (i + 1))
                    for i, n in enumerate(self.order) if self.brains[n].data == "own"}
        self.ema: dict[str, torch.Tensor] | None = None
        self.train_x = self.train_y = self.val_x = self.val_y = None
        self.last_losses: dict[str, float] = {}

    def _partition_plans(self, bound: Bound, total_steps: int) -> None:
        """Brains with partitions: each brain is its own copy of the model trained by the
        partition schedule (a Plan of its own, lowered from the spec without brains), advanced
        by the brain's own step count; its step sizes are k_i times those of the partitions
        (or `lr`/base for a brain with its own `lr`), and the spec's schedule runs on the global clock."""
        from mrc.api import _passes_for_partitions
        from mrc.runtime.plan import lower
        from mrc.schedule import build_graph

        program = bound.program
        for name, brain in self.brains.items():
            module = self.modules[name]
            own = replace(program, brains=(), merge=None, optimizer=brain.optimizer or program.optimizer)
            brain_bound = replace(bound, program=own, model=module, graph_module=module)
            graph = _passes_for_partitions(build_graph(brain_bound))
            plan = lower(brain_bound, graph, total_steps)
            comp = brain.optimizer or program.optimizer
            scale = brain.lr / _base_lr(comp) if brain.lr is not None else float(brain.every)
            plan.schedule = lambda n, k=brain.every, c=scale: c * self.schedule(n * k)
            self.part_plans[name] = plan
            self.optimizers.pop(name, None)

    # ---- the runtime's view -------------------------------------------------------------

    def attach(self, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
               val_y: torch.Tensor) -> None:
        """The data on the training device (own-order batches and `best` merges need it)."""
        self.train_x, self.train_y, self.val_x, self.val_y = train_x, train_y, val_x, val_y

    def to(self, device: torch.device) -> BrainsPlan:
        for m in self.modules.values():
            m.to(device)
        if self.stack is not None:
            self.stack.to(device)
            self.stacked_sgd.bufs = [b.to(device) for b in self.stacked_sgd.bufs]
            self.stacked_sgd.params = self.stack.stacked_parameters()
            self.sel = [s.to(device) for s in self.sel]
            self.lr_vec = [v.to(device) for v in self.lr_vec]
        return self

    def _batch(self, name: str, t: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        own = self.own.get(name)
        if own is None:
            return x, y
        n = t // self.brains[name].every  # this brain's own step count
        spe = own.steps_per_epoch()
        idx = own.batch_indices(n // spe)[n % spe].to(x.device)
        return self.train_x[idx], self.train_y[idx]

    def step(self, t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        if self.stack is not None:
            return self._batched_step(t, x, y)
        sp = self.steps[t % self.period]
        mult = self.schedule(t)
        losses = {}
        for name in sp.stepping:
            if name in self.part_plans:
                xb, yb = self._batch(name, t, x, y)
                loss = self.part_plans[name].step(t // self.brains[name].every, xb, yb)
                if loss is not None:
                    losses[name] = loss
                continue
            module, opt = self.modules[name], self.optimizers[name]
            for group, base in zip(opt.param_groups, self.base_lrs[name], strict=True):
                group["lr"] = base * mult
            xb, yb = self._batch(name, t, x, y)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(module(xb), yb, label_smoothing=self.label_smoothing)
            loss.backward()
            opt.step()
            losses[name] = loss.detach()
        for group in sp.merges:
            self.merge(group)
        self.last_losses = losses  # tensors; the trainer reads them only when it logs
        if not losses:
            return None
        return torch.stack(list(losses.values())).mean()

    def _batched_step(self, t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """All stepping brains in one forward and backward over the stacked parameters; the
        summed per-brain mean losses give each brain exactly its own gradient."""
        i = t % self.period
        sp = self.steps[i]
        if not sp.stepping:
            for group in sp.merges:  # brains may arrive together on a step none of them takes
                self.merge(group)
            self.last_losses = {}
            return None
        batches = [self._batch(n, t, x, y) for n in sp.stepping]
        xs = torch.stack([b[0] for b in batches])
        ys = torch.stack([b[1] for b in batches])
        everyone = len(sp.stepping) == len(self.order)
        sel = self.sel[i]
        self.stacked_sgd.zero_grad()
        out = self.stack(xs, None if everyone else sel)
        per_brain = F.cross_entropy(out.flatten(0, 1), ys.flatten(), label_smoothing=self.label_smoothing,
                                    reduction="none").view(len(sp.stepping), -1).mean(1)
        per_brain.sum().backward()
        self.stacked_sgd.step(sel, self.lr_vec[i] * self.schedule(t), everyone)
        losses = per_brain.detach()
        self.last_losses = dict(zip(sp.stepping, losses, strict=True))
        for group in sp.merges:
            self.merge(group)
        return losses.mean()

    def learning_rates(self, t: int) -> dict[str, float]:
        if self.part_plans:
            return {f"{n}.{part}": lr for n, p in self.part_plans.items()
                    for part, lr in p.learning_rates(t // self.brains[n].every).items()}
        mult = self.schedule(t)
        return {n: self.base_lrs[n][0] * mult for n in self.order}

    # ---- merging ------------------------------------------------------------------------

    def _weights(self, group: tuple[str, ...]) -> list[float]:
        spec = self.merge_spec
        assert spec is not None
        if spec.rule == "weighted":
            w = [spec.weights[self.order.index(n)] for n in group]
            total = sum(w)
            return [x / total for x in w] if total > 0 else [1 / len(group)] * len(group)
        return [1 / len(group)] * len(group)

    def _pick_best(self, group: tuple[str, ...]) -> str:
        from mrc.runtime.trainer import evaluate

        assert self.merge_spec is not None and self.val_x is not None
        metric = self.merge_spec.metric
        scores = {n: evaluate(self.module_of(n), self.val_x, self.val_y)[metric.split("_")[1]] for n in group}
        return (max if metric == "val_acc" else min)(group, key=lambda n: scores[n])

    @torch.no_grad()
    def combined(self, group: tuple[str, ...], *, update_ema: bool) -> dict[str, torch.Tensor]:
        """The merged state (parameters and float buffers) of `group` under the merge rule."""
        spec = self.merge_spec
        assert spec is not None
        states = [self.state_of(n) for n in group]
        if spec.rule == "best":
            return {k: v.clone() for k, v in self.state_of(self._pick_best(group)).items()}
        w = self._weights(group)
        out = {}
        for key, first in states[0].items():
            if not first.is_floating_point():
                out[key] = first.clone()
                continue
            out[key] = sum(wi * s[key] for wi, s in zip(w, states, strict=True))
        if spec.rule == "ema":
            if self.ema is None:
                ema = {k: v.clone() for k, v in out.items()}
            else:
                ema = {k: (spec.decay * self.ema[k] + (1 - spec.decay) * v) if v.is_floating_point() else v
                       for k, v in out.items()}
            if update_ema:
                self.ema = ema
            out = {k: v.clone() for k, v in ema.items()}
        return out

    @torch.no_grad()
    def merge(self, group: tuple[str, ...]) -> None:
        """Merge the brains of `group` and set each to the merged point."""
        state = self.combined(group, update_ema=True)
        for n in group:
            self.set_state(n, state)
        momentum = self.merge_spec.momentum if self.merge_spec else "keep"
        if self.stack is not None:
            if momentum == "reset":
                for n in group:
                    self.stacked_sgd.set_brain_state(self.index[n], None)
            elif momentum == "average" and self.stacked_sgd.bufs:
                bufs = [self.stacked_sgd.brain_state(self.index[n]) for n in group]
                mean = [sum(b[j] for b in bufs) / len(bufs) for j in range(len(bufs[0]))]
                for n in group:
                    self.stacked_sgd.set_brain_state(self.index[n], mean)
            return
        if momentum == "reset" and self.part_plans:
            for n in group:
                self.part_plans[n].reset_state()
        elif momentum == "reset":
            for n in group:
                self.optimizers[n].state.clear()
        elif momentum == "average":
            per_brain = [[self.optimizers[n].state.get(p, {}) for p in self.modules[n].parameters()]
                         for n in group]
            for i in range(len(per_brain[0])):
                entries = [pb[i] for pb in per_brain]
                keys = set().union(*(e.keys() for e in entries))
                for key in keys:
                    values = [e[key] for e in entries if key in e]
                    if len(values) == len(entries) and all(isinstance(v, torch.Tensor) for v in values):
                        mean = sum(v.to(torch.float64) for v in values) / len(values)
                        for e in entries:
                            e[key] = mean.to(e[key].dtype).clone()

    # ---- models, state ------------------------------------------------------------------

    def state_of(self, name: str) -> dict[str, torch.Tensor]:
        if self.stack is not None:
            return self.stack.brain_state_dict(self.index[name])
        return self.modules[name].state_dict()

    def set_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        if self.stack is not None:
            self.stack.load_brain_state_dict(self.index[name], state)
        else:
            self.modules[name].load_state_dict(state)

    def module_of(self, name: str) -> nn.Module:
        """Brain `name` as an ordinary module (a copy, when the brains are stacked)."""
        if self.stack is None:
            return self.modules[name]
        module = copy.deepcopy(self.bound.graph_module).to(next(self.stack.parameters()).device)
        module.load_state_dict(self.state_of(name))
        return module

    def eval_models(self) -> dict[str, nn.Module]:
        """Each brain, and the merged model (the rule over all brains, without changing them)."""
        brains = {n: self.module_of(n) for n in self.order}
        merged = copy.deepcopy(brains[self.order[0]])
        merged.load_state_dict(self.combined(tuple(self.order), update_ema=False))
        return {**brains, "merged": merged}

    def final_model(self) -> nn.Module:
        return self.eval_models()["merged"]

    def brain_states(self) -> dict[str, dict[str, torch.Tensor]]:
        return {n: {k: v.detach().cpu().clone() for k, v in self.state_of(n).items()} for n in self.order}

    def full_weights(self) -> Any:
        return nullcontext()

    def finish(self) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        out = {"brains": {n: self.state_of(n) for n in self.order},
               "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
               "ema": self.ema}
        if self.stack is not None:
            out["stacked_sgd"] = self.stacked_sgd.state_dict()
        out["part_plans"] = {n: p.state_dict() for n, p in self.part_plans.items()}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n in self.order:
            self.set_state(n, state["brains"][n])
        for n, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][n])
        if self.stack is not None:
            self.stacked_sgd.load_state_dict(state["stacked_sgd"])
        for n, p in self.part_plans.items():
            p.load_state_dict(state["part_plans"][n])
        self.ema = state["ema"]


def make_brains_plan(bound: Bound, graph: ScheduleGraph, total_steps: int) -> BrainsPlan:
    """The plan of a brains schedule (batched where the graph says so)."""
    return BrainsPlan(bound, graph, total_steps)
