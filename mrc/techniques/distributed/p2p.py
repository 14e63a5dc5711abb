"""Point-to-point messages between ranks: `send` and `recv`, and their lowerings over
torch.distributed's isend / recv (gloo on the CPU, NCCL on GPUs).

A module pipeline (mrc/techniques/modules/pipeline.py) cuts a detached edge that crosses ranks
into a `send` on the producer's rank and a `recv` on the consumer's. A message is a small header
(the payload's dtype and shape, the rows of the whole batch it is a part of, the targets' dtype
or none), the activation, and — in a stale pipeline — the targets it goes with. Messages between
two ranks keep their order (one tag per phase, i.e. per micro-batch), so a recv needs no name
for what it waits for: the n-th message of its phase.

`recv` in sync mode waits for this step's message. In stale mode (the seed's batch buffers) the
rank trains on the last message its predecessor finished without waiting for this step's: at
step t it holds the message of step t−1, except on the first step this process runs (step 0, or
the first after a resume), which waits for that step's own message to fill the buffer — so the
first two steps train on the same message. A send never waits for its receiver's computation:
it is non-blocking, and only waits (at its next call) for its previous message to have been
taken, so a rank runs at most one message ahead of its successor. A stale send skips the run's
last step (`Lowering.total_steps`), whose message no step would train on; a run stopped early
leaves its last message untaken (harmless at the end of a process).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from mrc.ir.ops import GraphError, Op, op_kind
from mrc.lower.plan import Env, Lowering, LoweringError, StepFn, lowers

if TYPE_CHECKING:
    from mrc.ir.graph import Pattern


@op_kind
@dataclass(frozen=True, slots=True)
class Send(Op):
    """Send the output of the forward on this op's activation edge, detached, to rank `to` (this
    op runs on its scope's rank). `labels`: the targets of the rows on its batch edge travel with
    it (a stale pipeline, whose receiver trains on an earlier batch than the one it draws).
    `stale`: the receiver trains on it at the next step, so the run's last step sends nothing."""

    kind: ClassVar[str] = "send"
    rank: ClassVar[int] = 1
    to: int = 0
    labels: bool = False
    stale: bool = False
    phase: int = 0

    def text(self) -> str:
        return (f"send detached to rank {self.to}" + (" with its targets" if self.labels else "")
                + (", for its next step" if self.stale else ""))

    def verify(self, pattern: Pattern) -> None:
        ins = {v.kind for _, v in pattern.inputs(self)}
        if "activation" not in ins:
            raise GraphError(f"{self.id}: a send needs the activation it sends as input")
        if self.labels and "batch" not in ins:
            raise GraphError(f"{self.id}: a send with targets needs the batch they come from")
        if self.scope.rank < 0 or self.to == self.scope.rank:
            raise GraphError(f"{self.id}: sends from rank {self.scope.rank} to rank {self.to}")


@op_kind
@dataclass(frozen=True, slots=True)
class Recv(Op):
    """Receive what rank `source` sends (its `send` of the same phase) as this rank's module input:
    the activation (to read as `detached`), with `labels` its targets, and its rows' share of
    their batch (micro-batch `phase` of `count`). `stale`: hold the previous step's message
    instead of waiting for this step's (see the module docstring for the first steps)."""

    kind: ClassVar[str] = "recv"
    rank: ClassVar[int] = 1
    source: int = 0
    stale: bool = False
    labels: bool = False
    count: int = 1
    phase: int = 0

    def text(self) -> str:
        micro = f" micro-batch {self.phase + 1}/{self.count}" if self.count > 1 else ""
        if self.stale:
            return (f"recv{micro} from rank {self.source}, stale: the message of step t−1 "
                    f"(step 0 waits for its own){' with its targets' if self.labels else ''}")
        return f"recv{micro} from rank {self.source}" + (" with its targets" if self.labels else "")

    def verify(self, pattern: Pattern) -> None:
        if self.scope.rank < 0 or self.source == self.scope.rank:
            raise GraphError(f"{self.id}: receives on rank {self.scope.rank} from rank {self.source}")
        if not 0 <= self.phase < self.count:
            raise GraphError(f"{self.id}: micro-batch {self.phase} of {self.count}")


# ---- the message -----------------------------------------------------------------------------

DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                   torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
MAX_DIMS = 8
HEADER = 4 + MAX_DIMS
"""[payload dtype, ndim, total rows of the batch, targets dtype (−1: none), shape (padded)]."""


def rows_of(value: tuple[Any, ...]) -> tuple[float, int]:
    """(share, total rows) of a batch-like value: a batch (x, y) is all of itself; a micro-batch
    or a received message (x, y, share, total) says."""
    if len(value) >= 4:
        return float(value[2]), int(value[3])
    return 1.0, len(value[1])


def _header(x: torch.Tensor, total: int, labels: torch.Tensor | None) -> torch.Tensor:
    if x.dim() > MAX_DIMS:
        raise LoweringError(f"a message of {x.dim()} dimensions (at most {MAX_DIMS})")
    h = [DTYPES.index(x.dtype), x.dim(), total, -1 if labels is None else DTYPES.index(labels.dtype)]
    h += list(x.shape) + [0] * (MAX_DIMS - x.dim())
    return torch.tensor(h, dtype=torch.int64, device=x.device)


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
        parts = [_header(x, total, y), x] + ([y] if y is not None else [])
        for t in parts:
            pending.extend((dist.isend(t, to, tag=tag), t))
    return send


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

    def recv_stale(env: Env) -> None:
        # call 0 waits for this step's message (the buffer's first fill); call 1 trains on it
        # again (it is the previous step's message now); call n ≥ 2 takes message n − 1
        if calls[0] != 1:
            held[:] = [receive()]
        calls[0] = min(calls[0] + 1, 2)
        env.values[key] = held[0]
    return recv_stale


__all__ = ["Recv", "Send", "rows_of"]
