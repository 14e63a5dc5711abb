"""The Python API, mirroring the command line.

    import mrc.api as mrc
    compiled = mrc.compile_spec("specs/quickstart.mrs", overrides={"optimizer.lr": "0.05"})
    print(compiled.graph.to_text())
    result = mrc.train(compiled, out="runs/quick")
    result.model, result.metrics, result.summary
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrc import ast
from mrc.check.checker import check
from mrc.diagnostics import CompileError, Diagnostic, Reporter, Span
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
        try:
            out[key] = parse_expr(str(value), name)
        except CompileError as err:
            errors.extend(err.diagnostics)
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
          change_length: bool = False, tensorboard: bool = True):  # -> mrc.runtime.trainer.TrainResult
    """Compile (unless given a Compiled) and train.

    out: the run directory (default `runs/<spec name>` when `save`; with `resume` and no `out`,
    the resumed directory). steps / epochs override the spec's length. Returns a TrainResult with
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
    out_dir: Path | None
    if out is not None:
        out_dir = Path(out)
    elif resume is not None:
        out_dir = Path(resume)
    elif save:
        out_dir = Path("runs") / compiled.program.name
    else:
        out_dir = None
    if out_dir is not None:
        from mrc.runtime.checkpoint import prepare_out_dir

        prepare_out_dir(out_dir)  # a file in the way, a read-only place: one line, nothing touched
    from mrc.launch import rank

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
