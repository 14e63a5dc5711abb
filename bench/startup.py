"""Start-up: how long mrc takes before it does anything, against an earlier commit.

Whole commands, each a fresh process (`python -m mrc.cli …`), timed from launch to exit:

    check_error_s       `mrc check` of a spec with an error (reported before anything is built: no torch)
    check_quickstart_s  `mrc check specs/quickstart.mrs` (binds: imports torch, loads the digits, traces)
    train_steps1_s      `mrc train specs/quickstart.mrs --steps 1` (the whole command: it also
                        evaluates and saves the run)

and, from that same train command,

    first_step_s        seconds from the start of the process to its first training step, as
                        the run records it (summary.json's `first_step_s`, mrc.uptime). A tree
                        that predates the record (a baseline) is timed at the same point, the
                        entry of `Trainer._loop`, by a wrapper that reads the same clock.

Each whole command's CPU seconds (user + system) come with it (`…_cpu_s`): on a machine shared
with other work they move less than its wall time.

The contenders are this tree and `--baseline REV` (default: the commit before the start-up work),
checked out with `git worktree` and put first on PYTHONPATH; each repeat runs every command of
both, in a rotated order, so drift in the machine hits both alike. Medians [min–max] over the
repeats, and the baseline/this ratio (above 1: this tree starts faster).

    python bench/startup.py [--repeats 7] [--baseline f5e121d]

Last line: {"check_error_s": {"this": {...}, "baseline": {...}, "speedup": {...}}, ..., "first_step_s": …}
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _common import Spread, interleaved, ratios

from mrc import uptime  # the clock of summary.json's first_step_s, also given to a baseline's wrapper

ROOT = Path(__file__).resolve().parents[1]

BAD_SPEC = "model mlp\ndata digits\noptimizer sgd(lr = -1)\ntrain(epochs=1)\n"
FIRST_STEP = "first_step_s="
WRAPPER = inspect.getsource(uptime) + f"""
import sys
from mrc.cli import main
from mrc.runtime.trainer import Trainer

_loop = Trainer._loop


def timed(self, *args, **kwargs):
    print("{FIRST_STEP}%r" % process_age(), file=sys.stderr)
    return _loop(self, *args, **kwargs)


Trainer._loop = timed
sys.exit(main(sys.argv[1:]))
"""
"""`python -c WRAPPER train …`: a tree without summary.json's `first_step_s`, timed at the point
where mrc takes it (the entry of the training loop)."""


@dataclass(frozen=True)
class Timed:
    """One command: seconds from launch to exit (`wall`), the CPU seconds it used (user + system,
    its children included: less sensitive than `wall` to a machine shared with other work) and
    its stderr."""

    wall: float
    cpu: float
    stderr: str


def command(tree: Path, args: list[str], wrapped: bool = False) -> Timed:
    """`python -m mrc.cli ARGS` with `tree` first on the path, timed; run from a neutral folder,
    as the working directory would come first on the path. `wrapped`: through WRAPPER instead."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    launch = ["-c", WRAPPER] if wrapped else ["-m", "mrc.cli"]
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *launch, *args], env=env, cwd=tree.parent, capture_output=True,
                          text=True, timeout=600)
    wall = time.perf_counter() - start
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    expected = 2 if args[0] == "check" and args[1].endswith("bad.mrs") else 0  # only the bad spec fails
    if done.returncode != expected:
        last = done.stderr.strip().splitlines()[-1:]
        raise SystemExit(f"{' '.join(args)} exited {done.returncode} in {tree}: {last}")
    return Timed(wall, now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime, done.stderr)


def check(tree: Path, spec: str, measure: str) -> dict[str, float]:
    """`mrc check SPEC`: its seconds and CPU seconds."""
    timed = command(tree, ["check", spec])
    return {measure: timed.wall, measure.removesuffix("_s") + "_cpu_s": timed.cpu}


def where_mrc(tree: Path) -> list[str]:
    """The files `mrc` and `mrc.passes` are imported from with `tree` first on PYTHONPATH (both
    must lie in it: the installed package maps mrc.passes to the installed tree's passes/)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = "import mrc, mrc.passes; print(mrc.__file__); print(mrc.passes.__file__)"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=tree.parent,
                          capture_output=True, text=True, check=True).stdout.split()


class Train:
    """`mrc train specs/quickstart.mrs --steps 1` into a fresh folder: the whole command's
    seconds and CPU seconds, and the first step's (from summary.json, else the wrapper's line)."""

    def __init__(self, tree: Path, tmp: Path, quick: str) -> None:
        self.tree, self.tmp, self.quick = tree, tmp, quick
        self.wrapped = False  # until the warm-up run shows the tree does not record the first step
        timed, out = self.run()
        self.wrapped = self.first_step(timed.stderr, out) is None

    def run(self) -> tuple[Timed, Path]:
        out = Path(tempfile.mkdtemp(dir=self.tmp)) / "run"  # a run never overwrites another
        return command(self.tree, ["train", self.quick, "--steps", "1", "--out", str(out)], self.wrapped), out

    def first_step(self, stderr: str, out: Path) -> float | None:
        recorded = json.loads((out / "summary.json").read_text()).get("first_step_s")
        if recorded is not None:
            return float(recorded)
        said = [line for line in stderr.splitlines() if line.startswith(FIRST_STEP)]
        return float(said[-1][len(FIRST_STEP):]) if said else None

    def __call__(self) -> dict[str, float]:
        timed, out = self.run()
        first = self.first_step(timed.stderr, out)
        if first is None:
            raise SystemExit(f"no first-step time from {self.tree}")
        return {"first_step_s": first, "train_steps1_s": timed.wall, "train_steps1_cpu_s": timed.cpu}


MEASURES = ("check_error_s", "check_quickstart_s", "first_step_s", "train_steps1_s",
            "check_error_cpu_s", "check_quickstart_cpu_s", "train_steps1_cpu_s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--baseline", default="f5e121d", help="the git revision to compare with")
    args = ap.parse_args()
    if uptime.process_age() is None:
        raise SystemExit("bench/startup.py reads process start times from /proc (Linux)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base = tmp / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.baseline],
                       check=True)
        # the installed package maps mrc.passes / mrc.kernels / mrc.grammar to this tree's
        # folders: links inside the baseline's mrc/ make it import its own (found first)
        for sub in ("passes", "kernels", "grammar"):
            if (base / sub).is_dir() and not (base / "mrc" / sub).exists():
                (base / "mrc" / sub).symlink_to(base / sub, target_is_directory=True)
        try:
            trees = {"this": ROOT, "baseline": base}
            for name, tree in trees.items():  # each contender runs its own code
                found = where_mrc(tree)
                assert all(f.startswith(str(tree)) for f in found), (name, found)
            bad = tmp / "bad.mrs"
            bad.write_text(BAD_SPEC)
            quick = str(ROOT / "specs" / "quickstart.mrs")
            contenders: dict[str, Callable[[], dict[str, float]]] = {}
            for t, tree in trees.items():
                contenders[f"check-error/{t}"] = lambda tree=tree: check(tree, str(bad), "check_error_s")
                contenders[f"check/{t}"] = lambda tree=tree: check(tree, quick, "check_quickstart_s")
                # made here: its warm-up run (as the others' below) compiles the fresh checkout's .pyc
                contenders[f"train/{t}"] = Train(tree, tmp, quick)
            for name, run in contenders.items():
                if not name.startswith("train/"):
                    run()  # a warm-up each
            got = interleaved(contenders, args.repeats)
            wrapped = {t: contenders[f"train/{t}"].wrapped for t in trees}
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
            shutil.rmtree(base, ignore_errors=True)
    series = {f"{m}/{name.partition('/')[2]}": [r[m] for r in runs]
              for name, runs in got.items() for m in runs[0]}
    print(f"{args.repeats} repeats, interleaved; seconds, median [min–max]; speed-up = baseline / this; "
          "_cpu_s: CPU seconds (user + system) of the same commands"
          + ("; baseline's first step timed by the wrapper" if wrapped["baseline"] else ""))
    print(f"{'measure':<24} {'this tree':>22} {'baseline ' + args.baseline:>22} {'speed-up':>22}")
    out: dict[str, object] = {}
    for m in MEASURES:
        this, baseline = Spread.of(series[f"{m}/this"]), Spread.of(series[f"{m}/baseline"])
        speed = ratios(series[f"{m}/baseline"], series[f"{m}/this"])
        print(f"{m:<24} {this.fmt():>22} {baseline.fmt():>22} {speed.fmt(digits=2):>22}")
        out[m] = {"this": this.as_json(), "baseline": baseline.as_json(), "speedup": speed.as_json()}
    print(json.dumps({**out, "baseline": args.baseline, "repeats": args.repeats,
                      "first_step_wrapped": wrapped}))


if __name__ == "__main__":
    main()
