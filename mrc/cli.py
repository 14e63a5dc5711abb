"""The `mrc` command: check, graph, train and sweep .mrs specs."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mrc import __version__
from mrc.diagnostics import CompileError, render_all

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 2, 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mrc",
        description="mrc compiles .mrs training-schedule specs (multirate, module-wise and "
        "layer-parallel training) into a PyTorch training loop and runs it.",
        epilog="Examples:\n  mrc check specs/*.mrs\n  mrc graph specs/quickstart.mrs --format dot"
        " -o g.dot\n  mrc train specs/quickstart.mrs --out runs/quick\n"
        "  mrc plot runs/quick runs/other\n  mrc sweep specs/sweep_digits.mrs --jobs 2\n\n"
        "The language is documented in docs/language.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"mrc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def overrides(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec value, e.g. --set optimizer.lr=0.05 or --set h=0.1 "
                        "(checked like the spec itself); repeatable")

    c = sub.add_parser("check", help="check specs; silent and exit 0 when they are valid",
                       description="Parse, check and bind each spec (this builds the data and the "
                       "model and traces it). Diagnostics go to stderr; exit 2 if any spec has "
                       "errors.")
    c.add_argument("specs", nargs="+", metavar="SPEC")
    c.add_argument("--show", action="store_true", help="also list what each spec bound (as `mrc show`)")
    overrides(c)

    sh = sub.add_parser("show", help="list what a spec binds: partitions, modules, brains, MGRIT stacks",
                        description="Compile a spec and list each partition with the parameters it holds "
                        "(grouped), its element count and the rule, learning rate and period of its updates; "
                        "then its modules, brains and MGRIT stacks. Read from the compiled graph: what it "
                        "lists is what runs.")
    sh.add_argument("spec", metavar="SPEC")
    sh.add_argument("--nproc", type=_positive, metavar="N", help="placed on N processes")
    overrides(sh)

    g = sub.add_parser("graph", help="print the schedule graph a spec compiles to",
                       description="Compile a spec and print its schedule graph (one period of "
                       "training).")
    g.add_argument("spec", metavar="SPEC")
    g.add_argument("--after", metavar="PASS", default=None,
                   help="show the graph after this pass (`build` for the graph before any pass)")
    g.add_argument("--format", choices=("text", "dot", "json", "svg", "png", "html"), default="text",
                   help="svg/png: laid out by Graphviz `dot`; html: one self-contained page with the "
                   "period's timeline and each step pattern's dependency graph")
    g.add_argument("--compact", action="store_true",
                   help="text: each distinct step pattern once, with the steps that run it")
    g.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout (png: required)")
    g.add_argument("--passes", metavar="P1,P2", help="run this pipeline instead of the default")
    g.add_argument("--print-after", metavar="PASS|all", action="append", default=[],
                   help="also print the graph (to stderr) after these passes")
    g.add_argument("--time-passes", action="store_true", help="report how long each pass took")
    g.add_argument("--nproc", type=_positive, metavar="N",
                   help="show the schedule placed on N processes (default: WORLD_SIZE, or 1)")
    overrides(g)

    t = sub.add_parser("train", help="compile a spec and train",
                       description="Compile a spec and run it. DIR receives metrics.jsonl, "
                       "summary.json, final.pt, a resumable checkpoint and TensorBoard events (tb/).")
    t.add_argument("spec", metavar="SPEC")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive, metavar="N", help="train for N optimizer steps")
    length.add_argument("--epochs", type=_positive, metavar="E", help="train for E epochs")
    t.add_argument("--seed", type=_natural, metavar="S", help="override the spec's seed")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train")
    t.add_argument("--out", metavar="DIR", help="output directory (default: a new runs/SPEC_NAME/DATE-TIME, "
                   "linked as runs/SPEC_NAME/latest); a DIR that holds a run is refused without --overwrite")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --out DIR (its run files are "
                   "removed first)")
    t.add_argument("--resume", metavar="DIR", help="continue the run checkpointed in DIR, exactly as it "
                   "was started (its settings and length)")
    t.add_argument("--change-length", action="store_true",
                   help="with --resume and --steps/--epochs: give the run a new length (the learning-rate "
                   "schedule then spans it)")
    t.add_argument("--kernels", choices=("auto", "torch", "triton", "torch.optim"),
                   help="how update groups run (the spec's train(kernels=…))")
    t.add_argument("--threads", type=_natural, metavar="N",
                   help="torch intra-op threads (0: chosen for the model's size)")
    t.add_argument("--trace", metavar="FILE", help="write one line per executed op: step, op id, kind, scope")
    t.add_argument("--no-progress", action="store_true", help="plain log lines, no progress bar")
    t.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard events (DIR/tb/)")
    t.add_argument("--nproc", type=_positive, metavar="N",
                   help="run N processes on this machine, as `torchrun --nproc-per-node N -m mrc train …` "
                   "would (rank 0 writes DIR; resume with the same N)")
    overrides(t)

    pl = sub.add_parser("plot", help="draw one or several runs' metrics into a PNG",
                        description="Plot run directories (their metrics.jsonl) side by side: loss and "
                        "validation accuracy against steps and wall time, learning rate per partition, and "
                        "brains, modules and MGRIT panels where the runs have them.")
    pl.add_argument("runs", nargs="+", metavar="RUN", help="a run directory (mrc train --out DIR)")
    pl.add_argument("--metric", action="append", default=[], metavar="M",
                    help="only these panels: loss, val_acc, time, lr, brains, modules, mgrit, … "
                    "(repeatable or comma-separated)")
    pl.add_argument("-o", "--output", metavar="FILE.png", help="where to write (default: RUN/plot.png of the "
                    "first run)")
    pl.add_argument("--x", choices=("step", "epoch", "time"), default="step",
                    help="the horizontal axis of the panels drawn against the step (default: step)")
    pl.add_argument("--smooth", type=float, default=0.0, metavar="W",
                    help="smooth dense lines with an exponential moving average of weight W in [0, 1) "
                    "(TensorBoard's slider; the raw line stays, faint)")
    w = sub.add_parser("sweep", help="run the spec's `sweep`: a hyper-parameter search (optuna)",
                       description="Run the spec's `sweep` statement as an optuna study: each trial "
                       "is a run directory DIR/trial-NNNN. At the end DIR holds best.mrs (the spec "
                       "with the best values, runnable as it is), trials.csv and plots/*.png. The "
                       "study lives in a journal file (DIR/study.log) unless --storage says "
                       "otherwise; run the same command again to continue it (after Ctrl-C or a "
                       "kill), or run it on several machines with one --storage to share it.")
    w.add_argument("spec", metavar="SPEC")
    w.add_argument("--trials", type=int, metavar="N",
                   help="trials the study should have in all (default: the grid's size, or the "
                   "statement's `trials`)")
    w.add_argument("--jobs", type=int, default=1, metavar="J", help="worker processes on this machine")
    w.add_argument("--storage", metavar="URL",
                   help="an optuna storage URL (postgresql://…, mysql://…, sqlite:///…, redis://…) "
                   "or a journal file path (default: DIR/study.log)")
    w.add_argument("--study", metavar="NAME", help="the study's name (default: the spec's name)")
    w.add_argument("--out", metavar="DIR", help="output directory (default: runs/SPEC_NAME-sweep)")
    w.add_argument("--timeout", type=float, metavar="S", help="start no trial after S seconds")
    w.add_argument("--no-progress", action="store_true", help="plain lines, no live table")
    w.add_argument("--no-plots", action="store_true", help="skip the plots (they take a few seconds)")
    w.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    w.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    w.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _cmd_check(args: argparse.Namespace) -> int:
    from mrc.api import bind_spec, compile_spec

    status = EXIT_OK
    for spec in args.specs:
        try:
            if args.show:
                from mrc.show import show

                print(show(compile_spec(spec, args.overrides).graph, str(spec)))
            else:
                bind_spec(spec, args.overrides)
        except CompileError as err:
            print(render_all(err.diagnostics), file=sys.stderr)
            status = EXIT_ERROR
    return status


def _cmd_show(args: argparse.Namespace) -> int:
    from mrc.api import compile_spec
    from mrc.show import show

    print(show(compile_spec(args.spec, args.overrides, world=args.nproc).graph, str(args.spec)))
    return EXIT_OK


def _cmd_graph(args: argparse.Namespace) -> int:
    from mrc.api import compile_spec
    from mrc.passes import DEFAULT_PIPELINE
    from mrc.passmanager import PassError, parse_pipeline

    if args.format == "png" and not args.output:
        print("mrc graph: --format png writes a binary image: give it a file with -o FILE.png", file=sys.stderr)
        return EXIT_ERROR
    try:
        pipeline = parse_pipeline(args.passes) if args.passes else list(DEFAULT_PIPELINE)
        for name in [args.after, *args.print_after]:
            if name and name not in ("build", "all") and name not in pipeline:
                raise PassError(f"--after/--print-after `{name}` is not in the pipeline "
                                f"({', '.join(['build', *pipeline])})")
        compiled = compile_spec(args.spec, args.overrides, pipeline=pipeline,
                                stop_after=args.after, print_after=args.print_after,
                                time_passes=args.time_passes, world=args.nproc)
    except PassError as err:
        print(f"mrc graph: {err}", file=sys.stderr)
        return EXIT_ERROR
    graph = compiled.initial_graph if args.after == "build" else compiled.graph
    from mrc.ir.draw import DotMissing

    try:
        data = _render_graph(graph, args.format, args.compact, title=str(args.spec))
    except DotMissing as err:
        print(f"mrc graph: {err}", file=sys.stderr)
        return EXIT_ERROR
    if args.output:
        try:
            Path(args.output).write_bytes(data)
        except OSError as err:
            print(f"mrc graph: cannot write {args.output}: {err.strerror}", file=sys.stderr)
            return EXIT_ERROR
    else:
        sys.stdout.write(data.decode())  # every format but png (which needs -o) is text
    return EXIT_OK


def _render_graph(graph: Any, fmt: str, compact: bool, title: str) -> bytes:
    """The graph in `fmt` as bytes (text, dot, json and html as UTF-8; svg and png by `dot`)."""
    if fmt == "text":
        return graph.to_text(compact=compact).encode()
    if fmt in ("dot", "json"):
        return {"dot": graph.to_dot, "json": graph.to_json}[fmt]().encode()
    if fmt == "html":
        from mrc.ir.html import to_html

        return to_html(graph, title=title).encode()
    from mrc.ir.draw import render

    return render(graph, fmt)


def _cmd_train(args: argparse.Namespace) -> int:
    from mrc import launch

    if args.nproc is not None and args.nproc > 1 and launch.MARKER not in os.environ:
        return _launch_train(args)
    try:
        return run_train(args)
    except Exception as err:  # not mrc's: its traceback prints; the launcher gets its line
        if launch.rank() is not None:
            launch.record_unexpected(err)
        raise


def _launch_train(args: argparse.Namespace) -> int:
    """`mrc train --nproc N`: check what can be checked once, then start N ranks of the same
    command through torch's launcher (mrc.launch), which reports how they ended."""
    from mrc.api import check_spec
    from mrc.launch import launch
    from mrc.runtime.checkpoint import CheckpointError, prepare_out_dir
    from mrc.target import TargetError, launcher_place

    try:
        launched = launcher_place() is not None
    except TargetError:
        launched = True
    if launched:
        print("mrc train: --nproc starts the processes itself: under torchrun leave it out", file=sys.stderr)
        return EXIT_ERROR
    if args.change_length and args.resume is None:
        print("mrc train: --change-length goes with --resume", file=sys.stderr)
        return EXIT_ERROR
    out_dir = out_dir_of(args)
    fresh = [p for p in (out_dir, *out_dir.parents) if not os.path.exists(p)] if out_dir else []
    try:
        program = check_spec(args.spec, _train_overrides(args))  # parse and check: no user code, no torch
        if args.resume is None and not (program.model.user or program.data.user or program.loss.user):
            # placed on N ranks here, once: a bad placement is one message, before any rank starts.
            # Only for built-in models and data: the user's factories run on the ranks alone
            from mrc.api import bind_spec

            bind_spec(args.spec, _train_overrides(args), world=args.nproc)
        if args.resume is not None and not Path(args.resume).is_dir():
            raise CheckpointError(f"cannot resume: {args.resume} is not a directory")
        if args.resume is not None:
            _same_world(Path(args.resume), args.nproc)
        _refuse_existing_run(args)
        if out_dir is None:  # the default: one versioned folder, named here so every rank writes it
            from mrc.runtime import rundir

            out_dir = rundir.choose(program.name, None, None)
            assert out_dir is not None
            fresh = [p for p in (out_dir, *out_dir.parents) if not os.path.exists(p)]
            args.argv = [*args.argv, "--out", str(out_dir)]
            prepare_out_dir(out_dir)
            rundir.link_latest(out_dir)
        else:
            prepare_out_dir(out_dir)
    except CompileError as err:
        print(render_all(err.diagnostics), file=sys.stderr)
        return EXIT_ERROR
    except CheckpointError as err:
        print(f"mrc train: {err}", file=sys.stderr)
        return EXIT_ERROR
    status = launch(args.nproc, args.argv)
    if status != 0:
        for made in fresh:  # a run that never started leaves no empty directory (innermost first)
            with contextlib.suppress(OSError):
                made.rmdir()
    return status


def _same_world(run: Path, nproc: int) -> None:
    """A resume on `nproc` processes of a run written by another number fails once, here."""
    from mrc.runtime.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint

    if not (run / CHECKPOINT).is_file():
        return  # the ranks report a missing or broken checkpoint as for one process
    saved = int(load_checkpoint(run).get("world", 1))
    if saved != nproc:
        raise CheckpointError(f"cannot resume {run}: it was written by a run of {saved} process"
                              f"{'es' if saved > 1 else ''}; resume it with --nproc {saved}")


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """The `--set` items plus the flags the compiler reads (seed, device, threads, kernels)."""
    overrides = list(args.overrides)
    for key, value in (("seed", args.seed), ("device", args.device), ("threads", args.threads)):
        if value is not None:  # the compiler reads them (it picks kernels for the device)
            overrides.append(f"train.{key}={value}")
    if args.kernels is not None:  # quoted: `torch.optim` is not a name
        overrides.append(f'train.kernels="{args.kernels}"')
    return overrides


def _train_error(text: str, status: int, *, lost_peer: bool = False, full: str | None = None) -> int:
    """Say `mrc train: TEXT` on stderr and return `status`. In a run of several processes the
    line names the rank (`mrc train: rank 1: error: …`) and goes to the launcher's error file;
    under `mrc train --nproc` the launcher prints it, so the rank stays silent. lost_peer: the
    rank failed because another did (the launcher lists it last). full: a longer form (a
    compile error's rendered diagnostics) that rank 0 prints instead."""
    from mrc import launch

    r = launch.rank()
    if r is None:
        print(full if full is not None else f"mrc train: {text}", file=sys.stderr)
        return status
    launch.record_failure(text.removeprefix("error: "), lost_peer=lost_peer)
    if full is not None and r == 0:
        print(full, file=sys.stderr)
    elif not launch.under_launcher():
        print(f"mrc train: rank {r}: {text}", file=sys.stderr)
    return status


def _one_line(err: CompileError) -> str:
    """A compile error as one line: its first error's place and message (and how many more)."""
    errors = [d for d in err.diagnostics if d.severity == "error"] or list(err.diagnostics)
    if not errors:
        return "the spec does not compile"
    first = errors[0]
    where = f"{first.span}: " if first.span and first.span.line > 0 else (
        f"{first.span.file}: " if first.span else "")
    more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{where}{first.message}{more}"


def _cmd_plot(args: argparse.Namespace) -> int:
    from mrc.plot import PlotError, plot

    metrics = [m.strip() for item in args.metric for m in item.split(",") if m.strip()]
    try:
        target = plot([Path(r) for r in args.runs], metrics or None,
                      Path(args.output) if args.output else None, x=args.x, smooth=args.smooth)
    except PlotError as err:
        print(f"mrc plot: {err}", file=sys.stderr)
        return EXIT_ERROR
    print(f"mrc: wrote {target}")
    return EXIT_OK

def _cmd_sweep(args: argparse.Namespace) -> int:
    from mrc.sweep.study import SweepError

    try:
        if args.worker is not None:  # one of the processes `mrc sweep --jobs J` starts
            from mrc.sweep.worker import run_worker

            return run_worker(args.spec, args.storage, args.study, Path(args.out), args.trials,
                              args.worker, args.deadline, args.parent)
        from mrc.sweep.driver import SweepOptions, run_sweep

        return run_sweep(SweepOptions(args.spec, args.trials, args.jobs, args.storage, args.study, args.out,
                                      args.timeout, not args.no_progress, not args.no_plots))
    except SweepError as err:
        print(f"mrc sweep: {err}", file=sys.stderr)
        return EXIT_ERROR


class _ClosedPipeSafe:
    """A text stream that survives its reader going away: after the first `BrokenPipeError` it
    points the file descriptor at /dev/null and drops further output, so the command still
    finishes and returns its own exit status (`mrc check bad.mrs 2>&1 | true` exits 2)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._silence()

    def _silence(self) -> None:
        self.broken = True
        try:  # so the interpreter's own flush at exit does not fail on the same pipe
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def out_dir_of(args: argparse.Namespace) -> Path | None:
    """The run directory `mrc train` names: `--out`, else `--resume`; None for the default (a
    fresh versioned folder that `mrc.api.train` makes after compiling)."""
    if args.out is not None:
        return Path(args.out)
    if args.resume is not None:
        return Path(args.resume)
    return None


def _refuse_existing_run(args: argparse.Namespace) -> None:
    """`--out DIR` on a directory that holds a run, without --resume or --overwrite: refused
    before anything runs."""
    from mrc.runtime import rundir

    if args.out is not None and args.resume is None and not args.overwrite and rundir.is_run(Path(args.out)):
        rundir.choose("", args.out, None)  # raises RunExists with the message


def run_train(args: argparse.Namespace) -> int:
    from mrc import launch
    from mrc.api import train
    from mrc.runtime.callbacks import Interrupt
    from mrc.runtime.checkpoint import CheckpointError, prepare_out_dir
    from mrc.runtime.trainer import TrainingStopped

    out_dir = out_dir_of(args)
    fresh = [p for p in (out_dir, *out_dir.parents) if not os.path.exists(p)] if out_dir else []
    try:  # before compiling: a bad directory costs nothing and says so in one line
        if args.resume is not None and not Path(args.resume).is_dir():
            raise CheckpointError(f"cannot resume: {args.resume} is not a directory")
        if launch.rank() is None or launch.rank() == 0:
            _refuse_existing_run(args)
        if out_dir is not None:
            prepare_out_dir(out_dir)
    except CheckpointError as err:
        return _train_error(str(err), 2)
    overrides = _train_overrides(args)
    if args.change_length and args.resume is None:
        return _train_error("--change-length goes with --resume", 2)
    leader = launch.leader()  # with several processes, rank 0 alone shows progress and the summary
    progress = not args.no_progress and sys.stderr.isatty() and leader
    interrupt = Interrupt()
    previous = _catch_sigint(interrupt)
    try:
        result = train(args.spec, out=args.out, steps=args.steps, epochs=args.epochs,
                       device=args.device, resume=args.resume, overrides=overrides,
                       progress=progress, trace=args.trace, interrupt=interrupt,
                       change_length=args.change_length, tensorboard=not args.no_tensorboard,
                       overwrite=args.overwrite)
    except CompileError as err:
        for made in fresh:  # leave no empty run directory behind (innermost first)
            with contextlib.suppress(OSError):
                made.rmdir()
        return _train_error(f"error: {_one_line(err)}", 2, full=render_all(err.diagnostics))
    except CheckpointError as err:
        return _train_error(str(err), 2)
    except TrainingStopped as err:
        return _train_error(f"error: {err.message}", 1)
    except Exception as err:
        from mrc.usercode import describe_user_error, user_frame

        if user_frame(err) is not None:  # the user's forward, dataset or loss raised mid-run: the
            # run keeps its last checkpoint and metrics; the line names the user's file:line
            return _train_error(f"error: training stopped by an error in user code: "
                                f"{describe_user_error(err)}", 1)
        if not isinstance(err, RuntimeError | ValueError | OSError):
            raise
        text, peer = launch.explain(err)
        return _train_error(f"error: {text}", 1 if isinstance(err, RuntimeError) else 2, lost_peer=peer)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    status = 130 if result.status == "interrupted" else 0
    if not leader:
        return status
    if result.status == "interrupted" and result.out_dir is not None:
        import shlex

        again = ["mrc", "train", args.spec, "--resume", str(result.out_dir)]
        if args.nproc:
            again += ["--nproc", str(args.nproc)]
        print(f"mrc: to continue: {shlex.join(again)}", file=sys.stderr)
    s = result.summary
    val = f"val_acc {s['val_acc']:.4f}  val_loss {s['val_loss']:.4f}" if s.get("val_acc") is not None else \
        f"val_loss {s['val_loss']:.4f}" if s.get("val_loss") is not None else ""  # a loss without accuracy
    val += "".join(f"  {n}.acc {e['acc']:.4f}" for n, e in s.get("evals", {}).items()
                   if e.get("acc") is not None)
    mem = s.get("activation_memory")
    val += f"  activations {mem['mib']:.2f} MiB" if mem else ""
    wrote = ""
    if result.out_dir:  # the run's files, the techniques' artifacts among them (brains/, aux.pt)
        from mrc.runtime.rundir import RUN_FOLDERS
        from mrc.techniques import techniques

        out = Path(result.out_dir)
        names = [f"{n}/" if (out / n).is_dir() else n
                 for n in ("final.pt", "metrics.jsonl", "summary.json", "checkpoint.pt", *RUN_FOLDERS,
                           *(a for t in techniques() for a in t.artifacts)) if (out / n).exists()]
        wrote = f"\nmrc: wrote {out}/{{{','.join(names)}}}"
    mods = s.get("modules")
    if mods:
        shown = [f"{n}:{m.get('val_acc', m['val_loss']):.3f}" for n, m in mods.items()]
        if len(shown) > 6:
            shown = [*shown[:2], "…", *shown[-2:]]
        val += "  modules " + " ".join(shown)
    print(f"mrc: {s['status']}: {s['steps']} steps in {s['wall_time_s']:.1f} s "
          f"({s['steps_per_s']:.1f} steps/s)  "
          + (f"train_acc {s['train_acc']:.4f}" if s.get("train_acc") is not None else
             f"train_loss {s['train_loss']:.4f}" if s.get("train_loss") is not None else "") + f"  {val}"
          + wrote)
    return status


def _catch_sigint(interrupt: Any) -> Any:
    """Ctrl-C: the first asks the run to stop after its step (with a checkpoint, exit 130); a
    second gives up at once. Returns the previous handler (None off the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        if interrupt.requested:
            raise KeyboardInterrupt
        interrupt.requested = True

    return signal.signal(signal.SIGINT, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `mrc train --nproc` hands them to its ranks
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ClosedPipeSafe(sys.stdout), _ClosedPipeSafe(sys.stderr)  # type: ignore[assignment]
    try:
        return {"check": _cmd_check, "show": _cmd_show, "graph": _cmd_graph, "train": _cmd_train,
                "plot": _cmd_plot, "sweep": _cmd_sweep}[args.command](args)
    except CompileError as err:
        print(render_all(err.diagnostics), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("mrc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # a write that bypassed the streams above: the outcome is unknown
        return EXIT_ERROR
    finally:
        for wrapped in (sys.stdout, sys.stderr):
            if isinstance(wrapped, _ClosedPipeSafe):
                wrapped.flush()
        sys.stdout, sys.stderr = saved


if __name__ == "__main__":
    sys.exit(main())
