"""Lowerings of brains (multirate across networks): the replicas, own-order batches, merges, and
the stacked forward/loss/backward/update of brains that step together.

Replicas: every brain is a copy of the traced model starting from the same weights — or, when
the graph's update groups say `kernel=stacked` (the batch-brains pass), all brains live in one
`BrainStack` (stacked parameters, mrc/techniques/brains/stack.py) updated by `StackedSGD`.

Merge rules (over the brains L that arrived together, parameters and float buffers alike):
    mean:      θ ← (1/|L|) Σ_{i∈L} θ_i
    weighted:  θ ← Σ_{i∈L} w_i θ_i / Σ_{i∈L} w_i      (w in the brains' declaration order)
    best:      θ ← θ_j, j = the brain of L with the best validation metric
    ema:       θ̄ ← d·θ̄ + (1−d)·mean_L θ_i (θ̄ starts at the first mean);  θ ← θ̄
and every brain of L continues from θ. Optimizer state: `keep`, `reset` (cleared) or `average`
(averaged like the parameters, by the plain mean). The final model is the graph's final merge
rule applied to all brains at the end of training.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from mrc.ir.graph import Pattern, ScheduleGraph
from mrc.ir.ops import Backward, Batch, Forward, Loss, UpdateGroup
from mrc.lower.plan import Env, Lowering, LoweringError, StepFn, lowers
from mrc.lower.replicas import LAYOUTS, Replicas
from mrc.models.trace import quiet
from mrc.techniques.brains import ranks
from mrc.techniques.brains.ops import Merge, MergeRule
from mrc.techniques.brains.tables import BRAINS


class BrainReplicas(Replicas):
    """One model per brain, or all brains stacked (see the module docstring)."""

    def __init__(self, graph: ScheduleGraph, bound: Any, device: torch.device) -> None:
        super().__init__(bound, device)
        self.graph = graph
        self.scoring: Any = None  # mrc.losses.Scoring of a `best` merge, made at its first use
        self.order = list(graph.table(BRAINS).replicas)
        self.index = {n: i for i, n in enumerate(self.order)}
        self.stacked = any(op.kernel == "stacked" for op in graph.ops() if isinstance(op, UpdateGroup))
        self.final_rule: MergeRule = graph.table(BRAINS).final_merge or MergeRule()
        self.ema: dict[str, torch.Tensor] | None = None
        self.modules: dict[str, nn.Module] = {}
        self.stack: Any = None
        self.stacked_sgd: Any = None
        if self.stacked:
            from mrc.techniques.brains.stack import BrainStack

            self.stack = BrainStack(copy.deepcopy(bound.runnable).to(device),
                                    [bound.runnable.state_dict()] * len(self.order)).to(device)
        else:
            self.modules = {n: quiet(copy.deepcopy(bound.runnable)).to(device) for n in self.order}
            self._named = {n: dict(m.named_parameters()) for n, m in self.modules.items()}

        self.ranked: ranks.RankedBrains | None = None
        self.last_losses: dict[str, torch.Tensor] = {}
        self.world: Any = None

    def prepare(self, ctx: Lowering) -> None:
        """The brains' hooks on the Plan: each brain's loss in the metrics records (and its
        TensorBoard tags), each brain evaluated beside the merged model, and `brains/NAME.pt` at
        the end. Brains on ranks (their ops carry ranks): the collective merges' view of the
        ranks, and the sync that brings every brain from its rank before evaluation and saving
        (ranks.py)."""
        hooks, self.world = ctx.hooks, ctx.world
        on_ranks = any(op.scope.replica and op.scope.rank >= 0 for op in ctx.graph.ops())
        if on_ranks and ctx.world.active:
            self.ranked = ranks.RankedBrains(self, ctx)
            hooks.syncs.append(self.ranked.sync)
        hooks.metrics.append(lambda: {"brains": self.losses()})
        hooks.scalars["brains"] = brain_scalars
        hooks.eval_models.append(lambda: {"brains": {n: self.brain_module(n) for n in self.order}})
        hooks.artifacts.append(lambda state: {f"brains/{n}.pt": s for n, s in self.brain_states().items()})

    def step_loss(self, env: Env) -> torch.Tensor | None:
        """The step's loss: the mean over the brains that stepped (each brain's first loss),
        each of which counts in a run of several processes (`Env.weight`)."""
        first: dict[str, torch.Tensor] = {}
        for r, loss in env.losses:
            first.setdefault(r, loss)
        self.last_losses = first
        env.weight = float(len(first))  # the run's loss is the mean over every brain that stepped
        return torch.stack(list(first.values())).mean() if first else None

    def losses(self) -> dict[str, float]:
        """Each brain's loss on the last step it ran (the brains that stepped); with brains on
        ranks, gathered from every rank (a collective: every rank calls it at the same step)."""
        local = {n: v.item() for n, v in self.last_losses.items()}
        if self.ranked is None:
            return local
        merged: dict[str, float] = {}
        for part in self.world.all_gather_object(local):
            merged.update(part)
        return {n: merged[n] for n in self.order if n in merged}

    # ---- parameters ---------------------------------------------------------------------

    def module_of(self, replica: str) -> nn.Module:
        if self.stack is not None:
            raise LoweringError("stacked brains have no module of their own")
        return self.modules[replica]

    def params(self, graph: ScheduleGraph, replica: str, partition: str) -> list[torch.Tensor]:
        if self.stack is not None:
            return self.stack.stacked_parameters()
        named = self._named[replica]
        return [named[n] for n in graph.partitions[partition].params]

    def state_of(self, name: str) -> dict[str, torch.Tensor]:
        if self.stack is not None:
            return self.stack.brain_state_dict(self.index[name])
        return self.modules[name].state_dict()

    def set_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        if self.stack is not None:
            self.stack.load_brain_state_dict(self.index[name], state)
        else:
            self.modules[name].load_state_dict(state)

    def brain_module(self, name: str) -> nn.Module:
        """Brain `name` as an ordinary module (a copy, when the brains are stacked)."""
        if self.stack is None:
            return self.modules[name]
        module = quiet(copy.deepcopy(self.bound.runnable)).to(next(self.stack.parameters()).device)
        module.load_state_dict(self.state_of(name))
        return module

    # ---- merging ------------------------------------------------------------------------

    def _weights(self, group: tuple[str, ...], rule: MergeRule) -> list[float]:
        if rule.rule == "weighted":
            w = [rule.weights[self.order.index(n)] for n in group]
            total = sum(w)
            return [x / total for x in w] if total > 0 else [1 / len(group)] * len(group)
        return [1 / len(group)] * len(group)

    def _pick_best(self, group: tuple[str, ...], rule: MergeRule) -> str:
        return self.best_of(group, rule, {n: self.score(n, rule) for n in group})

    def score(self, name: str, rule: MergeRule) -> float:
        """Brain `name`'s validation metric (`rule.metric`) for a `best` merge."""
        from mrc.losses import scoring_of
        from mrc.runtime.evaluation import evaluate

        if self.val_x is None:
            raise LoweringError("a `best` merge needs the validation data (Plan.attach)")
        if self.scoring is None:  # the run's loss (and its task's metrics), prepared once
            self.scoring = scoring_of(self.graph, (), self.val_x.device, self.val_x.dtype)
        ev = evaluate(self.brain_module(name), self.val_x, self.val_y, scoring=self.scoring)
        return float(ev[rule.metric.removeprefix("val_")])

    @staticmethod
    def best_of(group: tuple[str, ...], rule: MergeRule, scores: dict[str, float]) -> str:
        """The brain of `group` with the best score (the first of equals, in the group's order)."""
        from mrc.losses import metric_mode

        return (max if metric_mode(rule.metric) == "max" else min)(group, key=lambda n: scores[n])

    @torch.no_grad()
    def combined(self, group: tuple[str, ...], rule: MergeRule, *, update_ema: bool) -> dict[str, torch.Tensor]:
        """The merged state (parameters and float buffers) of `group` under `rule`."""
        if rule.rule == "best":
            return {k: v.clone() for k, v in self.state_of(self._pick_best(group, rule)).items()}
        states = [self.state_of(n) for n in group]
        w = self._weights(group, rule)
        out = {}
        for key, first in states[0].items():
            if not first.is_floating_point():
                out[key] = first.clone()
                continue
            out[key] = sum(wi * s[key] for wi, s in zip(w, states, strict=True))
        return self.ema_of(out, rule, update_ema=update_ema)

    def ema_of(self, mean: dict[str, torch.Tensor], rule: MergeRule, *, update_ema: bool) -> dict[str, torch.Tensor]:
        """An `ema` merge's point from the group's `mean` (the running average, advanced when
        `update_ema`); other rules' merged point is the mean itself."""
        if rule.rule != "ema":
            return mean
        if self.ema is None:
            ema = {k: v.clone() for k, v in mean.items()}
        else:
            ema = {k: (rule.decay * self.ema[k] + (1 - rule.decay) * v) if v.is_floating_point() else v
                   for k, v in mean.items()}
        if update_ema:
            self.ema = ema
        return {k: v.clone() for k, v in ema.items()}

    @torch.no_grad()
    def merge(self, group: tuple[str, ...], rule: MergeRule) -> None:
        """Merge the brains of `group` and set each to the merged point."""
        self.settle(group, rule, self.combined(group, rule, update_ema=True), self.average_momentum)

    def settle(self, group: tuple[str, ...], rule: MergeRule, state: dict[str, torch.Tensor],
               average: Any) -> None:
        """Every brain of `group` goes on from `state`; their optimizer state as `rule.momentum`
        says (`average(group)` averages it)."""
        for n in group:
            self.set_state(n, state)
        if rule.momentum == "reset":
            self.reset_momentum(group)
        elif rule.momentum == "average":
            average(group)

    def reset_momentum(self, group: tuple[str, ...]) -> None:
        """momentum = reset: the brains' next steps start their integrators afresh."""
        if self.stack is not None:
            sgd = self.plan.ctx.integrators.get(("", "stacked"))
            for n in group if sgd is not None else ():
                sgd.set_brain_state(self.index[n], None)
            return
        for n in group:
            for integ in self.plan.integrators(n):
                integ.reset_state()

    def average_momentum(self, group: tuple[str, ...]) -> None:
        """momentum = average, in one process."""
        if self.stack is None:
            self._average_state(group)
            return
        sgd = self.plan.ctx.integrators[("", "stacked")]
        if sgd.bufs:
            bufs = [sgd.brain_state(self.index[n]) for n in group]
            mean = [sum(b[j] for b in bufs) / len(bufs) for j in range(len(bufs[0]))]
            for n in group:
                sgd.set_brain_state(self.index[n], mean)

    def _average_state(self, group: tuple[str, ...]) -> None:
        """momentum = average: each brain's torch.optim state, parameter by parameter."""
        from mrc.lower.integrators import TorchRule

        per_brain = []
        for n in group:
            integs = list(self.plan.integrators(n))
            if any(not isinstance(i, TorchRule) for i in integs):
                raise LoweringError("`momentum = average` needs torch.optim integrators (kernel=torch.optim)")
            per_brain.append([i.optimizer.state.setdefault(p, {}) for i in integs
                              for g in i.optimizer.param_groups for p in g["params"]])
        for i in range(len(per_brain[0])):
            entries = [pb[i] for pb in per_brain]
            keys = set().union(*(e.keys() for e in entries))
            for key in keys:
                values = [e[key] for e in entries if key in e]
                if len(values) == len(entries) and all(isinstance(v, torch.Tensor) for v in values):
                    mean = sum(v.to(torch.float64) for v in values) / len(values)
                    for e in entries:
                        e[key] = mean.to(e[key].dtype).clone()

    # ---- the runtime's view -------------------------------------------------------------

    def checkpointed(self) -> list[nn.Module]:
        return [self.stack] if self.stack is not None else list(self.modules.values())

    def final_model(self) -> nn.Module:
        """The merged model: the final rule over all brains, changing none."""
        first = self.order[0]
        merged = copy.deepcopy(self.modules[first]) if self.stack is None else self.brain_module(first)
        merged.load_state_dict(self.combined(tuple(self.order), self.final_rule, update_ema=False))
        return merged

    def brain_states(self) -> dict[str, dict[str, torch.Tensor]]:
        return {n: {k: v.detach().cpu().clone() for k, v in self.state_of(n).items()} for n in self.order}

    def state_dict(self) -> dict[str, Any]:
        return {"brains": {n: self.state_of(n) for n in self.order}, "ema": self.ema}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n in self.order:
            self.set_state(n, state["brains"][n])
        self.ema = state["ema"]


def brain_scalars(entry: dict[str, Any], record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard tags of a record's `brains` entry: `brains/NAME/loss` (a training record),
    `brains/NAME/val_loss|val_acc` and the merged model's as `brains/merged/…` (an evaluation)."""
    out: dict[str, Any] = {}
    for brain, value in entry.items():
        if isinstance(value, dict):
            out.update({f"brains/{brain}/{key}": v for key, v in value.items()})
        else:
            out[f"brains/{brain}/loss"] = value
    if any(isinstance(ev, dict) for ev in entry.values()):
        out["brains/merged/val_loss"] = record.get("val_loss")
        out["brains/merged/val_acc"] = record.get("val_acc")
    return out


def _layout(graph: ScheduleGraph, bound: Any, device: torch.device) -> BrainReplicas | None:
    return BrainReplicas(graph, bound, device) if graph.table(BRAINS).replicas else None


LAYOUTS.append(_layout)


def _stacked(op: Any, ctx: Lowering) -> bool:
    return bool(ctx.replicas.stacked)


def _replicas(ctx: Lowering) -> BrainReplicas:
    return ctx.replicas


@lowers("batch", when=lambda op, ctx: op.source == "own")
def own_batches(op: Batch, pattern: Pattern, ctx: Lowering) -> StepFn:
    """A brain's own batch order: its n-th step (n = t / stride) takes the n-th batch of an
    order seeded by the data's seed and the brain's stream."""
    data = ctx.bound.data
    own = replace(data, seed=data.seed + 7919 * op.stream)
    spe = own.steps_per_epoch()
    stride, key = op.stride, op.id
    reps = _replicas(ctx)
    cache: dict[int, Any] = {}
    augment = data.augment  # the data's per-sample transforms, drawn as for the shared order

    def batch(env: Env) -> None:
        n = env.t // stride
        epoch = n // spe
        if epoch not in cache:
            cache.clear()
            cache[epoch] = own.batch_indices(epoch)
        idx = cache[epoch][n % spe].to(env.x.device)
        x = reps.train_x[idx]
        env.values[key] = (augment.train(x, idx, epoch) if augment is not None else x, reps.train_y[idx])
    return batch


@lowers("merge")
def lower_merge(op: Merge, pattern: Pattern, ctx: Lowering) -> StepFn:
    reps = _replicas(ctx)
    group, rule = op.brains, op.merge

    def merge(env: Env) -> None:
        reps.merge(group, rule)
    return merge


# ---- stacked brains ---------------------------------------------------------------------


def _batches(pattern: Pattern, op: Any) -> list[str]:
    """The batch inputs of a stacked op, in the order of its scope's brains."""
    by_brain = {src.scope.replica[0]: src.id for src, v in pattern.inputs(op) if v.kind == "batch"}
    return [by_brain[b] for b in op.scope.replica]


def _selection(ctx: Lowering, op: Any) -> torch.Tensor | None:
    reps = _replicas(ctx)
    if len(op.scope.replica) == len(reps.order):
        return None
    return torch.tensor([reps.index[b] for b in op.scope.replica], device=ctx.device)


@lowers("forward", when=_stacked)
def stacked_forward(op: Forward, pattern: Pattern, ctx: Lowering) -> StepFn:
    if (op.start, op.stop) != (0, None):
        raise LoweringError(f"{op.id}: stacked brains run the whole model")
    stack = _replicas(ctx).stack
    batches, key, sel = _batches(pattern, op), op.id, _selection(ctx, op)

    def forward(env: Env) -> None:
        xs = torch.stack([env.values[b][0] for b in batches])
        env.values[key] = stack(xs, sel)
    return forward


@lowers("loss", when=_stacked)
def stacked_loss(op: Loss, pattern: Pattern, ctx: Lowering) -> StepFn:
    from mrc.techniques.core.lower import prepared_loss

    batches, key, brains = _batches(pattern, op), op.id, op.scope.replica
    # each brain's mean over its own batch: a built-in's per-element losses over the flattened
    # (brains×batch, …) tensor, then a mean over each brain's elements; user code per brain
    per_replica = prepared_loss(op, ctx).per_replica
    logits = next(src.id for src, v in pattern.inputs(op) if v.kind == "logits")

    def loss(env: Env) -> None:
        out = env.values[logits]
        ys = torch.stack([env.values[b][1] for b in batches])
        per_brain = per_replica(out, ys)
        env.values[key] = per_brain.sum()
        env.losses.extend(zip(brains, per_brain.detach(), strict=True))
    return loss


@lowers("backward", when=_stacked)
def stacked_backward(op: Backward, pattern: Pattern, ctx: Lowering) -> StepFn:
    params = _replicas(ctx).stack.stacked_parameters()
    loss = next(src.id for src, v in pattern.inputs(op) if v.kind == "loss")
    if op.clip:
        raise LoweringError(f"{op.id}: gradient clipping of stacked brains has no lowering")
    if op.scaled:
        from mrc.lower.precision import scaler_of

        scaler = scaler_of(op, ctx)

        def scaled(env: Env) -> None:
            for p in params:
                p.grad = None
            scaler.scale_loss(env.values[loss]).backward()
            scaler.unscale_(params)
        return scaled

    def backward(env: Env) -> None:
        for p in params:
            p.grad = None
        env.values[loss].backward()
    return backward


@lowers("update_group", when=lambda op, ctx: op.kernel == "stacked")
def stacked_update(op: UpdateGroup, pattern: Pattern, ctx: Lowering) -> StepFn:
    from mrc.optim.families import sgd_hyper
    from mrc.techniques.brains.stack import StackedSGD

    reps = _replicas(ctx)
    if op.drifting or op.held:
        raise LoweringError(f"{op.id}: stacked brains do not drift")
    sgd = ctx.integrators.get(("", "stacked"))
    if sgd is None:
        sgd = StackedSGD(reps.stack.stacked_parameters(), len(reps.order), **sgd_hyper(op.rule.name, op.rule.kwargs))
        sgd.bufs = [b.to(ctx.device) for b in sgd.bufs]
        ctx.integrators[("", "stacked")] = sgd
    sel = torch.tensor([reps.index[b] for b in op.scope.replica], device=ctx.device)
    lrs = torch.tensor(op.lrs, dtype=torch.float64, device=ctx.device)
    everyone = len(op.scope.replica) == len(reps.order)

    def update(env: Env) -> None:
        sgd.step(sel, lrs * env.mult, everyone)
    return update
