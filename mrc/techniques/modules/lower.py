"""Lowerings of module-wise training: a module's forward, its auxiliary head and its local loss.

The traced model is cut once per replica into its K module segments at the fx nodes the graph's
module table names (`ModuleInfo.start`); segment k takes one tensor and returns (output, the
residual branches r_m of its blocks). A module's forward reads its input edge — the batch, or the
previous module's output, detached on a `detached` edge — and runs without autograd when it
tracks no partition (a frozen module of a sequential stage). The local loss is
weight·CE + transport_weight·Σ_m mean(r_m²), or with the method of multipliers λ_k·CE + Σ_m
mean(r_m²), λ_k kept (and checkpointed) in the lowering's state. In a module pipeline
(mrc/techniques/modules/place.py) a micro-batch is a slice of the batch with its share, a
micro-batch's backward adds its share-weighted gradients to the step's, a local loss records the
step's share-weighted sum, and the modules are broadcast from the ranks that train them before
evaluation and saving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from mrc.ir.graph import Pattern
from mrc.ir.ops import Forward
from mrc.lower.plan import Env, Lowering, LoweringError, StepFn, lowers
from mrc.techniques.core.lower import FUSED, fused_integrator, prepared_loss, replica
from mrc.techniques.distributed.lower import BlockCuts, DistributedState
from mrc.techniques.modules import evaluate
from mrc.techniques.modules.ops import AuxHead, LocalLoss, MicroBackward, MicroBatch
from mrc.techniques.modules.tables import MODULES


@dataclass
class ModulesState:
    """What the module-wise lowerings share: each replica's module segments (cut once), each
    module's latest metrics row and micro-batch sums by (replica, module index, module), and
    whether the metrics and the pipeline's sync are registered."""

    pieces: dict[str, list[fx.GraphModule]] = field(default_factory=dict)
    records: dict[tuple[str, int, str], dict[str, Any]] = field(default_factory=dict)
    micro: dict[tuple[str, str], dict[str, torch.Tensor]] = field(default_factory=dict)
    metrics_registered: bool = False
    sync_registered: bool = False


def pieces(ctx: Lowering, r: str) -> list[fx.GraphModule]:
    """The module segments of replica r's model (cut once)."""
    from mrc.techniques.modules import fxsplit

    state = ctx.state_of(ModulesState)
    got = state.pieces.get(r)
    if got is None:
        gm = ctx.replicas.module_of(r)
        if not isinstance(gm, fx.GraphModule):
            raise LoweringError("module-wise training needs the traced model of each replica")
        index = {n.name: i for i, n in enumerate(gm.graph.nodes)}
        cuts = []
        for name, info in list(ctx.graph.table(MODULES).items())[1:]:
            if info.start not in index:
                raise LoweringError(f"module {name} starts at fx node `{info.start}`, which the model does not have")
            cuts.append(fxsplit.Cut(index[info.start], info.start, info.path))
        got = state.pieces[r] = fxsplit.split_modules(gm, cuts, taps=True)
        _register_metrics(ctx)
        register_sync(ctx)
        evaluate.register(ctx)
    return got


def _input(pattern: Pattern, op: Any, *kinds: str) -> tuple[str, str]:
    for src, v in pattern.inputs(op):
        if v.kind in kinds:
            return src.id, v.kind
    raise LoweringError(f"{op.id}: no {' or '.join(kinds)} input")


@lowers("forward", when=lambda op, ctx: bool(op.scope.module))
def lower_module_forward(op: Forward, pattern: Pattern, ctx: Lowering) -> StepFn:
    r = replica(op)
    i = op.scope.module_index
    segs = pieces(ctx, r)
    if i >= len(segs):
        raise LoweringError(f"{op.id}: the model is cut into {len(segs)} modules")
    segment = segs[i]
    src, kind = _input(pattern, op, "batch", "detached", "activation")
    key, no_grad, detach = op.id, not op.grad, kind == "detached"
    if op.frozen:
        def frozen(env: Env) -> None:
            segment.eval()
            try:
                with torch.no_grad():
                    env.values[key] = segment(env.values[src][0])
            finally:
                segment.train()
        return frozen

    def forward(env: Env) -> None:
        x = env.values[src][0]
        if detach:
            x = x.detach()
        if no_grad:
            with torch.no_grad():
                env.values[key] = segment(x)
        else:
            env.values[key] = segment(x)
    return forward


@lowers("aux_head")
def lower_aux_head(op: AuxHead, pattern: Pattern, ctx: Lowering) -> StepFn:
    try:
        head: nn.Module = ctx.replicas.module_of(replica(op)).get_submodule(op.path)
    except AttributeError:
        raise LoweringError(f"{op.id}: the model has no auxiliary head `{op.path}`") from None
    src, _ = _input(pattern, op, "activation")
    key = op.id

    def aux_head(env: Env) -> None:
        env.values[key] = head(env.values[src][0])
    return aux_head


def _lambda(ctx: Lowering, r: str, module: str, lambda0: float) -> torch.Tensor:
    key = f"lambda/{r}/{module}" if r else f"lambda/{module}"
    if key not in ctx.state:
        dtype = next(iter(ctx.replicas.module_of(r).parameters())).dtype
        ctx.state[key] = torch.tensor(lambda0, dtype=dtype, device=ctx.device)
    return ctx.state[key]


@lowers("local_loss")
def lower_local_loss(op: LocalLoss, pattern: Pattern, ctx: Lowering) -> StepFn:
    r, m = replica(op), op.scope.module
    fn = prepared_loss(op, ctx).mean
    logits_src, _ = _input(pattern, op, "logits")
    from_forward = pattern.op(logits_src).kind == "forward"
    batch, _ = _input(pattern, op, "batch")
    taps = None
    if op.transported:  # the module's forward: on an activation edge, or the logits' own
        taps = next((src.id for src, v in pattern.inputs(op) if v.kind == "activation"), logits_src)
    key, weight = op.id, op.transport_weight
    state = ctx.state_of(ModulesState)
    rec = state.records.setdefault((r, op.scope.module_index, m), {})
    # the step's reported loss: the last module this replica trains here (the model's own
    # classifier when every module trains)
    losses = [o for o in pattern.of_kind(LocalLoss) if replica(o) == r]
    last = max(o.scope.module_index for o in losses)
    reports = op.scope.module_index == last
    # a pipeline rank without the last module reports no loss: its share of the run's is 0
    silent = not any(o.scope.module_index == last and o.scope.rank in (-1, getattr(ctx.world, "rank", 0))
                     for o in losses)
    # micro-batch `phase` of `count` (a pipeline): the step's loss and transport are the
    # share-weighted sums over its micro-batches, recorded (and reported) after the last
    source = pattern.op(batch)
    count = getattr(source, "count", 1) if source.kind in ("micro_batch", "recv") else 1
    micro, final = op.phase, op.phase == count - 1
    sums = state.micro.setdefault((r, m), {})
    lam = None
    if op.multipliers:
        if count > 1:
            raise LoweringError(f"{op.id}: the method of multipliers updates λ from the whole batch's loss; "
                                "it cannot run on micro-batches")
        lambda0, h, _ = op.multipliers
        lam = _lambda(ctx, r, m, lambda0)
        update = op.update_multiplier
    rec["tau" if lam is None else "lambda"] = op.tau if lam is None else lam
    # data parallelism (the batch is this rank's shard): λ follows the global batch's CE (each
    # rank's shard weighted), so that every rank keeps the same λ
    shared_ce = lam is not None and ctx.world.active and source.kind == "shard"
    world = ctx.world

    def record(name: str, value: torch.Tensor, env: Env) -> torch.Tensor:
        """The step's value of `name` so far (its micro-batches' share-weighted sum)."""
        if count == 1:
            return value
        w = env.values[batch][2]
        sums[name] = value * w if micro == 0 else sums[name] + value * w
        return sums[name]

    def loss(env: Env) -> None:
        logits = env.values[logits_src][0] if from_forward else env.values[logits_src]
        ce = fn(logits, env.values[batch][1])  # the run's loss (the seed's CE by default)
        value = ce
        if taps is not None:
            branches = env.values[taps][1]
            cost = sum(b.pow(2).mean() for b in branches) if branches else ce.new_zeros(())
            cost_so_far = record("transport", cost.detach(), env)
            if final:
                rec["transport"] = cost_so_far
            if lam is not None:
                if update and env.clock > 0:
                    with torch.no_grad():
                        seen = ce.detach()
                        if shared_ce:
                            seen = world.all_reduce(seen * env.values[batch][2])
                        lam.add_(h * seen)
                value = lam * ce + cost
            else:
                value = ce + weight * cost
        ce_so_far = record("loss", ce.detach(), env)
        env.values[key] = value
        if silent:
            env.weight = 0.0
        if final:
            rec["loss"] = ce_so_far
            if reports:
                env.losses.append((r, ce_so_far))
    return loss


def _on_ranks(ctx: Lowering) -> bool:
    """Whether the modules' ops are placed on ranks (a module pipeline), in a run of several."""
    return ctx.world.active and any(op.scope.module and op.scope.rank >= 0 for op in ctx.graph.ops())


def _register_metrics(ctx: Lowering) -> None:
    """Each module's latest loss (CE), transport cost and τ (or λ) in the metrics records."""
    state = ctx.state_of(ModulesState)
    if state.metrics_registered:
        return
    state.metrics_registered = True
    records = state.records
    gather = _on_ranks(ctx)

    def metrics() -> dict[str, Any]:
        rows: list[tuple[str, int, str, dict[str, Any]]] = []
        for (r, i, m), rec in records.items():
            if not rec:
                continue  # a module another rank trains
            row = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in rec.items()}
            rows.append((r, i, f"{r}.{m}" if r else m, row))
        if gather:  # a pipeline: every module's row, from the rank that trains it (a collective)
            rows = [row for part in ctx.world.all_gather_object(rows) for row in part]
        out = {name: row for _, _, name, row in sorted(rows, key=lambda row: (row[0], row[1]))}
        return {"modules": out} if out else {}
    ctx.hooks.metrics.append(metrics)
    ctx.hooks.scalars["modules"] = module_scalars


def module_scalars(entry: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The TensorBoard tags of a record's `modules` entry: `modules/MODULE/loss|transport|tau|lambda`."""
    return {f"modules/{module}/{key}": value for module, row in entry.items() for key, value in row.items()}


# ---- module pipelines (mrc/techniques/modules/place.py) ----------------------------------------


@lowers("micro_batch")
def lower_micro_batch(op: MicroBatch, pattern: Pattern, ctx: Lowering) -> StepFn:
    src = next((s.id for s, v in pattern.inputs(op) if v.kind == "batch"), None)
    if src is None:
        raise LoweringError(f"{op.id}: no batch input")
    key = op.id
    cut = BlockCuts(op.count, op.phase, "a batch of {n} cannot be split into {parts} micro-batches")

    def micro_batch(env: Env) -> None:
        x, y = env.values[src][0], env.values[src][1]
        n = len(x)
        a, b = cut(n)
        env.values[key] = (x[a:b], y[a:b], (b - a) / n, n)
    return micro_batch


@lowers("micro_backward")
def lower_micro_backward(op: MicroBackward, pattern: Pattern, ctx: Lowering) -> StepFn:
    if op.method != "autograd":
        raise LoweringError(f"{op.id}: backward by `{op.method}` has no lowering")
    if op.scaled:
        raise LoweringError(f"{op.id}: a loss-scaled backward of micro-batches has no lowering")
    r = replica(op)
    loss = next((s for s, v in pattern.inputs(op) if v.kind == "loss"), None)
    if loss is None:
        raise LoweringError(f"{op.id}: no loss input")
    share = next((s.id for s, v in pattern.inputs(loss) if v.kind == "batch"), None)
    if share is None:
        raise LoweringError(f"{op.id}: its loss reads no micro-batch")
    inputs: list[torch.Tensor] = []
    fresh: list[torch.Tensor] = []
    spans: dict[int, tuple[Any, list[str]]] = {}
    for n in op.wrt:
        params = ctx.replicas.params(ctx.graph, r, n)
        inputs += params
        owner = ctx.owners.get((r, n))
        if owner is not None and owner.kernel in FUSED:
            integ = fused_integrator(owner, ctx)
            spans.setdefault(id(integ), (integ, []))[1].append(n)
        else:
            fresh += params
    inputs = list({id(p): p for p in inputs}.values())
    fresh = list({id(p): p for p in fresh}.values())
    zero = tuple((integ, tuple(ns)) for integ, ns in spans.values())
    first, clip, loss_id = op.phase == 0, op.clip, loss.id

    def backward(env: Env) -> None:
        if first:
            for p in fresh:
                p.grad = None
            for integ, names in zero:
                integ.zero_spans(names)
        w = env.values[share][2]
        torch.autograd.backward(env.values[loss_id] * w, inputs=inputs)
        if clip > 0:
            nn.utils.clip_grad_norm_(inputs, clip)
    return backward


def register_sync(ctx: Lowering) -> None:
    """Before evaluation or saving, broadcast each module's parameters and buffers from the rank
    that trains it (once per lowering; nothing in one process)."""
    state = ctx.state_of(ModulesState)
    if state.sync_registered or not _on_ranks(ctx):
        return
    state.sync_registered = True
    graph, world = ctx.graph, ctx.world
    model = ctx.bound.model
    # each module's rank and partitions, as its placed ops say (the forward that trains it)
    owner: dict[str, int] = {}
    parts: dict[str, set[str]] = {}
    for op in graph.ops():
        if isinstance(op, Forward) and op.scope.module and op.scope.rank >= 0:
            owner.setdefault(op.scope.module, op.scope.rank)
            parts.setdefault(op.scope.module, set()).update(op.partitions_used())
    seen: set[int] = set()
    groups: list[tuple[int, list[torch.Tensor]]] = []  # (owner rank, tensors of one dtype)
    for name, info in graph.table(MODULES).items():
        if name not in owner:
            continue
        tensors: list[torch.Tensor] = []
        for part in graph.partitions:
            if part in parts[name]:
                tensors += ctx.replicas.params(graph, "", part)
        for layer in info.layers:
            tensors += list(model.get_submodule(layer).buffers())
        by_dtype: dict[Any, list[torch.Tensor]] = {}
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                by_dtype.setdefault((t.dtype, t.device), []).append(t)
        groups += [(owner[name], ts) for ts in by_dtype.values()]
    me = world.rank

    def sync() -> None:
        with torch.no_grad():
            for owner, tensors in groups:
                if owner == me:
                    flat = torch.cat([t.reshape(-1) for t in tensors])
                else:
                    flat = torch.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype,
                                       device=tensors[0].device)
                world.broadcast(flat, owner)
                if owner != me:
                    off = 0
                    for t in tensors:
                        t.copy_(flat[off:off + t.numel()].view_as(t))
                        off += t.numel()
            gather_pipeline_state(ctx)
    ctx.hooks.syncs.append(sync)


def gather_pipeline_state(ctx: Lowering) -> None:
    """What a checkpoint written by rank 0 needs of the other ranks: the states of the
    integrators they run (into `ctx.foreign`) and, in a stale pipeline, the last message each
    rank sent (into `ctx.state`, so a resumed receiver trains on it first, as the run would
    have: mrc/techniques/distributed/p2p.py). One all-gather of objects."""
    from mrc.lower.plan import cpu_copy

    me = ctx.world.rank
    states = {repr(k): cpu_copy(v.state_dict()) for k, v in ctx.integrators.items()
              if len(k) > 4 and k[-1] == me}
    outbox = {k: cpu_copy(v) for k, v in ctx.state_of(DistributedState).outbox.items()}
    for r, (theirs, messages) in enumerate(ctx.world.all_gather_object((states, outbox))):
        if r != me:
            ctx.foreign.update(theirs)
        for key, (x, y, total) in messages.items():
            ctx.state[f"{key}.x"] = x.to(ctx.device)
            ctx.state[f"{key}.total"] = torch.tensor(total)
            if y is not None:
                ctx.state[f"{key}.y"] = y.to(ctx.device)
