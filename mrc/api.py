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

from mrc.check.checker import check
from mrc.diagnostics import CompileError, Diagnostic, Reporter, Span
from mrc.parser import parse, parse_overrides
from mrc.program import Program
from mrc.target import Target, TargetError, detect

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

    @property
    def target(self) -> Target:
        """The machine it was compiled for (the graph carries it)."""
        return self.graph.target


def read_spec(path: str | Path) -> tuple[str, str]:
    """The spec's text and the name diagnostics use for it; a missing file is a CompileError."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise CompileError([Diagnostic(f"cannot read spec: {reason}", Span(str(path), 0, 0, 0, 0))]) from None


@dataclass(frozen=True)
class SpecText:
    """A spec given as text (from Python) rather than as a file: `name` is what diagnostics call
    it, `base_dir` where its relative file names are taken from (default: the working folder)."""

    text: str
    name: str = "<spec>"
    base_dir: Path | None = None


def source_of(spec: str | Path | SpecText) -> tuple[str, str, Path]:
    """A spec's text, the name diagnostics use for it and the folder its relative names start
    from. A string holding a newline is spec text; any other string is a path."""
    if isinstance(spec, str) and "\n" in spec:
        spec = SpecText(spec)
    if isinstance(spec, SpecText):
        return spec.text, spec.name, Path(spec.base_dir or Path.cwd()).resolve()
    text, name = read_spec(spec)
    return text, name, Path(spec).resolve().parent


def check_spec(path: str | Path | SpecText, overrides: Mapping[str, str] | Sequence[str] | None = None) -> Program:
    """Parse and check a spec (a path, or spec text: see `source_of`); no user code is run.
    Raises CompileError with every problem."""
    text, name, base = source_of(path)
    return check(parse(text, name), base, parse_overrides(overrides))


def bind_spec(path: str | Path, overrides: Mapping[str, str] | Sequence[str] | None = None,
              *, training: bool = False, world: int | None = None) -> Bound:
    """Check a spec, then build its data and model, trace it and resolve partitions.
    With `training`, initial weights that do not exist yet are an error, not a warning.
    world: the number of processes the run is placed on (default: the launcher's WORLD_SIZE,
    1 without one)."""
    program = check_spec(path, overrides)  # first: a spec with errors imports no torch
    return _bind(program, target_of(program, world), training)


def target_of(program: Program, world: int | None = None) -> Target:
    """The Target a checked spec compiles for on this machine (mrc/target.py): its
    `train(device, precision)` and `distributed … (backend=…)`, and the launcher's world and rank
    (`world` places it on that many processes instead)."""
    d = program.distributed
    try:
        return detect(program.train.device, program.train.precision, d.backend if d is not None else "auto",
                      world)
    except TargetError as err:
        raise CompileError([Diagnostic(str(err), Span(program.file, 0, 0, 0, 0))]) from None


def _bind(program: Program, target: Target, training: bool) -> Bound:
    from mrc.binding import bind

    r = Reporter()
    bound = bind(program, r, training, target.world)
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
                 training: bool = False, world: int | None = None, target: Target | None = None) -> Compiled:
    """Spec → checked program → bound model → schedule graph → passes, for `target` (default:
    this machine as `target_of` sees it; world: the processes the run is placed on, default the
    launcher's WORLD_SIZE, else 1). A target given stands for the spec's `train(device,
    precision)` and for `world`. The graph carries it (`compiled.target`)."""
    from mrc.passes import DEFAULT_PIPELINE
    from mrc.passmanager import PassManager
    from mrc.schedule import build_graph

    program = check_spec(path, overrides)  # first: a spec with errors imports no torch
    if target is None:
        target = target_of(program, world)
    bound = _bind(program, target, training)
    initial = build_graph(bound, target)
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


def train(spec: str | Path | SpecText | Compiled, *, model: Any = None, data: Any = None, loss: Any = None,
          quiet: bool = False, **kwargs: Any):  # -> mrc.runtime.trainer.TrainResult
    """Train a spec — a path, spec text (a string with a newline, or a SpecText) or a Compiled
    one — optionally with objects of your own code in place of its statements:

    model: an `nn.Module` instance (the spec's `model` statement, if any, is replaced);
    data: a Dataset, a (train, validation) pair of Datasets or of DataLoaders, or anything a
        data factory may return (the `data` statement's target is replaced; its options such as
        `batch`, `val`, `augment` stay);
    loss: a function `loss(output, target) -> scalar tensor` (a `task=` on the spec's `loss`
        statement stays);
    quiet: print nothing (no header, progress or notes).

    The other keywords are those of `run` below (out, steps, epochs, device, resume, overrides,
    …). A spec that lacks a statement you provide an object for gets one; one that names none of
    them trains as written. Returns a TrainResult (model, metrics, summary, out_dir, status)."""
    if isinstance(spec, Compiled):
        if model is not None or data is not None or loss is not None:
            raise ValueError("`model`, `data` and `loss` go with a spec, not with a Compiled one")
        return run(spec, quiet=quiet, **kwargs)
    if isinstance(spec, str) and "\n" in spec:
        spec = SpecText(spec)
    if model is not None or data is not None or loss is not None:
        spec = with_objects(spec, model=model is not None, data=data is not None, loss=loss is not None)
    from mrc import provided

    with provided.hold(model=model, data=data, loss=loss):
        return run(spec, quiet=quiet, **kwargs)


def with_objects(spec: str | Path | SpecText, *, model: bool = False, data: bool = False,
                 loss: bool = False) -> SpecText:
    """The spec's text with its `model` / `data` / `loss` statements naming the objects given to
    `train` (`"mrc.provided:KIND"`), added where the spec has none. The data statement keeps its
    options (`DATA_OPTIONS`), the loss statement its `task`."""
    from mrc.data.options import DATA_OPTIONS
    from mrc.spectext import offsets

    text, name, base = source_of(spec)
    tree = parse(text, name)
    starts = offsets(text)

    def at(line: int, col: int) -> int:
        return starts[line - 1] + col - 1

    keep_names = {"data": {p.name for p in DATA_OPTIONS}, "loss": {"task"}, "model": set()}
    present = {st.keyword.id: st for st in tree.statements}
    edits: list[tuple[int, int, str]] = []
    added: list[str] = []
    for kind, wanted in (("model", model), ("data", data), ("loss", loss)):
        if not wanted:
            continue
        ref = f'"mrc.provided:{kind}"'
        st = present.get(kind)
        if st is None:
            added.append(f"{kind} {ref}")
            continue
        kept = [text[at(a.span.line, a.span.col):at(a.span.end_line, a.span.end_col)] for a in st.args or ()
                if a.name is not None and a.name.id in keep_names[kind]]
        start = st.target.span if st.target is not None else st.keyword.span
        begin = at(start.line, start.col) if st.target is not None else at(start.end_line, start.end_col)
        edits.append((begin, at(st.span.end_line, st.span.end_col),
                      (" " if st.target is None else "") + ref + (f"({', '.join(kept)})" if kept else "")))
    for begin, end, new in sorted(edits, reverse=True):
        text = text[:begin] + new + text[end:]
    if added:
        text = text.rstrip("\n") + "\n" + "\n".join(added) + "\n"
    return SpecText(text, name, base)


def load(run_dir: str | Path, *, model: Any = None, brains: bool = False):  # -> nn.Module | dict
    """The trained model of a run directory: rebuilt from the run's `config.mrs` (or, with
    `model`, that instance) and loaded with its `final.pt` (weights only). With `brains`, a
    dict of each brain's model (`DIR/brains/NAME.pt`). The aux heads of a module-wise run are
    in `DIR/aux.pt` (a state dict)."""
    from mrc.runtime.checkpoint import FINAL
    from mrc.safeload import read_weights

    run_dir = Path(run_dir)
    if not (run_dir / FINAL).is_file():
        raise FileNotFoundError(f"{run_dir} holds no {FINAL}: not a finished run directory")
    if model is None:
        config = run_dir / "config.mrs"
        if not config.is_file():
            raise FileNotFoundError(f"{run_dir} holds no config.mrs to rebuild its model from; pass model=")
        if "mrc.provided:model" in config.read_text(encoding="utf-8"):
            raise ValueError(f"{run_dir} was trained with a model object from Python: pass it as model=")
        model = bind_spec(config).model
    if brains:
        import copy

        out = {}
        for file in sorted((run_dir / "brains").glob("*.pt")):
            each = copy.deepcopy(model)
            each.load_state_dict(read_weights(file))
            out[file.stem] = each
        return out
    model.load_state_dict(read_weights(run_dir / FINAL), strict=False)
    return model


def run(spec: str | Path | SpecText | Compiled, *, out: str | Path | None = None, steps: int | None = None,
          epochs: int | None = None, device: str | None = None, resume: str | Path | None = None,
          overrides: Mapping[str, str] | Sequence[str] | None = None, progress: bool = False,
          save: bool = True, stop_at: int | None = None, trace: str | Path | None = None,
          observe: Callable[[int, dict[str, Any]], bool | None] | None = None, interrupt: Any = None,
          change_length: bool = False, tensorboard: bool = True,
          overwrite: bool = False, quiet: bool = False):  # -> mrc.runtime.trainer.TrainResult
    """Compile (unless given a Compiled) and train (`train` is the front door: it also takes
    objects of your own code). quiet: print nothing.

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
    if not isinstance(spec, str | Path | SpecText | Compiled):
        raise ValueError(f"`spec` must be a path, spec text or a Compiled spec, not {type(spec).__name__}")

    items = _as_items(overrides)
    if resume is not None and isinstance(spec, str | Path):
        items = _resumed_overrides(Path(resume), items)
    if device is not None and not isinstance(spec, Compiled) and f"train.device={device}" not in items:
        items = [*items, f"train.device={device}"]
    compiled = spec if isinstance(spec, Compiled) else compile_spec(spec, items, training=True)
    from mrc.runtime import rundir
    from mrc.runtime.checkpoint import CheckpointError, prepare_out_dir

    target = compiled.target
    leader = target.leader
    if resume is not None and steps is None and epochs is None:
        from mrc.runtime.checkpoint import fingerprint

        done = rundir.finished(Path(resume), compiled.program.name, fingerprint(compiled.graph))
        if done is not None:  # nothing to resume: say so and change nothing
            return _finished_run(compiled, Path(resume), done)
    run_id = None
    if out is None and resume is None and save and target.world > 1:  # every process must agree
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
                                text=spec.text if isinstance(spec, SpecText) else None,
                                world=target.world, resumed=resume is not None,
                                device=device or "", length=f"--steps {steps}" if steps else
                                f"--epochs {epochs}" if epochs else "")

    if trace is not None and target.rank > 0:
        trace = f"{trace}.rank{target.rank}"  # each rank traces what it runs
    sink = open(trace, "w", encoding="utf-8") if trace is not None else None
    try:
        trainer = Trainer(compiled, out_dir, steps=steps, epochs=epochs,
                          device=device if isinstance(spec, Compiled) else None,  # else: the target's
                          resume=Path(resume) if resume is not None else None, progress=progress,
                          stop_at=stop_at, trace=sink, observe=observe, interrupt=interrupt,
                          overrides=items, change_length=change_length, tensorboard=tensorboard,
                          **({"echo": _silent} if quiet else {}))
        return trainer.run()
    finally:
        if sink is not None:
            sink.close()


def _silent(line: str) -> None:
    """`quiet=True`: the trainer's lines go nowhere."""


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
