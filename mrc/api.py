"""The Python API, mirroring the command line.

    import mrc.api as mrc
    compiled = mrc.compile_spec("specs/quickstart.mrs", overrides={"optimizer.lr": "0.05"})
    print(compiled.graph.to_text())
    result = mrc.train(compiled, out="runs/quick")
    result.model, result.metrics, result.summary
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrc import ast
from mrc.check.checker import check
from mrc.diagnostics import SOURCES, CompileError, Diagnostic, Reporter, Span
from mrc.parser import parse, parse_expr
from mrc.program import Program

if TYPE_CHECKING:  # torch is imported only by the commands that need it
    from mrc.binding import Bound
    from mrc.ir.graph import ScheduleGraph


@dataclass
class Compiled:
    """A spec taken through every stage up to the optimised schedule graph."""

    program: Program
    bound: Bound
    initial_graph: ScheduleGraph
    graph: ScheduleGraph


def read_spec(path: str | Path) -> tuple[str, str]:
    """The spec's text and the name diagnostics use for it; a missing file is a CompileError."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise CompileError([Diagnostic(f"cannot read spec: {reason}", Span(str(path), 0, 0, 0, 0))]) from None


def parse_overrides(overrides: Mapping[str, str] | Sequence[str] | None) -> dict[str, ast.Expr]:
    """`--set key=value` items (or a mapping) → parsed expressions, each with its own span."""
    if not overrides:
        return {}
    items = overrides.items() if isinstance(overrides, Mapping) else [_split(s) for s in overrides]
    out: dict[str, ast.Expr] = {}
    errors: list[Diagnostic] = []
    for key, value in items:
        key = key.strip()
        name = f"<--set {key}>"
        if not key or not all(part.isidentifier() for part in key.split(".")):
            errors.append(Diagnostic(f"`--set {key}={value}`: the key must be a name such as "
                                     "`optimizer.lr` or a `let` name", None))
            continue
        text = str(value)
        try:  # parsed in place after `KEY=`, so a caret falls under the key or the value as typed
            out[key] = parse_expr(" " * (len(key) + 1) + text, name)
        except CompileError as err:
            errors.extend(err.diagnostics)
        SOURCES.add(name, f"{key}={text}")
    if errors:
        raise CompileError(errors)
    return out


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise CompileError([Diagnostic(f"`--set {item}` needs the form key=value", None)])
    key, _, value = item.partition("=")
    return key, value


def check_spec(path: str | Path, overrides: Mapping[str, str] | Sequence[str] | None = None) -> Program:
    """Parse and check a spec (no user code is run). Raises CompileError with every problem."""
    text, name = read_spec(path)
    return check(parse(text, name), Path(path).resolve().parent, parse_overrides(overrides))


def bind_spec(path: str | Path, overrides: Mapping[str, str] | Sequence[str] | None = None,
              *, training: bool = False, world: int | None = None) -> Bound:
    """Check a spec, then build its data and model, trace it and resolve partitions.
    With `training`, initial weights that do not exist yet are an error, not a warning.
    world: the number of processes the run is placed on (default: the launcher's WORLD_SIZE,
    1 without one)."""
    program = check_spec(path, overrides)  # first: a spec with errors imports no torch
    from mrc.binding import bind
    from mrc.runtime.world import size_from_env

    r = Reporter()
    bound = bind(program, r, training, world if world is not None else size_from_env())
    r.raise_if_failed()
    assert bound is not None
    for d in r.diagnostics:  # warnings
        import sys

        from mrc.diagnostics import render

        print(render(d), file=sys.stderr)
    return bound


def compile_spec(path: str | Path, overrides: Mapping[str, str] | Sequence[str] | None = None, *,
                 pipeline: Sequence[str] | None = None, stop_after: str | None = None,
                 print_after: Sequence[str] = (), time_passes: bool = False,
                 training: bool = False, world: int | None = None) -> Compiled:
    """Spec → checked program → bound model → schedule graph → passes. world: the processes
    the run is placed on (default: the launcher's WORLD_SIZE, else 1)."""
    from mrc.passes import DEFAULT_PIPELINE
    from mrc.passmanager import PassManager
    from mrc.schedule import build_graph

    bound = bind_spec(path, overrides, training=training, world=world)
    initial = build_graph(bound)
    manager = PassManager(list(pipeline or DEFAULT_PIPELINE), print_after, time_passes)
    graph = manager.run(initial, stop_after=stop_after)
    return Compiled(bound.program, bound, initial, graph)


def lower(compiled: Compiled, total_steps: int, device: str = "cpu"):  # -> mrc.lower.plan.Plan
    """The executable Plan of a compiled spec for a run of `total_steps` steps."""
    from mrc.lower import lower as lower_graph

    _positive("total_steps", total_steps)
    return lower_graph(compiled.graph, compiled.bound, total_steps, device)


def _positive(name: str, value: object, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a whole number ≥ 1, not {value!r}")


def train(spec: str | Path | Compiled, *, out: str | Path | None = None, steps: int | None = None,
          epochs: int | None = None, device: str | None = None, resume: str | Path | None = None,
          overrides: Mapping[str, str] | Sequence[str] | None = None, progress: bool = False,
          save: bool = True, stop_at: int | None = None, trace: str | Path | None = None,
          observe: Callable[[int, dict[str, Any]], bool | None] | None = None, interrupt: Any = None,
          change_length: bool = False, tensorboard: bool = True,
          overwrite: bool = False):  # -> mrc.runtime.trainer.TrainResult
    """Compile (unless given a Compiled) and train.

    out: the run directory (default, when `save`: a fresh versioned folder
    `runs/<spec name>/<date-time>` with a `latest` link beside it; with `resume` and no `out`,
    the resumed directory). An `out` that holds a run already is refused (`RunExists`, a
    CheckpointError) unless `overwrite` (its run files are removed first) — a run never replaces
    another silently. A fresh run writes `config.mrs` (the spec it ran, overrides written in)
    and `run.json` (command, overrides, versions, git commit, host, start, world) into it.
    steps / epochs override the spec's length. Returns a TrainResult with
    the trained model, the metrics and the summary. stop_at pauses the run (with a checkpoint)
    once that global step is reached, keeping its planned length, so it can be resumed. trace:
    a file that receives one line per executed op (step, op id, kind, scope); in a run of
    several processes rank r > 0 writes its own, `FILE.rank<r>`.

    resume: continue the run checkpointed in that directory exactly as it was started — its
    overrides, seed and length come from the checkpoint (a spec or settings whose compiled
    schedule differs are refused); a different `steps`/`epochs` needs `change_length=True`.
    observe: called as observe(step, metrics) after each evaluation (metrics: val_loss, the
    loss's task's metrics such as val_acc, the user's val_NAME, and, with brains, each brain's);
    returning True stops the run (status `stopped`).
    interrupt: an `mrc.runtime.callbacks.Interrupt`; setting its `requested` (from a signal
    handler, say) ends the run after the current step with a checkpoint (status `interrupted`).
    tensorboard: a run with a directory also writes TensorBoard events to `DIR/tb/` (the README's
    "Seeing a run" lists the tags); False turns that off.
    """
    from mrc.runtime.trainer import Trainer

    _positive("steps", steps, allow_none=True)
    _positive("epochs", epochs, allow_none=True)
    _positive("stop_at", stop_at, allow_none=True)
    if steps is not None and epochs is not None:
        raise ValueError("give `steps` or `epochs`, not both")
    if device not in (None, "auto", "cpu", "cuda"):
        raise ValueError(f"`device` must be auto, cpu or cuda, not {device!r}")
    if not isinstance(spec, str | Path | Compiled):
        raise ValueError(f"`spec` must be a path or a Compiled spec, not {type(spec).__name__}")

    items = _as_items(overrides)
    if resume is not None and not isinstance(spec, Compiled):
        items = _resumed_overrides(Path(resume), items)
    if device is not None and not isinstance(spec, Compiled) and f"train.device={device}" not in items:
        items = [*items, f"train.device={device}"]
    compiled = spec if isinstance(spec, Compiled) else compile_spec(spec, items, training=True)
    from mrc.launch import rank
    from mrc.runtime import rundir
    from mrc.runtime.checkpoint import CheckpointError, prepare_out_dir

    leader = (rank() or 0) == 0
    if resume is not None and steps is None and epochs is None:
        from mrc.runtime.trainer import fingerprint

        done = rundir.finished(Path(resume), compiled.program.name, fingerprint(compiled.graph))
        if done is not None:  # nothing to resume: say so and change nothing
            return _finished_run(compiled, Path(resume), done)
    run_id = None
    if out is None and resume is None and save and rank() is not None:  # every process must agree
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
        if run_id in ("", "none"):
            raise CheckpointError("several processes and no --out: give --out DIR so that they write one run")
    fresh_version = out is None and resume is None and save
    if not leader and out is not None:  # the leader checked (or cleared) it; its files may be there now
        out_dir: Path | None = Path(out)
    else:
        out_dir = rundir.choose(compiled.program.name, out, resume, save=save, overwrite=overwrite, run_id=run_id)
    if out_dir is not None:
        prepare_out_dir(out_dir)  # a file in the way, a read-only place: one line, nothing touched
        if fresh_version and leader:
            rundir.link_latest(out_dir)
        if leader:
            source = Path(spec) if isinstance(spec, str | Path) else Path(compiled.program.file)
            rundir.write_record(out_dir, source if source.is_file() else None, items,
                                world=int(os.environ.get("WORLD_SIZE", "1") or 1), resumed=resume is not None,
                                device=device or "", length=f"--steps {steps}" if steps else
                                f"--epochs {epochs}" if epochs else "")

    if trace is not None and (rank() or 0) > 0:
        trace = f"{trace}.rank{rank()}"  # each rank traces what it runs
    sink = open(trace, "w", encoding="utf-8") if trace is not None else None
    try:
        trainer = Trainer(compiled, out_dir, steps=steps, epochs=epochs, device=device,
                          resume=Path(resume) if resume is not None else None, progress=progress,
                          stop_at=stop_at, trace=sink, observe=observe, interrupt=interrupt,
                          overrides=items, change_length=change_length, tensorboard=tensorboard)
        return trainer.run()
    finally:
        if sink is not None:
            sink.close()


def _finished_run(compiled: Compiled, run_dir: Path, summary: dict[str, Any]):  # -> TrainResult
    """A resume of a run that already ran to its end: its final model, metrics and summary as
    they are, with a note on stderr; no file is written."""
    import sys

    from mrc.runtime.checkpoint import FINAL, read_metrics
    from mrc.runtime.trainer import TrainResult
    from mrc.safeload import read_weights

    model = compiled.bound.model
    if (run_dir / FINAL).is_file():
        model.load_state_dict(read_weights(run_dir / FINAL), strict=False)
    print(f"mrc: {run_dir} is finished ({summary.get('steps')} of {summary.get('total_steps')} steps): nothing "
          "to resume, nothing changed (--resume DIR --steps N --change-length makes it longer)", file=sys.stderr)
    return TrainResult(model, read_metrics(run_dir), summary, run_dir, "completed")


def _resumed_overrides(run_dir: Path, given: list[str]) -> list[str]:
    """The overrides a resumed run was started with, plus any given now that it lacks (a
    setting that changes the compiled schedule is then refused by the checkpoint's check)."""
    from mrc.runtime.checkpoint import load_checkpoint

    stored = list(load_checkpoint(run_dir).get("overrides") or [])
    return stored + [item for item in given if item not in stored]


def _as_items(overrides: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        return [f"{k}={v}" for k, v in overrides.items()]
    return list(overrides)
