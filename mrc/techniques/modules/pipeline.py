"""Module pipelines: module-wise training's modules on ranks (`distributed pipeline(…)`).

The parallel regime trains every module on every batch from its own local loss, module k
reading module k−1's *detached* output: no gradient crosses a module boundary, so the modules
can run on different processes and only activations travel forward. The `pipeline` placer
(registered here, called by the `distribute` pass) puts every op of module k on the rank that
holds it (`PlacementInfo.ranks`: contiguous blocks of modules), and cuts each detached edge that
crosses ranks into a `send` on the producer's rank and a `recv` on the consumer's
(mrc/techniques/distributed/p2p.py). The batch runs on every rank (every rank has the data, so
the targets are local).

`buffers=sync` with `micro_batches=M`: the batch is split into M contiguous micro-batches (a
`micro_batch` op each, as even as can be); the ops of micro-batch j (forward, auxiliary head,
local loss, backward) run in phase j of the step, so micro-batch j+1 enters a rank while its
successor works on micro-batch j. Each module's backward of micro-batch j weights its loss by
the micro-batch's share of the batch, n_j/N, and adds to the gradients of the micro-batches
before it (`micro_backward`; the first starts them afresh, the last clips): the sum is the
gradient of the batch's mean loss, and the module updates once per step. With M = 1 the ranks
run exactly the one-process parallel regime's ops; with M > 1 the result equals it for models
without batch norm (batch norm normalises by each micro-batch's statistics, and its running
statistics move M times per step), up to rounding.

`buffers=stale` (the seed's batch buffers, Belilovsky et al.'s decoupled greedy learning): a
rank does not wait for its predecessor's output of this step; the first module of rank r trains
at step t on the detached output (and the targets) its predecessor on rank r−1 produced at step
t−1 — its predecessor's last output. The staleness is one step per rank boundary, so rank r at
step t ≥ r trains on batch t−r; modules on one rank pass their outputs on within the step. The
first step a process runs (step 0, or the first after a resume) waits for its predecessor's
output of that step to fill the buffer, so step 0 is synchronous and step 1 trains on step 0's
message again: rank r at step t trains on the message its predecessor made at step max(t−1, 0).
After step 0 the ranks run concurrently, a rank at most one step ahead of its successor.

The step's reported loss is the last module's (as in one process); with micro-batches it is the
share-weighted sum over the micro-batches (the batch's mean loss). Ranks that do not hold the last
module report none and set `Env.weight = 0`, so the run's Σ weight·loss / Σ weight is the last
rank's loss. Each module's metrics (`modules` in the metrics records) are kept by the rank that
trains it: a rank's records list its own modules only. Every rank holds the whole model; before
evaluation or saving (`Plan.synchronize`) each module's parameters and buffers are broadcast
from the rank that trains it, so every rank's copy is the trained model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mrc.ir.graph import Pattern, PlacementInfo, ScheduleGraph
from mrc.ir.ops import Backward, GraphError, Op, Value, op_kind
from mrc.lower.plan import Env, Lowering, LoweringError, StepFn, lowers
from mrc.techniques.core.lower import FUSED, fused_integrator, replica
from mrc.techniques.distributed.bind import blocks
from mrc.techniques.distributed.expand import placer
from mrc.techniques.distributed.p2p import Recv, Send


@op_kind
@dataclass(frozen=True, slots=True)
class MicroBatch(Op):
    """Micro-batch `phase` of `count` of the batch on its input edge: its contiguous rows (the
    first micro-batches one row longer where the batch does not divide) with their share of the
    batch. The ops of micro-batch j run in phase j of the step."""

    kind: ClassVar[str] = "micro_batch"
    rank: ClassVar[int] = 1
    pure: ClassVar[bool] = True
    count: int = 1
    phase: int = 0

    def text(self) -> str:
        return f"micro_batch {self.phase + 1}/{self.count}"

    def verify(self, pattern: Pattern) -> None:
        if not any(v.kind == "batch" for _, v in pattern.inputs(self)):
            raise GraphError(f"{self.id}: a micro-batch needs the batch as input")
        if not 0 <= self.phase < self.count:
            raise GraphError(f"{self.id}: micro-batch {self.phase} of {self.count}")


@op_kind
@dataclass(frozen=True, slots=True)
class MicroBackward(Backward):
    """The gradients of `wrt` from micro-batch `phase` of `count`: the loss on its input edge
    weighted by the micro-batch's share of the batch, added to the gradients of the step's
    micro-batches before it (micro-batch 0 starts them afresh). `clip` (on the last micro-batch
    only) clips the sum."""

    kind: ClassVar[str] = "micro_backward"
    count: int = 1

    def text(self) -> str:
        clip = f" clip={self.clip:g}" if self.clip else ""
        how = "fresh" if self.phase == 0 else "accumulated"
        return (f"backward wrt {{{', '.join(self.wrt)}}} × share of micro-batch {self.phase + 1}/{self.count}"
                f" ({how}){clip}")


PER_MICRO = ("forward", "aux_head", "local_loss", "backward")
"""The kinds of a module's ops that run once per micro-batch (the rest run once per step)."""


@placer("pipeline")
def place_pipeline(graph: ScheduleGraph) -> ScheduleGraph:
    """Modules on ranks; see the module docstring."""
    placement = graph.placement
    assert placement is not None
    if len(graph.stages) != 1 or graph.laps != 1:
        raise GraphError("a module pipeline runs the parallel regime (one stage)")
    out = graph.copy()
    for stage in out.stages:
        stage.patterns = [pipeline_pattern(p, placement) for p in stage.patterns]
    out.reindex()
    return out


def pipeline_pattern(p: Pattern, placement: PlacementInfo) -> Pattern:
    """One step pattern of the parallel regime placed as a pipeline (see the module docstring)."""
    m = placement.micro_batches
    stale = placement.buffers == "stale"
    rank_of = dict(placement.ranks)
    new = Pattern(p.steps)

    def rank(op: Op) -> int:
        return rank_of[op.scope.module] if op.scope.module else -1

    batches = [op for op in p.ops() if op.kind == "batch"]
    if len(batches) != 1:
        raise GraphError(f"a module pipeline needs one batch per step, not {len(batches)}")
    copies: dict[str, list[Op]] = {}
    micro: list[Op] = []  # the batch each micro-batch's ops read (per phase)
    for op in p.ops():
        if op.kind == "batch":
            b = new.add(op)
            copies[op.id] = [b]
            micro = [b] if m == 1 else [new.add(MicroBatch(op.scope, m, j), [(b, Value("batch"))])
                                        for j in range(m)]
        elif not op.scope.module:
            raise GraphError(f"{op.id}: an op outside every module cannot be placed on a pipeline rank")
        elif op.kind in PER_MICRO:
            copies[op.id] = [new.add(_micro_copy(op, j, m, rank(op))) for j in range(m)]
        else:
            copies[op.id] = [new.add(dataclasses.replace(op, scope=dataclasses.replace(op.scope, rank=rank(op))))]

    # the rank boundaries: each detached edge across ranks becomes a send and a recv per phase
    recvs: dict[int, list[Op]] = {}  # rank → its recv of each phase
    sends: list[tuple[Op, int]] = []  # (producer forward, phase) of each send, to give it targets
    crossing = [(a, b) for a, b, d in p.g.edges(data=True)
                if d["value"].kind == "detached" and rank(p.op(a)) != rank(p.op(b))]
    for a, b in crossing:
        src, dst = p.op(a), p.op(b)
        ra, rb = rank(src), rank(dst)
        if rb in recvs or rb != ra + 1:
            raise GraphError(f"{b}: rank {rb} would receive from rank {ra} (ranks hold contiguous modules)")
        recvs[rb] = []
        for j in range(m):
            send = new.add(Send(copies[a][j].scope, rb, stale, stale, j), [(copies[a][j], Value("activation"))])
            sends.append((send, ra))
            recv = new.add(Recv(copies[b][j].scope, ra, stale, stale, m, j),
                           [] if stale else [(send, Value("detached"))])
            recvs[rb].append(recv)
            new.connect(recv, copies[b][j], Value("detached"))

    def source(r: int, j: int) -> Op:
        """Where rank r's ops of phase j take their batch (their targets) from."""
        return recvs[r][j] if stale and r > 0 else micro[j]

    if stale:
        for send, r in sends:
            new.connect(source(r, send.phase), send, Value("batch"))
    for a, b, d in p.g.edges(data=True):
        value: Value = d["value"]
        src, dst = p.op(a), p.op(b)
        ra, rb = rank(src), rank(dst)
        if ra >= 0 and rb >= 0 and ra != rb:
            if value.kind in ("detached", "order"):
                continue  # a message (above), or an order between processes (nothing to order)
            raise GraphError(f"{a} → {b}: a {value.kind} edge between ranks {ra} and {rb}")
        if src.kind == "batch":
            for j, op in enumerate(copies[b]):
                new.connect(source(rb, j) if len(copies[b]) == m else copies[a][0], op, value)
            continue
        ca, cb = copies[a], copies[b]
        if len(ca) == len(cb):
            for x, y in zip(ca, cb, strict=True):
                new.connect(x, y, value)
        else:  # once-per-step ops read the last micro-batch (a backward's gradients: the sum)
            new.connect(ca[-1], cb[0], value)
    if m > 1:  # a module's micro-batch j starts after its micro-batch j−1's backward
        for op in p.ops():
            if op.kind == "forward" and op.scope.module:
                back = next((c for c in p.ops() if c.kind == "backward" and c.scope.module == op.scope.module), None)
                if back is not None:
                    for j in range(1, m):
                        new.connect(copies[back.id][j - 1], copies[op.id][j])
    return new


def _micro_copy(op: Op, j: int, m: int, rank: int) -> Op:
    scope = dataclasses.replace(op.scope, rank=rank)
    if isinstance(op, Backward) and m > 1:
        return MicroBackward(scope, op.wrt, op.method, op.clip if j == m - 1 else 0.0, j, m)
    return dataclasses.replace(op, scope=scope, phase=j)


# ---- lowerings ---------------------------------------------------------------------------------


@lowers("micro_batch")
def lower_micro_batch(op: MicroBatch, pattern: Pattern, ctx: Lowering) -> StepFn:
    src = next((s.id for s, v in pattern.inputs(op) if v.kind == "batch"), None)
    if src is None:
        raise LoweringError(f"{op.id}: no batch input")
    key, j, m = op.id, op.phase, op.count
    cuts: dict[int, tuple[int, int]] = {}

    def micro_batch(env: Env) -> None:
        x, y = env.values[src][0], env.values[src][1]
        n = len(x)
        cut = cuts.get(n)
        if cut is None:
            if n < m:
                raise LoweringError(f"a batch of {n} cannot be split into {m} micro-batches")
            cut = cuts[n] = blocks(n, m)[j]
        a, b = cut
        env.values[key] = (x[a:b], y[a:b], (b - a) / n, n)
    return micro_batch


@lowers("micro_backward")
def lower_micro_backward(op: MicroBackward, pattern: Pattern, ctx: Lowering) -> StepFn:
    if op.method != "autograd":
        raise LoweringError(f"{op.id}: backward by `{op.method}` has no lowering")
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


# ---- the model whole on every rank -------------------------------------------------------------


def register_sync(ctx: Lowering) -> None:
    """Before evaluation or saving, broadcast each module's parameters and buffers from the rank
    that trains it (once per lowering; nothing in one process)."""
    placement = ctx.graph.placement
    if placement is None or placement.mode != "pipeline" or not ctx.world.active or ctx.cache.get("pipeline.sync"):
        return
    ctx.cache["pipeline.sync"] = True
    graph, world = ctx.graph, ctx.world
    model = ctx.bound.model
    seen: set[int] = set()
    groups: list[tuple[int, list[torch.Tensor]]] = []  # (owner rank, tensors of one dtype)
    for name, info in graph.modules.items():
        owner = placement.rank_of(name)
        tensors: list[torch.Tensor] = []
        for part in graph.partitions:
            if part.rpartition("@")[2] == name:
                tensors += ctx.replicas.params(graph, "", part)
        for layer in info.layers:
            tensors += list(model.get_submodule(layer).buffers())
        by_dtype: dict[Any, list[torch.Tensor]] = {}
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                by_dtype.setdefault((t.dtype, t.device), []).append(t)
        groups += [(owner, ts) for ts in by_dtype.values()]
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
    ctx.syncs.append(sync)


__all__ = ["MicroBackward", "MicroBatch", "Recv", "Send", "place_pipeline", "register_sync"]
