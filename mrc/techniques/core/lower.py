"""Lowerings of the core op kinds: batch, forward, loss, backward, update group.

Each function turns one op into a callable over the step's `Env`, prepared once. Techniques add
variants of these kinds for the ops they accept (stacked brains, random-subset updates, batches
of a brain's own order: see `lowers(kind, when=…)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mrc.ir.graph import Pattern
from mrc.ir.ops import Backward, Batch, Forward, Loss, UpdateGroup
from mrc.losses import PreparedLoss, prepare_op
from mrc.lower.integrators import TorchRule
from mrc.lower.plan import Env, Lowering, LoweringError, StepFn, lowers
from mrc.lower.precision import scaler_of
from mrc.lower.segments import segments

FUSED = ("torch", "triton")


def replica(op: Any) -> str:
    return op.scope.replica[0] if op.scope.replica else ""


def _input(pattern: Pattern, op: Any, *kinds: str) -> str:
    for src, v in pattern.inputs(op):
        if v.kind in kinds:
            return src.id
    raise LoweringError(f"{op.id}: no {' or '.join(kinds)} input")


@lowers("batch")
def lower_batch(op: Batch, pattern: Pattern, ctx: Lowering) -> StepFn:
    if op.source != "shared":
        raise LoweringError(f"{op.id}: batches from `{op.source}` have no lowering")
    key = op.id

    def shared(env: Env) -> None:
        env.values[key] = (env.x, env.y)
    return shared


def segment_module(op: Forward, ctx: Lowering) -> nn.Module:
    """The module that runs the forward's layers [start, stop): the replica's traced model, or
    its prefix or suffix cut by torch.fx (mrc/lower/segments.py)."""
    module: nn.Module = ctx.replicas.module_of(replica(op))
    if (op.start, op.stop) != (0, None):
        if op.stop is not None and op.start != 0:
            raise LoweringError(f"{op.id}: a middle segment of the model cannot run yet")
        prefix, suffix = segments(ctx, replica(op), module, op.stop if op.stop is not None else op.start)
        module = prefix if op.start == 0 else suffix
    return module


@lowers("forward")
def lower_forward(op: Forward, pattern: Pattern, ctx: Lowering) -> StepFn:
    return forward_callable(op, pattern, segment_module(op, ctx))


def forward_callable(op: Forward, pattern: Pattern, module: nn.Module) -> StepFn:
    """Run `module` (the forward's segment) on the forward's input edge."""
    key = op.id
    src = _input(pattern, op, "batch", "activation", "detached")
    from_batch = any(v.kind == "batch" for s, v in pattern.inputs(op) if s.id == src)
    whole = (op.start, op.stop) == (0, None) or op.start == 0
    no_grad = not op.grad

    def forward(env: Env) -> None:
        x = env.values[src][0] if from_batch else env.values[src]
        if no_grad:
            with torch.no_grad():
                out = module(x) if whole else module(*x)
        else:
            out = module(x) if whole else module(*x)
        env.values[key] = out
    return forward


@dataclass
class LossState:
    """The losses of one lowering, prepared once per distinct (fn, settings, where)."""

    prepared: dict[tuple[Any, ...], PreparedLoss] = field(default_factory=dict)


def prepared_loss(op: Loss, ctx: Lowering) -> PreparedLoss:
    """The op's loss (`fn` with its settings, or the user's function) as callables, prepared once
    per distinct loss of the run (a pos_weight tensor on the run's device and dtype)."""
    from mrc.usercode import UserCodeError

    prepared = ctx.state_of(LossState).prepared
    key = (op.fn, op.label_smoothing, op.args, op.where)
    got = prepared.get(key)
    if got is None:
        dtype = next(iter(ctx.bound.model.parameters())).dtype
        try:
            got = prepared[key] = prepare_op(op, ctx.device, dtype)
        except (UserCodeError, ValueError) as e:
            raise LoweringError(f"{op.id}: {getattr(e, 'message', e)}") from None
    return got


@lowers("loss")
def lower_loss(op: Loss, pattern: Pattern, ctx: Lowering) -> StepFn:
    if op.terms:
        raise LoweringError(f"{op.id}: loss terms {list(op.terms)} have no lowering yet")
    key, r, fn = op.id, replica(op), prepared_loss(op, ctx).mean
    logits = _input(pattern, op, "logits")
    batch = _input(pattern, op, "batch")

    def loss(env: Env) -> None:
        value = fn(env.values[logits], env.values[batch][1])
        env.values[key] = value
        env.losses.append((r, value.detach()))
    return loss


@lowers("backward")
def lower_backward(op: Backward, pattern: Pattern, ctx: Lowering) -> StepFn:
    if op.method != "autograd":
        raise LoweringError(f"{op.id}: backward by `{op.method}` has no lowering")
    r = replica(op)
    graph = ctx.graph
    loss = _input(pattern, op, "loss")
    fresh: list[torch.Tensor] = []  # gradients that start from None
    spans: list[tuple[Any, tuple[str, ...]]] = []  # fused rules: gradient spans zeroed
    inputs: list[torch.Tensor] = []
    for n in op.wrt:
        params = ctx.replicas.params(graph, r, n)
        inputs += params
        owner = ctx.owners.get((r, n))
        if owner is not None and owner.kernel in FUSED:
            integ = fused_integrator(owner, ctx)
            spans.append((integ, n))
        else:
            fresh += params
    # element-level partitions share tensors: each tensor is an input (and reset) once
    inputs = list({id(p): p for p in inputs}.values())
    fresh = list({id(p): p for p in fresh}.values())
    by_rule: dict[int, tuple[Any, list[str]]] = {}
    for integ, n in spans:
        by_rule.setdefault(id(integ), (integ, []))[1].append(n)
    zero = tuple((integ, tuple(ns)) for integ, ns in by_rule.values())
    everything = set(op.wrt) == set(graph.partitions)
    clip = op.clip
    scaler = scaler_of(op, ctx) if op.scaled else None

    def backward(env: Env) -> None:
        for p in fresh:
            p.grad = None
        for integ, names in zero:
            integ.zero_spans(names)
        value = env.values[loss]
        if scaler is not None:
            value = scaler.scale_loss(value)
        if everything:
            value.backward()
        else:
            torch.autograd.backward(value, inputs=inputs)
        if scaler is not None:  # fused kernels, brains, modules and MGRIT all read these gradients
            scaler.unscale_(inputs)
        if clip > 0:
            nn.utils.clip_grad_norm_(inputs, clip)
    return backward


def fused_integrator(op: UpdateGroup, ctx: Lowering) -> Any:
    """The fused SGD or Adam integrator of an update group's rule in its replica (made once)."""
    from mrc.optim.families import family, sgd_hyper
    from mrc.runtime.fused import FusedAdam, FusedSGD

    r = replica(op)
    key = integrator_key(op, "fused")
    integ = ctx.integrators.get(key)
    if integ is not None:
        return integ
    graph = ctx.graph
    names = ctx.groups_of(r, op.rule, op.kernel, op.scope.rank)
    params = {n: ctx.replicas.params(graph, r, n) for n in names}
    tensors = [p for n in names for p in params[n]]
    if len({(p.dtype, p.device) for p in tensors}) != 1:
        raise LoweringError(f"{op.id}: a fused kernel needs one dtype and device for all of {names}")
    fam = family(op.rule.name)
    kw = op.rule.kwargs
    if fam.sgd_like:
        integ = FusedSGD({n: (params[n], ctx.lr_of(r, n)) for n in names},
                         **sgd_hyper(op.rule.name, kw), kernel=op.kernel,
                         masks={n: ctx.masks_of(r, n) for n in names})
    elif fam.adam_like:
        if any(graph.partitions[n].partial for n in names):
            raise LoweringError(f"{op.id}: the fused Adam kernel moves whole tensors; element-level "
                                "partitions of an Adam rule run through torch.optim")
        betas = tuple(kw.get("betas", (0.9, 0.999)))
        integ = FusedAdam({n: (params[n], ctx.lr_of(r, n)) for n in names},
                          betas=(float(betas[0]), float(betas[1])), eps=float(kw.get("eps", 1e-8)),
                          weight_decay=float(kw.get("weight_decay", 0.0)), decoupled=fam.name == "adamw",
                          kernel=op.kernel)
    else:
        raise LoweringError(f"{op.id}: rule `{op.rule.name}` has no fused kernel")
    for storage in ctx.replicas.storage.values():  # the flat buffer now holds the stacked tensors
        storage.rebind()
    ctx.integrators[key] = integ
    return integ


def integrator_key(op: UpdateGroup, family: str) -> tuple[Any, ...]:
    """The key of an update group's integrator: one per replica, family, rule and kernel — and
    per process for updates placed on one (`Scope.rank`), so that each integrator lives on
    exactly one rank (its state is that rank's to save)."""
    key: tuple[Any, ...] = (replica(op), family, op.rule, op.kernel)
    return key if op.scope.rank < 0 else (*key, op.scope.rank)


def torch_integrator(op: UpdateGroup, ctx: Lowering) -> TorchRule:
    r = replica(op)
    key = integrator_key(op, "torch.optim")
    integ = ctx.integrators.get(key)
    if integ is None:
        names = ctx.groups_of(r, op.rule, op.kernel, op.scope.rank)
        integ = TorchRule(op.rule, {n: ctx.replicas.params(ctx.graph, r, n) for n in names},
                          {n: ctx.lr_of(r, n) for n in names}, op.kernel,
                          noise_seed=stable_seed(ctx.run.seed, r, *names),
                          masks={n: ctx.masks_of(r, n) for n in names})
        ctx.integrators[key] = integ
    return integ


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from the run's seed and names (the same in every process)."""
    import hashlib

    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def drift_buffers(ctx: Lowering, r: str, n: str) -> list[torch.Tensor]:
    """The step a held partition keeps for its drift ops (created once)."""
    key = (r, n)
    if key not in ctx.drift:
        ctx.drift[key] = [torch.zeros_like(p) for p in ctx.replicas.params(ctx.graph, r, n)]
    return ctx.drift[key]


@lowers("update_group")
def lower_update_group(op: UpdateGroup, pattern: Pattern, ctx: Lowering) -> StepFn:
    if op.kernel in FUSED:
        integ = fused_integrator(op, ctx)
        for n, lr in zip(op.partitions, op.lrs, strict=True):
            if integ.base[n] != lr:
                raise LoweringError(f"{op.id}: partition {n} runs at lr {lr:g} here and {integ.base[n]:g} elsewhere; "
                                    "a fused rule keeps one learning rate per partition")
        updating, drifting, intervals = op.partitions, op.drifting, op.intervals

        def fused(env: Env) -> None:
            integ.mult = env.mult
            integ.step_partitions(updating, drifting, intervals)
        return fused
    if op.drifting:
        raise LoweringError(f"{op.id}: only fused kernels take drift steps inside an update")
    if op.kernel not in ("torch.optim", "triton"):
        raise LoweringError(f"{op.id}: kernel `{op.kernel}` has no lowering for rule `{op.rule.name}`")
    integ = torch_integrator(op, ctx)
    groups = integ.groups(op.partitions)
    lrs = op.lrs
    r = replica(op)
    if not op.held:
        def step(env: Env) -> None:
            integ.step(groups, lrs, env.mult)
        return step
    held = [(ctx.replicas.params(ctx.graph, r, n), drift_buffers(ctx, r, n), ctx.masks_of(r, n))
            for n in op.held]

    def step_held(env: Env) -> None:
        # Linear drift: the integrator computes the partition's whole step now, but the
        # partition moves by 1/k of it on each of the k steps of its interval (drift ops).
        # An element-level partition keeps (and puts back) only its own elements: another
        # partition of the same tensor may move in this very step.
        with torch.no_grad():
            saved = [[p.detach().clone() for p in ps] for ps, _, _ in held]
            integ.step(groups, lrs, env.mult)
            for (ps, deltas, masks), before in zip(held, saved, strict=True):
                for p, b, d, m in zip(ps, before, deltas, masks, strict=True):
                    torch.sub(p, b, out=d)
                    if m is None:
                        p.copy_(b)
                    else:
                        d.masked_fill_(~m, 0)
                        p.copy_(torch.where(m, b, p))
    return step_held
