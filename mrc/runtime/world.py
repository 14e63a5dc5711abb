"""The processes of a run: torch.distributed's process group, as mrc sees it.

A run is one process (`World()`, rank 0 of 1) or several started by `torchrun` (or
`mrc train --nproc N`, which starts torchrun), which sets RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/PORT in each process's environment. The edge reads the first three into the run's
`Target` (mrc/target.py); `join(target)` initialises the default process group it names (gloo
on the CPU, NCCL on CUDA, unless a spec's `distributed … (backend=…)` picks otherwise) with a
timeout, so a rank that waits on a collective no other rank will reach ends with an error
instead of hanging.

Every collective of mrc goes through `World`'s methods, so a one-process run needs no process
group at all and pays nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from mrc.target import Target

DEFAULT_TIMEOUT_S = 300.0
"""How long a rank waits on a collective before giving up (torch.distributed's own default is
30 minutes, too long for a rank that died)."""


class WorldError(RuntimeError):
    """The processes of a run cannot be set up or disagree (a one-line reason)."""


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def active(self) -> bool:
        """More than one process: collectives are real."""
        return self.size > 1

    @property
    def device(self) -> torch.device:
        """Where this world's own small tensors (flags, losses) live: NCCL reduces CUDA tensors
        only, gloo CPU ones."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    @property
    def leader(self) -> bool:
        """Rank 0: the process that writes the run directory, metrics and checkpoints."""
        return self.rank == 0

    # ---- collectives (no-ops in a one-process world) ------------------------------------

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce `tensor` in place over every rank (`sum`, `max` or `min`); returns it."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                                        "min": dist.ReduceOp.MIN}[op])
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.active:
            import torch.distributed as dist

            dist.broadcast(tensor, src)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def agree(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (a stop request, say)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        self.all_reduce(t, "max")
        return bool(t.item())


SOLO = World()


_current = SOLO


def current() -> World:
    """The world this process joined (SOLO before `join`, or in a one-process run)."""
    return _current


def join(target: Target, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the process group of `target` (its world, rank and backend, decided at the edge from
    the launcher's environment; idempotent). A one-process target gives SOLO and starts nothing.
    torch.distributed finds its peers through the launcher's MASTER_ADDR and MASTER_PORT."""
    global _current
    if _current.active:
        return _current
    if target.world == 1:
        return SOLO
    import torch.distributed as dist

    if target.backend == "nccl" and target.device == "cuda":
        torch.cuda.set_device(target.local_rank % max(1, torch.cuda.device_count()))
    if not dist.is_available():
        raise WorldError("this build of torch has no torch.distributed")
    if not dist.is_initialized():
        try:
            dist.init_process_group(target.backend, timeout=timedelta(seconds=timeout_s), rank=target.rank,
                                    world_size=target.world)
        except (RuntimeError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise WorldError(f"rank {target.rank} cannot join the process group ({target.backend}): {first}") from None
    _current = World(target.rank, target.world, target.local_rank, target.backend)
    return _current


def leave(meet: bool = True) -> None:
    """Tear the process group down (end of a run). `meet`: every rank got here without an
    error, so they meet at a barrier first — no rank destroys its group while another still
    talks to it (gloo aborts a process whose peer vanished mid-operation). After an error the
    others may never arrive, so the group is torn down at once (`meet=False`, also for ranks
    that met already)."""
    global _current
    if _current.active:
        import torch.distributed as dist

        if dist.is_initialized():
            if meet:
                dist.barrier()
            dist.destroy_process_group()
    _current = SOLO


def use(world: World) -> World:
    """Set the current world (tests that run ranks as threads or spawned processes)."""
    global _current
    previous, _current = _current, world
    return previous
