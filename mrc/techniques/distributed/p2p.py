"""Point-to-point messages between ranks: the op kinds `send` and `recv`. Their lowerings
(mrc/techniques/distributed/lower.py) run torch.distributed's isend / recv (gloo on the CPU, NCCL
on GPUs) on the message of mrc/techniques/distributed/messages.py.

A module pipeline (mrc/techniques/modules/place.py) cuts a detached edge that crosses ranks
into a `send` on the producer's rank and a `recv` on the consumer's. Messages between
two ranks keep their order (one tag per phase, i.e. per micro-batch), so a recv needs no name
for what it waits for: the n-th message of its phase.

`recv` in sync mode waits for this step's message. In stale mode (the seed's batch buffers) the
rank trains on the last message its predecessor finished without waiting for this step's: at
step t it holds the message of step t−1, except on step 0, which waits for that step's own
message to fill the buffer — so the first two steps train on the same message. The last message
each rank sent is part of the run's state (gathered into rank 0's checkpoint by the pipeline's
sync), so a resumed receiver starts from the message the run would have trained on: resume is
exact. A send never waits for its receiver's computation:
it is non-blocking, and only waits (at its next call) for its previous message to have been
taken, so a rank runs at most one message ahead of its successor. A stale send skips the run's
last step (`Lowering.total_steps`), whose message no step would train on; a run stopped early
leaves its last message untaken (harmless at the end of a process).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from mrc.ir.ops import GraphError, Op, op_kind

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


__all__ = ["Recv", "Send"]
