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
t−1 — its predecessor's last output; modules on one rank pass their outputs on within the step.
Step 0 waits for its predecessor's output of that step to fill the buffer (a resumed run
starts from the buffer its checkpoint holds), so step 0 is synchronous and step 1 trains on step 0's
message again: rank r at step t trains on the message its predecessor made at step max(t−1, 0),
which carries batch max(t−r, 0) (the staleness is one step per rank boundary). After step 0 the
ranks run concurrently, a rank at most one step ahead of its successor.

The step's reported loss is the last module's (as in one process); with micro-batches it is the
share-weighted sum over the micro-batches (the batch's mean loss). Ranks that do not hold the last
module report none and set `Env.weight = 0`, so the run's Σ weight·loss / Σ weight is the last
rank's loss. Each module's metrics (`modules` in the metrics records) are kept by the rank that
trains it and gathered from every rank at each log (one all-gather of objects). Every rank holds the whole model; before
evaluation or saving (`Plan.synchronize`) each module's parameters and buffers are broadcast
from the rank that trains it, so every rank's copy is the trained model.
"""

from __future__ import annotations

import dataclasses

from mrc.ir.graph import Pattern, ScheduleGraph
from mrc.ir.ops import Backward, GraphError, Op, Value
from mrc.techniques.distributed.expand import scoped
from mrc.techniques.distributed.p2p import Recv, Send
from mrc.techniques.distributed.tables import PLACEMENT, PlacementInfo
from mrc.techniques.modules.ops import MicroBackward, MicroBatch

PER_MICRO = ("forward", "aux_head", "local_loss", "backward")
"""The kinds of a module's ops that run once per micro-batch (the rest run once per step)."""


def place_pipeline(graph: ScheduleGraph) -> ScheduleGraph:
    """Modules on ranks; see the module docstring."""
    placement = graph.table(PLACEMENT)
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
            copies[op.id] = [new.add(scoped(op, rank(op)))]

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
        backward_of: dict[str, Op] = {}
        for op in p.ops():
            if op.kind == "backward" and op.scope.module:
                backward_of.setdefault(op.scope.module, op)
        for op in p.ops():
            if op.kind == "forward" and op.scope.module:
                back = backward_of.get(op.scope.module)
                if back is not None:
                    for j in range(1, m):
                        new.connect(copies[back.id][j - 1], copies[op.id][j])
    return new


def _micro_copy(op: Op, j: int, m: int, rank: int) -> Op:
    scope = dataclasses.replace(op.scope, rank=rank)
    if isinstance(op, Backward) and m > 1:
        return MicroBackward(scope, op.wrt, op.method, op.clip if j == m - 1 else 0.0, j, count=m)
    return dataclasses.replace(op, scope=scope, phase=j)


__all__ = ["PER_MICRO", "pipeline_pattern", "place_pipeline"]
