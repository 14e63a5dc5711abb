"""Start a run's processes on this machine (`mrc train --nproc N`) and say how they ended.

The launcher is torch's own: `torch.distributed.launcher.api.elastic_launch`, the agent behind
`torchrun --standalone`, started in this process. It runs N copies of `python -m mrc train …`
(the same arguments), each with RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT set, and
watches them every tenth of a second: when one exits non-zero or is killed, it terminates the
others (SIGTERM, SIGKILL after a few seconds) and returns the failures. A rank blocked in a
collective on a peer the agent cannot see (another machine) ends through the collective timeout
`mrc.runtime.world.join` sets (the spec's `distributed … (timeout=…)`, 300 s by default).

How a rank hands its failure on: torchelastic gives each rank an error file
(env TORCHELASTIC_ERROR_FILE). mrc's CLI writes its one-line message there (`record_failure`)
in torchelastic's own format — so `torchrun`'s failure summary shows that line instead of
"To enable traceback see …" — plus an `mrc` entry with the exact time and whether the rank only
lost contact with a failed peer (a torch.distributed error). The launcher reads the files back
and prints one line per failing rank, the first failure first and the ranks that merely lost
their peers last; ranks the agent itself terminated are not failures and are not listed:

    mrc train: error: rank 1 failed: s.mrs:1:7: model.py:factory raised RuntimeError: boom
    mrc train: error: rank 1 was killed by signal SIGKILL

Ranks started here leave the reporting to the launcher (env MRC_LAUNCHER); under a plain
`torchrun` each failing rank also prints its line to stderr, prefixed with its rank
(`mrc train: rank 1: error: …`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MARKER = "MRC_LAUNCHER"
"""Set (to the launcher's pid) in the environment of ranks `launch` starts: they leave the
reporting of their failure to it."""

ERROR_FILE = "TORCHELASTIC_ERROR_FILE"
"""Where torchelastic's agent expects a rank's failure (set by it for each rank)."""

SHUTDOWN_TIMEOUT_S = 30
"""How long the ranks have to stop once the launcher passed them a Ctrl-C (a step and a
checkpoint) or a SIGTERM, before the agent kills them. (Ranks the agent terminates after a
failure get SIGTERM, which ends a Python process at once: this is no delay there.)"""

_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher")


# ---- the rank's side ----------------------------------------------------------------------

def rank() -> int | None:
    """This process's rank in a run of several processes; None in a one-process run. The
    world it joined (`mrc.runtime.world.current`) if any, else the launcher's RANK as the
    Target reads it (a rank that fails before joining still knows who it is). Imports no torch."""
    world = sys.modules.get("mrc.runtime.world")
    if world is not None and world.current().active:
        return int(world.current().rank)
    from mrc.target import TargetError, launcher_place

    try:
        placed = launcher_place()
    except TargetError:
        return None
    return placed[1] if placed is not None else None


def leader() -> bool:
    """This process prints the run's progress and summary: rank 0, or a one-process run."""
    return rank() in (None, 0)


def under_launcher() -> bool:
    """This rank was started by `mrc train --nproc` (which reports its failure)."""
    return rank() is not None and MARKER in os.environ


def record_failure(message: str, *, lost_peer: bool = False, callstack: str | None = None) -> None:
    """Hand this rank's one-line failure to the launcher: write torchelastic's error file
    (nothing without one: a one-process run, or a launcher that gives none).

    lost_peer: the rank failed because a peer did (a torch.distributed error: a closed
    connection, a collective's timeout), so the launcher lists it after the root cause.
    callstack: a traceback, for failures mrc did not expect (torchrun shows it)."""
    path = os.environ.get(ERROR_FILE)
    if not path:
        return
    now = time.time()
    extra: dict[str, str] = {"timestamp": str(int(now))}
    if callstack:
        extra["py_callstack"] = callstack
    data = {"message": {"message": message, "extraInfo": extra},
            "mrc": {"rank": rank(), "message": message, "time": now, "lost_peer": lost_peer}}
    with contextlib.suppress(OSError):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)


_PEER_SIGNS = ("gloo/transport", "Connection closed by peer", "Connection reset by peer", "NCCL")


def explain(err: BaseException) -> tuple[str, bool]:
    """`err` as one line, and whether it only says that a peer is gone: torch.distributed's
    errors (a connection a dead rank closed, a collective's timeout — gloo raises them as plain
    RuntimeErrors, prefixed with its source file) are the sign of a failure elsewhere."""
    text = (str(err).strip().splitlines() or [""])[0] or type(err).__name__
    dist = sys.modules.get("torch.distributed")
    kind = getattr(dist, "DistError", None) if dist is not None else None
    peer = (kind is not None and isinstance(err, kind)) or (
        isinstance(err, RuntimeError) and any(sign in text for sign in _PEER_SIGNS))
    if not peer:
        return text, False
    if text.startswith("[") and "] " in text:  # `[…/gloo/transport/tcp/pair.cc:553] Connection …`
        text = text.split("] ", 1)[1]
    text = text.split(". ")[0].rstrip(".")
    if "timed out" in text.lower():
        return f"gave up waiting for the other ranks ({text})", True
    return f"lost contact with the other ranks ({text})", True


def record_unexpected(err: BaseException) -> None:
    """An exception mrc did not expect: its one line and its traceback into the error file
    (its traceback still prints, as it would in one process)."""
    text, peer = explain(err)
    record_failure(f"{type(err).__name__}: {text}", lost_peer=peer, callstack=traceback.format_exc())


# ---- the launcher's side ------------------------------------------------------------------

@dataclass(frozen=True)
class RankFailure:
    """How one rank ended, as the launcher reports it."""

    rank: int
    what: str
    """The report after the rank: `failed: <its message>`, `was killed by signal SIGKILL`."""
    time: float
    lost_peer: bool = False
    interrupted: bool = False
    terminated: bool = False
    """Stopped by SIGTERM without a word of its own: most likely by the agent, after another
    rank failed."""


def describe(rank_: int, exitcode: int, data: Mapping[str, Any] | None, observed: float) -> RankFailure:
    """One rank's failure from its exit status and its error file's contents (None: none);
    observed: when the agent saw it (the time of a failure that wrote no file)."""
    own = data.get("mrc") if isinstance(data, Mapping) else None
    if isinstance(own, Mapping) and own.get("message"):
        return RankFailure(rank_, f"failed: {own['message']}", float(own.get("time") or observed),
                           lost_peer=bool(own.get("lost_peer")), interrupted=exitcode == 130)
    message = data.get("message") if isinstance(data, Mapping) else None
    if isinstance(message, Mapping):  # torch's own format (its @record decorator)
        message = message.get("message")
    if isinstance(message, str) and message and message != "<NONE>":
        return RankFailure(rank_, f"failed: {_first_line(message)}", observed)
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        return RankFailure(rank_, f"was killed by signal {name}", observed,
                           terminated=exitcode == -signal.SIGTERM)
    if exitcode == 130:
        return RankFailure(rank_, "was interrupted", observed, interrupted=True)
    return RankFailure(rank_, f"exited with status {exitcode}", observed)


def report(failures: Sequence[RankFailure]) -> list[str]:
    """One line per failure worth reporting: the first failure first, ranks that only lost
    their peers last, ranks that failed alike on one line (`ranks 0, 1 failed: …`). Ranks
    terminated by SIGTERM are left out when another rank failed: the agent terminates the
    others once one fails."""
    shown = sorted([f for f in failures if not f.terminated] or failures,
                   key=lambda f: (f.lost_peer, f.time, f.rank))
    alike: dict[str, list[int]] = {}
    for f in shown:
        alike.setdefault(f.what, []).append(f.rank)
    return [f"rank {ranks[0]} {what}" if len(ranks) == 1 else
            f"ranks {', '.join(map(str, sorted(ranks)))} {what}" for what, ranks in alike.items()]


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `python -m mrc <argv>` as `nproc` ranks on this machine through torch's elastic
    agent; wait for them. Returns 0 when every rank succeeded, 130 when the run was
    interrupted, else 1 after one line per failing rank on stderr. Torch's launcher stays
    quiet (LOGLEVEL=INFO shows its log).

    Ctrl-C: the ranks run in sessions of their own (torch starts them so), so the terminal's
    SIGINT reaches the launcher alone; the agent passes it on to each rank, which stops after
    its step with a checkpoint as in one process, and waits for them (SHUTDOWN_TIMEOUT_S). A
    second Ctrl-C terminates them."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logs = tempfile.mkdtemp(prefix="mrc-launch-")
    env = {MARKER: str(os.getpid())}
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun's 1, but a share of the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.1, logs_specs=DefaultLogsSpecs(log_dir=logs),
                          shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    try:
        with _environment(env, also=("TORCHELASTIC_SIGNALS_TO_HANDLE",)), _quiet(), _signals():
            elastic_launch(config, sys.executable)("-m", "mrc", *argv)
        return 0
    except ChildFailedError as err:
        failures = [describe(r, f.exitcode, f.error_file_data, float(f.timestamp))
                    for r, f in err.failures.items()]
        if any(f.interrupted for f in failures) and all(f.interrupted or f.terminated for f in failures):
            return 130  # Ctrl-C: rank 0 has said so (its summary), the others stopped with it
        for line in report(failures):
            print(f"mrc train: error: {line}", file=sys.stderr)
        return 1
    except SignalException as err:  # the agent passed it to the ranks and waited for them
        if err.sigval == signal.SIGINT:
            return 130  # Ctrl-C: each rank stopped after its step with a checkpoint (rank 0 said so)
        print(f"mrc train: error: stopped by {signal.Signals(err.sigval).name}: the {nproc} ranks were "
              "ended", file=sys.stderr)
        return 128 + int(err.sigval)
    finally:
        shutil.rmtree(logs, ignore_errors=True)


@contextlib.contextmanager
def _environment(values: Mapping[str, str], also: Sequence[str] = ()) -> Iterator[None]:
    """os.environ with `values` (the ranks inherit it), restored afterwards with the
    variables in `also` (which torch's launcher sets)."""
    saved = {k: os.environ.get(k) for k in (*values, *also)}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Torch's launcher logs its configuration, the rendezvous and every shutdown at INFO and
    WARNING; mrc reports the outcome itself. Its records stop at a null handler, unless
    LOGLEVEL (torchelastic's own knob) asks for them."""
    if os.environ.get("LOGLEVEL"):
        yield
        return
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    saved = [(lg.propagate, lg.handlers[:]) for lg in loggers]
    sink = logging.NullHandler()
    for lg in loggers:
        lg.propagate = False
        lg.addHandler(sink)
    try:
        yield
    finally:
        for lg, (propagate, handlers) in zip(loggers, saved, strict=True):
            lg.propagate, lg.handlers = propagate, handlers


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """The agent installs handlers for SIGTERM, SIGINT, SIGHUP and SIGQUIT; put back the ones
    before (mrc's CLI can be called in-process, by tests)."""
    names = ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGINT")
    saved = {n: signal.getsignal(getattr(signal, n)) for n in names if hasattr(signal, n)}
    try:
        yield
    finally:
        for name, handler in saved.items():
            if handler is not None:
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(getattr(signal, name), handler)
