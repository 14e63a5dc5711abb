"""`mrc plot`: one figure of one or several run directories, drawn from their metrics.jsonl.

Each run gets a colour and all runs share every panel, so runs are compared side by side on the
same axes. The panels are chosen from what the runs recorded (a panel no run has data for is
left out), or by `--metric`:

    loss      training loss (solid) and validation loss (dashed) against the step
    val_acc   validation accuracy (and each `eval` set's) against the step
    time      loss and validation accuracy against wall time (a resumed run's clock continues
              where the interrupted run's stopped)
    lr        each partition's learning rate against the step
    brains    each brain's validation accuracy and loss against the merged model's
    modules   each module's loss, transport cost and τ (or λ)
    mgrit     each stack's last forward/adjoint residual norm and convergence factor

Drawn with matplotlib's Agg backend (no display needed) into a PNG.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"


class PlotError(Exception):
    """A run or a metric that cannot be plotted; the message says why in one line."""


@dataclass
class RunData:
    """One run directory's records: training records (loss, lr, …) and evaluation records."""

    path: Path
    label: str
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)


Series = tuple[str, list[float], list[float]]
"""A line: its label, x values, y values."""


@dataclass
class Panel:
    """One axes of the figure: which records it draws and how."""

    name: str
    title: str
    xlabel: str
    ylabel: str
    series: Callable[[RunData], list[Series]]
    log: bool = False  # a log y axis when every value is positive and they span a decade


def read_run(path: Path, label: str | None = None) -> RunData:
    """The records of the run in `path`; PlotError if it is not a run directory or has none.

    Lines that do not parse (a run killed while writing one) are skipped. `time` is made to run
    on across a resume: a resumed run's clock starts again at 0, so each restart is offset by
    the time the run had reached before it."""
    file = path / METRICS
    if not path.is_dir():
        raise PlotError(f"{path} is not a directory")
    if not file.is_file():
        raise PlotError(f"{path} is not a run directory (it has no {METRICS})")
    run = RunData(path, label or path.name)
    offset = last = 0.0
    for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or "step" not in rec:
            continue
        if isinstance(rec.get("time"), int | float):
            if rec["time"] + offset < last:  # the clock restarted: a resume
                offset = last
            rec = {**rec, "time": rec["time"] + offset}
            last = rec["time"]
        if "val_loss" in rec or "val_acc" in rec:
            run.evals.append(rec)
        if "loss" in rec or "lr" in rec:
            run.train.append(rec)
    if not run.train and not run.evals:
        raise PlotError(f"{path} has no metrics records yet")
    return run


def series_of(recs: list[dict[str, Any]], x: str,
              get: Callable[[dict[str, Any]], Any]) -> tuple[list[float], list[float]]:
    """The (x, y) points of the records where `get(record)` is a number (a record without the
    value, or with a None, is skipped). Also used by the reproductions' curves (bench/repro.py)."""
    xs, ys = [], []
    for rec in recs:
        try:
            value = get(rec)
        except (KeyError, TypeError, IndexError):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool) and isinstance(rec.get(x), int | float):
            xs.append(float(rec[x]))
            ys.append(float(value))
    return xs, ys


def _series(*lines: tuple[str, tuple[list[float], list[float]]]) -> list[Series]:
    return [(label, xs, ys) for label, (xs, ys) in lines if xs]


def _loss(x: str) -> Callable[[RunData], list[Series]]:
    return lambda r: _series(("train loss", series_of(r.train, x, lambda d: d["loss"])),
                             ("val loss", series_of(r.evals, x, lambda d: d["val_loss"])))


def _acc(x: str) -> Callable[[RunData], list[Series]]:
    def series(r: RunData) -> list[Series]:
        names = sorted({n for rec in r.evals for n in rec.get("evals") or {}})
        return _series(("val acc", series_of(r.evals, x, lambda d: d["val_acc"])),
                       *((f"{n} acc", series_of(r.evals, x, lambda d, n=n: d["evals"][n]["acc"])) for n in names))
    return series


def _keys(recs: list[dict[str, Any]], key: str) -> list[str]:
    """The names under `rec[key]` over all records, in first-seen order."""
    seen: dict[str, None] = {}
    for rec in recs:
        for name in rec.get(key) or {}:
            seen.setdefault(name, None)
    return list(seen)


def _lr(r: RunData) -> list[Series]:
    return _series(*((p, series_of(r.train, "step", lambda d, p=p: d["lr"][p])) for p in _keys(r.train, "lr")))


def _brains(measure: str) -> Callable[[RunData], list[Series]]:
    def series(r: RunData) -> list[Series]:
        with_brains = [rec for rec in r.evals if isinstance(rec.get("brains"), dict) and rec["brains"]]
        if not with_brains:
            return []
        names = _keys(with_brains, "brains")
        return _series(*((n, series_of(with_brains, "step", lambda d, n=n: d["brains"][n][measure])) for n in names),
                       ("merged", series_of(with_brains, "step", lambda d: d[measure])))
    return series


def _modules(*measures: str) -> Callable[[RunData], list[Series]]:
    def series(r: RunData) -> list[Series]:
        out: list[Series] = []
        for m in _keys(r.train, "modules"):
            for measure in measures:
                xs, ys = series_of(r.train, "step", lambda d, m=m, k=measure: d["modules"][m][k])
                if xs:
                    out.append((m if len(measures) == 1 else f"{m} {'τ' if measure == 'tau' else 'λ'}", xs, ys))
        return out
    return series


def _mgrit(kind: str) -> Callable[[RunData], list[Series]]:
    def series(r: RunData) -> list[Series]:
        out: list[Series] = []
        for stack in _keys(r.train, "mgrit"):
            for side in ("forward", "adjoint"):
                key = side if kind == "residual" else f"{side}_factor"
                xs, ys = series_of(r.train, "step", lambda d, s=stack, k=key: d["mgrit"][s][k][-1])
                if xs:
                    out.append((f"{stack} {side}", xs, ys))
        return out
    return series


PANELS: list[Panel] = [
    Panel("loss", "loss", "step", "loss", _loss("step"), log=True),
    Panel("val_acc", "validation accuracy", "step", "accuracy", _acc("step")),
    Panel("loss_time", "loss against wall time", "wall time (s)", "loss", _loss("time"), log=True),
    Panel("val_acc_time", "validation accuracy against wall time", "wall time (s)", "accuracy", _acc("time")),
    Panel("lr", "learning rate per partition", "step", "learning rate", _lr),
    Panel("brains_acc", "brains: validation accuracy", "step", "accuracy", _brains("val_acc")),
    Panel("brains_loss", "brains: validation loss", "step", "loss", _brains("val_loss"), log=True),
    Panel("modules_loss", "modules: loss", "step", "loss", _modules("loss"), log=True),
    Panel("modules_transport", "modules: transport", "step", "transport", _modules("transport")),
    Panel("modules_tau", "modules: τ / λ", "step", "τ or λ", _modules("tau", "lambda")),
    Panel("mgrit_residual", "MGRIT: last residual norm", "step", "residual", _mgrit("residual"), log=True),
    Panel("mgrit_factor", "MGRIT: convergence factor", "step", "factor", _mgrit("factor")),
]

METRIC_PANELS: dict[str, list[str]] = {
    "loss": ["loss"], "val_loss": ["loss"], "train_loss": ["loss"],
    "val_acc": ["val_acc"], "acc": ["val_acc"], "evals": ["val_acc"],
    "time": ["loss_time", "val_acc_time"],
    "lr": ["lr"],
    "brains": ["brains_acc", "brains_loss"],
    "modules": ["modules_loss", "modules_transport", "modules_tau"],
    "tau": ["modules_tau"], "lambda": ["modules_tau"], "transport": ["modules_transport"],
    "mgrit": ["mgrit_residual", "mgrit_factor"],
}
"""What `--metric NAME` selects (panel names are accepted too)."""

STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v"]


def labels(paths: Sequence[Path]) -> list[str]:
    """Each run's name in legends: its directory's name, or its path where two names clash."""
    names = [p.name or str(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


def choose(runs: list[RunData], metrics: Sequence[str] | None) -> list[tuple[Panel, list[list[Series]]]]:
    """The panels to draw with each run's lines; PlotError for an unknown metric or one that no
    run has."""
    by_name = {p.name: p for p in PANELS}
    if metrics:
        wanted: list[str] = []
        for m in metrics:
            names = METRIC_PANELS.get(m) or ([m] if m in by_name else None)
            if names is None:
                known = ", ".join(sorted(METRIC_PANELS))
                raise PlotError(f"unknown metric `{m}` (known: {known})")
            drawn = [n for n in names if any(by_name[n].series(r) for r in runs)]
            if not drawn:
                raise PlotError(f"no run has `{m}` metrics ({', '.join(str(r.path) for r in runs)})")
            wanted.extend(n for n in drawn if n not in wanted)
        chosen = [by_name[n] for n in wanted]
    else:
        chosen = list(PANELS)
    out = []
    for panel in chosen:
        lines = [panel.series(r) for r in runs]
        if any(lines):
            out.append((panel, lines))
    return out


X_AXES = {"step": "step", "epoch": "epoch", "time": "wall time (s)"}
"""What `--x` may put on the horizontal axis of the step panels, with its label."""


def plot(paths: Sequence[Path], metrics: Sequence[str] | None = None, out: Path | None = None, *,
         x: str = "step", smooth: float = 0.0) -> Path:
    """Draw the runs in `paths` into a PNG (default `plot.png` in the first run's directory) and
    return where it was written. x: `step`, `epoch` or `time` on the horizontal axis of the
    panels drawn against the step. smooth: in [0, 1), an exponential moving average of the
    dense lines (TensorBoard's smoothing), drawn over the faint raw line. Raises PlotError
    with a one-line reason."""
    if not paths:
        raise PlotError("give at least one run directory")
    if x not in X_AXES:
        raise PlotError(f"--x {x}: choose one of {', '.join(X_AXES)}")
    if not 0.0 <= smooth < 1.0:
        raise PlotError(f"--smooth {smooth}: give a weight in [0, 1), e.g. 0.6")
    runs = [read_run(Path(p), name) for p, name in zip(paths, labels([Path(p) for p in paths]), strict=True)]
    if x != "step":
        for r in runs:  # the step panels read `step`: give them the chosen axis instead
            r.train = [{**rec, "step": rec.get(x)} for rec in r.train]
            r.evals = [{**rec, "step": rec.get(x)} for rec in r.evals]
    panels = choose(runs, metrics)
    if x != "step":
        panels = [(dataclasses.replace(p, xlabel=X_AXES[x]) if p.xlabel == "step" else p, lines)
                  for p, lines in panels if not (x == "time" and p.xlabel.startswith("wall time"))]
    if not panels:
        raise PlotError("the runs have nothing to plot")
    target = Path(out) if out is not None else runs[0].path / "plot.png"
    figure = draw(runs, panels, smooth)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, dpi=figure.dpi)
    except OSError as err:
        raise PlotError(f"cannot write {target}: {err.strerror or err}") from None
    return target


SPARSE = 20
"""A series with at most this many points is drawn with a marker at each (one point is visible)."""


def ema(ys: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: s_t = w·s_{t−1} + (1 − w)·y_t, debiased for the first points."""
    out, last, norm = [], 0.0, 0.0
    for y in ys:
        last = weight * last + (1 - weight) * y
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


def draw(runs: list[RunData], panels: list[tuple[Panel, list[list[Series]]]], smooth: float = 0.0) -> Any:
    """The figure (a matplotlib Figure on the Agg canvas): a grid of panels, a colour per run
    (with one run: a colour per line), a line style and a marker per line, so equal lines stay
    visible; sparse series get a marker at each point; `smooth` > 0 draws dense lines as their
    moving average over the faint raw line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.2 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    several = len(runs) > 1
    for i, (panel, lines) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        values: list[float] = []
        for r, (run, series) in enumerate(zip(runs, lines, strict=True)):
            for s, (label, xs, ys) in enumerate(series):
                colour = f"C{r % 10}" if several else f"C{s % 10}"
                style = STYLES[s % len(STYLES)]
                width = 2.0 if label == "merged" else 1.3
                sparse = len(xs) <= SPARSE
                marker = MARKERS[s % len(MARKERS)] if sparse else None
                shown = ys
                if smooth > 0 and not sparse:
                    ax.plot(xs, ys, "-", color=colour, linewidth=0.8, alpha=0.25)
                    shown = ema(ys, smooth)
                ax.plot(xs, shown, style, color=colour, linewidth=width, marker=marker, markersize=4,
                        label=f"{run.label}: {label}" if several else label)
                values.extend(ys)
        if panel.log and values and min(values) > 0 and max(values) > 10 * min(values):
            ax.set_yscale("log")  # only where the values span more than a decade
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel, fontsize=9)
        ax.set_ylabel(panel.ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if sum(len(s) for s in lines) > 1:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("  vs  ".join(r.label for r in runs), fontsize=11)
    return fig


Band = tuple[list[float], list[float]]
"""One seed's curve: x values, y values."""


def bands(path: Path, panels: Sequence[tuple[str, str, str, Any]], title: str = "") -> Path:
    """Draw curves repeated over seeds as their median with a min–max band, one colour per label.

    `panels` holds (title, xlabel, ylabel, {label: [curve per seed]}); each seed's curve is a
    Band. The seeds' curves are put on the first seed's x values (they are logged at the same
    steps; a shorter curve ends the band where it ends). Used by the reproductions (bench/repro.py),
    which compare contenders over several seeds. Returns `path`."""
    import statistics

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, xlabel, ylabel, lines) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for c, (label, seeds) in enumerate(lines.items()):
            seeds = [s for s in seeds if s[0]]
            if not seeds:
                continue
            n = min(len(s[0]) for s in seeds)
            xs = seeds[0][0][:n]
            columns = [[s[1][j] for s in seeds] for j in range(n)]
            med = [statistics.median(col) for col in columns]
            colour = f"C{c % 10}"
            style = STYLES[(c // 10) % len(STYLES)]
            marker = "o" if n == 1 else None  # a one-point series is a dot, not an invisible line
            ax.plot(xs, med, style, color=colour, marker=marker, linewidth=1.5,
                    label=f"{label} (n={len(seeds)})" if len(seeds) > 1 else label)
            if len(seeds) > 1:
                ax.fill_between(xs, [min(col) for col in columns], [max(col) for col in columns],
                                color=colour, alpha=0.18, linewidth=0)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)
    return path
