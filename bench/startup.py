"""Start-up: how long mrc takes before it does anything, against an earlier commit.

Three whole commands, each a fresh process, timed from launch to exit:

    check-error   `mrc check` of a spec with an error (reported before anything is built: no torch)
    check         `mrc check specs/quickstart.mrs` (binds: imports torch, loads the digits, traces)
    first-step    `mrc train specs/quickstart.mrs --steps 1` (an upper bound on the time to the
                  first training step: it also saves the run)

The contenders are this tree and `--baseline REV` (default: the commit before the start-up work),
checked out with `git worktree` and put first on PYTHONPATH; each repeat runs every command of
both, in a rotated order, so drift in the machine hits both alike. Medians [min–max] over the
repeats, and the baseline/this ratio (above 1: this tree starts faster).

    python bench/startup.py [--repeats 7] [--baseline f5e121d]

Last line: {"check-error": {"this": {...}, "baseline": {...}, "speedup": {...}}, ...}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Spread, interleaved, ratios

ROOT = Path(__file__).resolve().parents[1]
BAD_SPEC = "model mlp\ndata digits\noptimizer sgd(lr = -1)\ntrain(epochs=1)\n"


def command(tree: Path, args: list[str]) -> float:
    """Seconds from launching `python -m mrc.cli ARGS` with `tree` first on the path to its exit
    (run from a neutral folder: the working directory would come first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mrc.cli", *args], env=env, cwd=tree.parent, capture_output=True,
                          text=True, timeout=600)
    seconds = time.perf_counter() - start
    expected = 2 if args[0] == "check" and args[1].endswith("bad.mrs") else 0  # only the bad spec fails
    if done.returncode != expected:
        last = done.stderr.strip().splitlines()[-1:]
        raise SystemExit(f"{' '.join(args)} exited {done.returncode} in {tree}: {last}")
    return seconds


def where_mrc(tree: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", "import mrc; print(mrc.__file__)"], env=env, cwd=tree.parent,
                          capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--baseline", default="f5e121d", help="the git revision to compare with")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.baseline],
                       check=True)
        try:
            trees = {"this": ROOT, "baseline": base}
            for name, tree in trees.items():  # each contender runs its own code
                assert where_mrc(tree).startswith(str(tree)), (name, where_mrc(tree))
            bad = Path(tmp) / "bad.mrs"
            bad.write_text(BAD_SPEC)
            quick = str(ROOT / "specs" / "quickstart.mrs")
            commands = {
                "check-error": lambda _t: ["check", str(bad)],
                "check": lambda _t: ["check", quick],
                "first-step": lambda _t: ["train", quick, "--steps", "1", "--out",  # a fresh folder each time
                                          str(Path(tempfile.mkdtemp(dir=tmp)) / "run")],
            }
            contenders = {f"{m}/{t}": (lambda m=m, t=t: command(trees[t], commands[m](t)))
                          for m in commands for t in trees}
            for run in contenders.values():  # a warm-up each: compiles the fresh checkout's .pyc files
                run()
            got = interleaved(contenders, args.repeats)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
            shutil.rmtree(base, ignore_errors=True)
    print(f"{args.repeats} repeats, interleaved; seconds, median [min–max]; speed-up = baseline / this")
    print(f"{'command':<12} {'this tree':>22} {'baseline ' + args.baseline:>22} {'speed-up':>22}")
    out: dict[str, dict[str, object]] = {}
    for m in commands:
        this, baseline = Spread.of(got[f"{m}/this"]), Spread.of(got[f"{m}/baseline"])
        speed = ratios(got[f"{m}/baseline"], got[f"{m}/this"])
        print(f"{m:<12} {this.fmt():>22} {baseline.fmt():>22} {speed.fmt(digits=2):>22}")
        out[m] = {"this": this.as_json(), "baseline": baseline.as_json(), "speedup": speed.as_json()}
    print(json.dumps({**out, "baseline": args.baseline, "repeats": args.repeats}))


if __name__ == "__main__":
    main()
