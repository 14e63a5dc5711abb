"""Lowerings of `shard`, `all_reduce`, `send` and `recv` onto the run's world (mrc.runtime.world).

A shard is a slice of the batch (no copy). An all-reduce runs over flat buckets prepared once:
partitions of a fused rule already keep their gradients in one flat buffer (mrc/runtime/fused.py),
so each contiguous run of their spans is reduced in place, with no copy; the gradients of the
other partitions are packed into one flat buffer made once, reduced, and unpacked. Before a
`mean` each rank scales its bucket by its shard's share of the batch (n_r / N), so unequal
shards (the last batch of an epoch) still give the global batch's gradient. A send and a recv
exchange the messages of mrc/techniques/distributed/p2p.py (its docstring says when a stale recv
waits) point to point, through torch.distributed directly: they are not collectives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mrc.ir.graph import Pattern
from mrc.lower.plan import Env, Lowering, LoweringError, StepFn, lowers
from mrc.techniques.core.lower import FUSED, fused_integrator, replica
from mrc.techniques.distributed.bind import blocks
from mrc.techniques.distributed.buckets import GradBucket
from mrc.techniques.distributed.messages import DTYPES, HEADER, header, rows_of
from mrc.techniques.distributed.ops import AllReduce, Shard
from mrc.techniques.distributed.p2p import Recv, Send


@dataclass
class DistributedState:
    """What the distributed lowerings share: whether rank 0's buffers are synced before reading
    (set once), this rank's share of the batch (the shard's, read by global batch norm), how
    many batch norms were made global, and a stale pipeline's last message sent to each peer (by message
    key: part of the run's state, gathered into checkpoints)."""

    buffers_synced: bool = False
    share: list[float] = field(default_factory=lambda: [1.0])
    batchnorm: int = 0
    outbox: dict[str, Any] = field(default_factory=dict)


class BlockCuts:
    """Block `index` of `parts` (`blocks`) of a batch of n rows, remembered per n: a rank's
    shard, or a micro-batch. A batch with fewer rows than parts is a LoweringError `too_small`
    names (formatted with n and parts)."""

    def __init__(self, parts: int, index: int, too_small: str) -> None:
        self.parts, self.index, self.too_small = parts, index, too_small
        self._cuts: dict[int, tuple[int, int]] = {}

    def __call__(self, n: int) -> tuple[int, int]:
        cut = self._cuts.get(n)
        if cut is None:
            if n < self.parts:
                raise LoweringError(self.too_small.format(n=n, parts=self.parts))
            cut = self._cuts[n] = blocks(n, self.parts)[self.index]
        return cut


@lowers("shard")
def lower_shard(op: Shard, pattern: Pattern, ctx: Lowering) -> StepFn:
    src = next((s.id for s, v in pattern.inputs(op) if v.kind == "batch"), None)
    if src is None:
        raise LoweringError(f"{op.id}: no batch input")
    if op.world != ctx.world.size:
        raise LoweringError(f"{op.id}: sharded for {op.world} ranks, the run has {ctx.world.size}")
    key = op.id
    cut = BlockCuts(op.world, ctx.world.rank, "a batch of {n} cannot be split across {parts} processes")
    state = ctx.state_of(DistributedState)
    if not state.buffers_synced:  # buffers: rank 0's, as DDP keeps them
        state.buffers_synced = True
        ctx.hooks.syncs.append(lambda: _broadcast_buffers(ctx))
    share = state.share
    if op.batchnorm == "global" and ctx.world.active and not state.batchnorm:
        from mrc.techniques.distributed.batchnorm import globalise

        state.batchnorm = globalise(ctx.replicas.checkpointed(), ctx.world, share)

    def shard(env: Env) -> None:
        x, y = env.values[src][0], env.values[src][1]
        n = len(x)
        a, b = cut(n)
        env.values[key] = (x[a:b], y[a:b], (b - a) / n)
        env.weight = share[0] = (b - a) / n
    return shard


def _broadcast_buffers(ctx: Lowering) -> None:
    """Every rank takes rank 0's buffers (running statistics differ per shard), so evaluation
    and checkpoints agree across the ranks."""
    for module in ctx.replicas.checkpointed():
        for b in module.buffers():
            ctx.world.broadcast(b.data)


def _shard_of(pattern: Pattern, op: AllReduce) -> str | None:
    """The shard whose share scales this reduce (the one of its scope's batch)."""
    found = [a for a in pattern.ancestors(op) if isinstance(a, Shard)]
    same = [a for a in found if a.scope.replica == op.scope.replica] or found
    return same[0].id if same else None


@lowers("all_reduce")
def lower_all_reduce(op: AllReduce, pattern: Pattern, ctx: Lowering) -> StepFn | None:
    world = ctx.world
    if not world.active:
        return None  # one process: nothing to reduce
    r = replica(op)
    graph = ctx.graph
    spans: dict[int, tuple[Any, list[tuple[int, int]]]] = {}
    loose: list[torch.Tensor] = []
    for n in op.grads:
        owner = ctx.owners.get((r, n))
        if owner is not None and owner.kernel in FUSED and not graph.partitions[n].partial:
            integ = fused_integrator(owner, ctx)
            spans.setdefault(id(integ), (integ, []))[1].append(integ.spans[n])
        else:
            loose += ctx.replicas.params(graph, r, n)
    loose = list({id(p): p for p in loose}.values())
    runs: list[tuple[Any, int, int]] = []  # (integrator, a, b): contiguous spans merged
    for integ, ss in spans.values():
        ss.sort()
        a, b = ss[0]
        for c, d in ss[1:]:
            if c == b:
                b = d
            else:
                runs.append((integ, a, b))
                a, b = c, d
        runs.append((integ, a, b))
    bucket = GradBucket(loose)
    shard = _shard_of(pattern, op) if op.how == "mean" else None
    if op.how == "mean" and shard is None:
        raise LoweringError(f"{op.id}: a mean over ranks needs the shard of the batch before it")

    clip = op.clip
    clipped = [p for n in op.grads for p in ctx.replicas.params(graph, r, n)] if clip else []
    clipped = list({id(p): p for p in clipped}.values())

    def all_reduce(env: Env) -> None:
        w = env.values[shard][2] if shard is not None else 1.0
        for integ, a, b in runs:
            g = integ.flat.grad()[a:b]
            if w != 1.0:
                g.mul_(w)
            world.all_reduce(g)
        bucket.all_reduce(world, w, fill=False)  # every rank's forward uses the same tensors
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(clipped, clip)
    return all_reduce


# ---- point-to-point messages (mrc/techniques/distributed/p2p.py) ----------------------------------


@lowers("send")
def lower_send(op: Send, pattern: Pattern, ctx: Lowering) -> StepFn:
    world = ctx.world
    if not world.active:
        raise LoweringError(f"{op.id}: a send needs a run of several processes")
    import torch.distributed as dist

    act = next((s.id for s, v in pattern.inputs(op) if v.kind == "activation"), None)
    batch = next((s.id for s, v in pattern.inputs(op) if v.kind == "batch"), None)
    if act is None or (op.labels and batch is None):
        raise LoweringError(f"{op.id}: no activation (or batch) input")
    to, tag, labels = op.to, op.phase, op.labels
    # a stale pipeline's last message is part of the run's state (a resumed receiver trains on it)
    outbox = ctx.state_of(DistributedState).outbox if op.stale else None
    box = message_key(world.rank, to, tag)
    # a stale receiver trains on this step's message at the next step: the run's last step has none
    last = ctx.total_steps - 1 if op.stale else -1
    pending: list[Any] = []  # the previous message's works, and the tensors they send

    def send(env: Env) -> None:
        for work in pending[::2]:
            work.wait()
        pending.clear()
        if env.t == last:
            return
        value = env.values[act]
        x = (value[0] if isinstance(value, tuple) else value).detach().contiguous()
        y = None
        total = len(x)
        if labels:
            src = env.values[batch]
            y = src[1].contiguous()
            total = rows_of(src)[1]
        parts = [header(x, total, y), x] + ([y] if y is not None else [])
        for t in parts:
            pending.extend((dist.isend(t, to, tag=tag), t))
        if outbox is not None:
            outbox[box] = (x, y, total)
    return send


def message_key(source: int, to: int, phase: int) -> str:
    """Where a stale pipeline's last message from `source` to `to` (of one phase) is kept in
    the plan's state."""
    return f"pipeline.message.{source}>{to}.p{phase}"


@lowers("recv")
def lower_recv(op: Recv, pattern: Pattern, ctx: Lowering) -> StepFn:
    world = ctx.world
    if not world.active:
        raise LoweringError(f"{op.id}: a recv needs a run of several processes")
    import torch.distributed as dist

    key, source, tag, device = op.id, op.source, op.phase, ctx.device

    def receive() -> tuple[Any, ...]:
        h = torch.empty(HEADER, dtype=torch.int64, device=device)
        dist.recv(h, source, tag=tag)
        code, ndim, total, ycode, *dims = h.tolist()
        x = torch.empty(dims[:ndim], dtype=DTYPES[code], device=device)
        dist.recv(x, source, tag=tag)
        y = None
        if ycode >= 0:
            y = torch.empty(len(x), dtype=DTYPES[ycode], device=device)
            dist.recv(y, source, tag=tag)
        return (x, y, len(x) / total, total)

    if not op.stale:
        def recv(env: Env) -> None:
            env.values[key] = receive()
        return recv

    calls = [0]
    held: list[tuple[Any, ...]] = []
    box = message_key(source, world.rank, tag)

    def recv_stale(env: Env) -> None:
        if calls[0] == 0 and f"{box}.x" in ctx.state:
            # a resumed run: the buffer holds the message the predecessor sent last before the
            # checkpoint (it trains on that now, and takes this step's message at the next)
            x = ctx.state[f"{box}.x"]
            total = int(ctx.state[f"{box}.total"])
            held[:] = [(x, ctx.state.get(f"{box}.y"), len(x) / total, total)]
            calls[0] = 1
        # call 0 waits for this step's message (the buffer's first fill); call 1 trains on it
        # again (it is the previous step's message now); call n ≥ 2 takes message n − 1
        if calls[0] != 1:
            held[:] = [receive()]
        calls[0] = min(calls[0] + 1, 2)
        env.values[key] = held[0]
    return recv_stale
