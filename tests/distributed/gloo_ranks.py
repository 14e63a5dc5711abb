"""Run a function on W gloo processes (the tests of multi-process training).

`run_ranks(fn, world, *args)` starts `world` processes with the `spawn` method (a fork of a
pytest process that already ran torch could deadlock), gives each the environment torchrun would
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), joins the process group through
`mrc.runtime.world.join`, calls `fn(*args)` and returns every rank's result in rank order. `fn`
must be importable (a module-level function). A rank that raises fails the call with its
traceback; a run that takes longer than `timeout` seconds is killed and fails.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(index: int, fn: Callable[..., Any], world: int, port: int, args: tuple[Any, ...], out: str,
           timeout: float) -> None:
    os.environ.update(RANK=str(index), LOCAL_RANK=str(index), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    from mrc.runtime import world as worlds
    from mrc.target import detect

    worlds.join(detect("cpu", backend="gloo"), timeout_s=timeout)  # this rank's Target, as the CLI makes it
    try:
        result = fn(*args)
    except BaseException:
        worlds.leave(meet=False)
        raise
    worlds.leave()
    Path(out, f"rank{index}.pkl").write_bytes(pickle.dumps(result))


def run_ranks(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 180.0) -> list[Any]:
    """Every rank's `fn(*args)`, in rank order (see the module docstring). A free port is picked
    for the ranks' rendezvous; should another process take it first, the run starts again on
    another (twice at most)."""
    for attempt in range(3):
        try:
            return _run_once(fn, world, args, timeout)
        except Exception as err:  # a rank's failure: re-raised unless the port was taken
            text = str(err).lower()
            if attempt == 2 or not ("address already in use" in text or "eaddrinuse" in text):
                raise
    raise AssertionError("unreachable")


def _run_once(fn: Callable[..., Any], world: int, args: tuple[Any, ...], timeout: float) -> list[Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        ctx = mp.start_processes(_entry, args=(fn, world, free_port(), args, out, timeout), nprocs=world,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                raise TimeoutError(f"{world} ranks of {fn.__name__} ran past {timeout:.0f} s")
        return [pickle.loads(Path(out, f"rank{r}.pkl").read_bytes()) for r in range(world)]
