"""The machine a spec is compiled for: one `Target` record, decided once at the edge.

The command line (mrc/cli.py, mrc/launch.py) and the Python API (`mrc.api.compile_spec`) make
the Target from what the user asked (the spec's `train(device, precision)`, its `distributed …
(backend=…)`, `--nproc`), what the launcher said (torchrun's WORLD_SIZE, RANK and LOCAL_RANK) and
what this machine has (a CUDA device, Triton). Compilation takes it as it is: the schedule graph
carries it, select-kernels picks every kernel from it, and the runtime joins the process group it
names. Nothing below the edge reads the environment or asks torch what the machine has.

Importing this module imports no torch (`mrc check` of a spec with errors stays torch-free);
`detect` asks torch for CUDA when it runs.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass

DEVICES = ("cpu", "cuda")
BACKENDS = ("gloo", "nccl")


class TargetError(RuntimeError):
    """The launcher's environment does not describe a run (a one-line reason)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how a compiled spec runs.

    device: `cpu` or `cuda` (`auto` is resolved at the edge). precision: `32`, `bf16` or
    `16-mixed` (`train(precision)`). triton: Triton kernels can run here (Triton is installed,
    and a CUDA device is present or `TRITON_INTERPRET=1` runs them on the CPU, as the tests do).
    world: the processes the run is placed on; rank and local_rank: this process's place among
    them (0 when the schedule is compiled outside a launcher, e.g. `mrc graph --nproc 2`).
    backend: torch.distributed's backend for a run of several processes (`gloo` or `nccl`)."""

    device: str = "cpu"
    precision: str = "32"
    triton: bool = False
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str = "gloo"

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"a target's device is one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"a target's backend is one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not one of a world of {self.world}")

    @property
    def leader(self) -> bool:
        """Rank 0: the process that writes the run directory and speaks."""
        return self.rank == 0


def launcher_place(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(world, rank, local rank) as a launcher (torchrun, `mrc train --nproc`) set them in the
    environment; None in a process no launcher started (WORLD_SIZE unset or 1). The one place
    mrc reads WORLD_SIZE, RANK and LOCAL_RANK."""
    env = os.environ if environ is None else environ
    text = env.get("WORLD_SIZE", "1") or "1"
    try:
        world = int(text)
    except ValueError:
        raise TargetError(f"WORLD_SIZE={text!r} is not a number") from None
    if world <= 1:
        return None
    try:
        rank = int(env["RANK"])
        local = int(env.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise TargetError("WORLD_SIZE is set but RANK is not: start the processes with torchrun") from None
    if not 0 <= rank < world:
        raise TargetError(f"RANK={rank} is not one of WORLD_SIZE={world} ranks")
    return world, rank, local


def _interpreting(env: Mapping[str, str]) -> bool:
    return env.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def detect(device: str = "auto", precision: str = "32", backend: str = "auto", world: int | None = None,
           environ: Mapping[str, str] | None = None) -> Target:
    """The Target of this process: `device` (`auto`: CUDA when one is present), `precision`
    and `backend` (`auto`: NCCL on CUDA, else gloo) as asked, the world and rank from the
    launcher (`world` places the schedule on that many processes instead, as `--nproc` does),
    and whether Triton runs here."""
    import torch

    env = os.environ if environ is None else environ
    cuda = torch.cuda.is_available()
    where = "cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu"
    triton = importlib.util.find_spec("triton") is not None and (cuda or _interpreting(env))
    placed = launcher_place(env)
    size, rank, local = placed if placed is not None else (1, 0, 0)
    if world is not None and world != size:
        size, rank, local = world, rank if rank < world else 0, local
    if backend == "auto":
        backend = "nccl" if where == "cuda" and cuda else "gloo"
    return Target(where, precision, triton, size, rank, local, backend)
