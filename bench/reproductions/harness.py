"""What every reproduction shares: cached runs, spreads over seeds, tables, figures, reports.

An experiment is a module of this package with

    NAME: str            the command-line name (`python bench/repro.py NAME`)
    TITLE: str           one line for the summary table
    SEED_DOC: str        the seed document behind it (a file in shared/seeds/)
    CLAIM: str           the seed's claim, one or two sentences, quoted in the report
    def runs(scale: str, seeds: list[int]) -> list[Run]
    def report(results: Results) -> Finding

`runs` lists the work: each `Run` has a key (a relative folder name, unique in the experiment)
and a function that does the work in a fresh folder and returns a JSON-able result. The harness
caches each result in `<runs>/<scale>/<NAME>/<key>/result.json`, so a killed `--all` continues
where it stopped and `report` can be rewritten and rerun without training again. `report` reads
the results (and the run folders, for curves) and returns the verdict, the key numbers and the
markdown body of `docs/reproductions/NAME.md`.

Training goes through mrc's own API (`train` below), never a second loop; curves are read with
`mrc plot`'s reader and drawn with its figure code (`mrc.plot.bands`).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs" / "repro"
DOCS = ROOT / "docs" / "reproductions"
VERDICTS = ("reproduced", "partly", "not reproduced")


@dataclass(frozen=True)
class Run:
    """One unit of cached work: `work(folder)` runs in an empty `folder` and returns a JSON-able
    dict (numbers, lists, strings). `key` is a relative folder name, e.g. `small_lr/seed0`."""

    key: str
    work: Callable[[Path], dict[str, Any]]


@dataclass
class Finding:
    """An experiment's outcome: the verdict (one of VERDICTS), the key numbers (for the JSON
    line and the summary table) and the markdown body of its report (setup, results with spread,
    figures, what was varied, what would change the verdict)."""

    verdict: str
    numbers: dict[str, Any]
    body: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")


@dataclass
class Results:
    """The cached results of an experiment's runs, by key, with where each run worked."""

    name: str
    scale: str
    seeds: list[int]
    values: dict[str, dict[str, Any]]
    folders: dict[str, Path]
    seconds: float = 0.0  # the summed wall time of the runs (cached runs count their first time)
    figures: list[Path] = field(default_factory=list)

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.values[key]

    def figure(self, stem: str) -> tuple[Path, str]:
        """Where to save a figure named `stem` and the markdown that shows it in the report."""
        path = DOCS / f"{self.name}_{stem}.png"
        self.figures.append(path)
        return path, f"![{stem}]({path.name})"


# --------------------------------------------------------------------------- running


def device(scale: str) -> str:
    """The device a scale trains on: the CPU at small scale, CUDA at full scale when there is one."""
    if scale == "full":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def train(spec: str | Path, folder: Path, overrides: Mapping[str, Any] | Sequence[str] = (),
          **kwargs: Any) -> dict[str, Any]:
    """Train `spec` (a path, or a name in specs/repro/) through `mrc.api.train` into `folder`;
    return its summary.json plus `curves` (the run's metrics records) and `wall_s`. The run's
    own printing goes to `folder/log.txt`, so the harness's progress lines stay readable."""
    from mrc.api import train as mrc_train

    path = Path(spec)
    if not path.is_absolute() and not path.exists():
        path = SPECS / path
    items = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, Mapping) else list(overrides)
    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        result = mrc_train(path, out=folder, overrides=items, progress=False, tensorboard=False, **kwargs)
    (folder / "log.txt").write_text(buffer.getvalue(), encoding="utf-8")
    return {**result.summary, "status": result.status, "wall_s": time.perf_counter() - start,
            "curves": [m for m in result.metrics if isinstance(m, dict)]}


def execute(module: Any, scale: str, seeds: list[int], runs_root: Path, fresh: bool = False,
            say: Callable[[str], None] = print, cached_only: bool = False) -> Results:
    """Run (or read from the cache) every run of `module` at `scale` and return the results.
    cached_only: train nothing; a run that is not cached is an error naming it."""
    base = runs_root / scale / module.NAME
    todo: list[Run] = module.runs(scale, seeds)
    keys = [r.key for r in todo]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{module.NAME}: duplicate run keys")
    results = Results(module.NAME, scale, seeds, {}, {})
    for i, run in enumerate(todo, 1):
        folder = base / run.key
        cache = folder / "result.json"
        results.folders[run.key] = folder
        if cache.is_file() and not fresh:
            value = json.loads(cache.read_text(encoding="utf-8"))
            say(f"  [{i}/{len(todo)}] {run.key}: cached")
        elif cached_only:
            raise SystemExit(f"{module.NAME}: run {run.key} is not in {base} yet: run the experiment "
                             "without --report-only first")
        else:
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            start = time.perf_counter()
            value = run.work(folder)
            value = {**value, "_seconds": time.perf_counter() - start}
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(value), encoding="utf-8")
            tmp.replace(cache)  # atomic: a killed run leaves no half-written result
            say(f"  [{i}/{len(todo)}] {run.key}: {value['_seconds']:.0f} s")
        results.values[run.key] = value
        results.seconds += float(value.get("_seconds", 0.0))
    return results


# --------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class Spread:
    """The median of per-seed values with their min and max."""

    median: float
    lo: float
    hi: float
    n: int

    def __str__(self) -> str:
        return self.format()

    def format(self, digits: int = 3, percent: bool = False) -> str:
        scale, unit = (100.0, "") if percent else (1.0, "")
        d = max(digits - 2, 0) if percent else digits
        m, lo, hi = (f"{v * scale:.{d}f}" for v in (self.median, self.lo, self.hi))
        return f"{m}{unit} [{lo}–{hi}]" if self.n > 1 else f"{m}{unit}"

    def json(self, digits: int = 4) -> dict[str, float]:
        return {"median": round(self.median, digits), "min": round(self.lo, digits), "max": round(self.hi, digits)}


def spread(values: Iterable[float]) -> Spread:
    """The median and range of `values` (NaN-free; an empty list is an error)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("spread of no values")
    return Spread(statistics.median(vals), min(vals), max(vals), len(vals))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def curve(result: Mapping[str, Any], key: str | Callable[[dict[str, Any]], Any],
          x: str = "epoch") -> tuple[list[float], list[float]]:
    """One metric's curve from a `train` result's records: `key` is a record field (`val_acc`,
    `loss`, `evals.clean.acc` with dots for nesting) or a function of a record."""
    from mrc.plot import series_of

    parts = [] if callable(key) else key.split(".")
    get = key if callable(key) else (lambda rec: _dig(rec, parts))
    return series_of(result.get("curves", []), x, get)


def _dig(rec: Any, parts: list[str]) -> Any:
    for p in parts:
        rec = rec[p]
    return rec


def bands(path: Path, panels: Sequence[tuple[str, str, str, Mapping[str, list[tuple[list[float], list[float]]]]]],
          title: str = "") -> Path:
    """Draw panels of median curves with min–max bands over seeds (see `mrc.plot.bands`)."""
    from mrc.plot import bands as draw_bands

    return draw_bands(path, panels, title)


# --------------------------------------------------------------------------- reports


def write_report(module: Any, results: Results, finding: Finding) -> Path:
    """docs/reproductions/NAME.md (verdict first) and NAME.json (for the summary table)."""
    DOCS.mkdir(parents=True, exist_ok=True)
    minutes = results.seconds / 60
    seeds = ", ".join(str(s) for s in results.seeds)
    head = (f"**Verdict: {finding.verdict}.** {module.TITLE}\n\n"
            f"# Reproduction: {module.NAME}\n\n"
            f"> Seed: `shared/seeds/{module.SEED_DOC}`. Claim: {module.CLAIM}\n\n"
            f"Scale `{results.scale}`, seeds {seeds}; the runs took {minutes:.1f} min "
            f"({time.strftime('%Y-%m-%d')}, {_machine()}).\n"
            f"Rerun: `python bench/repro.py {module.NAME} --scale {results.scale} "
            f"--seeds {','.join(map(str, results.seeds))}`.\n\n")
    path = DOCS / f"{module.NAME}.md"
    path.write_text(head + finding.body.strip() + "\n", encoding="utf-8")
    record = {"name": module.NAME, "title": module.TITLE, "verdict": finding.verdict, "scale": results.scale,
              "seeds": results.seeds, "minutes": round(minutes, 1), "date": time.strftime("%Y-%m-%d"),
              "machine": _machine(), "numbers": finding.numbers}
    (DOCS / f"{module.NAME}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def write_summary(order: Sequence[str]) -> Path:
    """docs/reproductions.md: one row per experiment that has a report, in `order`."""
    rows = []
    for name in order:
        file = DOCS / f"{name}.json"
        if not file.is_file():
            rows.append((f"`{name}`", "—", "not run yet", "", ""))
            continue
        rec = json.loads(file.read_text(encoding="utf-8"))
        rows.append((f"[`{name}`](reproductions/{name}.md)", rec["title"], f"**{rec['verdict']}**",
                     f"{rec['scale']}, {len(rec['seeds'])} seeds, {rec['minutes']} min", rec["date"]))
    text = ("# Reproductions\n\n"
            "Each seed's headline experiment, rerun with mrc on real data (Fashion-MNIST unless the "
            "report says otherwise) by `python bench/repro.py NAME` (or `--all`). Each report states "
            "its verdict in its first line, the setup, the results over seeds with their spread "
            "(median [min–max]), the curves, and what was varied; negative results are reported as "
            "such. The time is the wall time of the runs as they were made (bench/RESULTS.md gives each "
            "experiment's standalone time).\n\n"
            + table(("experiment", "what", "verdict", "scale, seeds, time", "date"), rows) + "\n")
    path = DOCS.parent / "reproductions.md"
    path.write_text(text, encoding="utf-8")
    return path


def _machine() -> str:
    import os
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"
