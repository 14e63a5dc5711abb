"""What a sweep shows and leaves behind: the table of trials, `best.mrs`, `trials.csv`, plots.

`best.mrs` is the spec's own text with the best trial's values written where the spec writes
each key (`Sweep.sites`: the value replaced, or `, name=value` added after the statement's last
argument) and the `sweep` statement removed, so `mrc train OUT/best.mrs` trains the best
configuration as it is. Relative file names in the spec (data files, user code) are made
absolute, since best.mrs lives in another directory than the spec.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mrc.program import Sweep
from mrc.sweep.study import first_line, override_text

STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
               TrialState.RUNNING: "running", TrialState.WAITING: "queued"}


def state_name(t: FrozenTrial) -> str:
    """A trial's state for people: complete, pruned, failed, interrupted, running, queued."""
    if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
        return "interrupted"
    return STATE_NAMES.get(t.state, t.state.name.lower())


def value_texts(sweep: Sweep, t: FrozenTrial) -> dict[str, str]:
    """The trial's parameters as spec text (what it was trained with, exactly)."""
    return {s.key: override_text(s, t.params[s.key]) for s in sweep.spaces if s.key in t.params}


def shown(text: str) -> str:
    """A value as tables and comments show it: a float at 4 significant digits (the exact value
    stays in the study and in the spec text written); anything else as it is."""
    try:
        number = float(text)
    except ValueError:
        return text
    return text if text.lstrip("-").isdigit() else f"{number:.4g}"


def shown_values(sweep: Sweep, t: FrozenTrial) -> dict[str, str]:
    """The trial's parameters as tables show them (`shown`)."""
    return {k: shown(v) for k, v in value_texts(sweep, t).items()}


def _number(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def trial_line(sweep: Sweep, t: FrozenTrial) -> str:
    """One finished trial as a plain line (the table off a terminal)."""
    values = " ".join(f"{k}={v}" for k, v in shown_values(sweep, t).items())
    metric = f"{sweep.metric} {_number(t.value)}" if t.value is not None else ""
    reason = t.user_attrs.get("reason") if t.state != TrialState.COMPLETE else None
    return "  ".join(p for p in (f"trial {t.number:4d}", f"{state_name(t):11s}", metric, values,
                                 f"({reason})" if reason else "") if p)


def table(sweep: Sweep, trials: list[FrozenTrial], wanted: int, best: FrozenTrial | None, last: int = 20) -> Any:
    """A rich Table of the last `last` trials, the best one marked."""
    from rich.table import Table

    counted = sum(1 for t in trials if state_name(t) not in ("interrupted",))
    done = sum(1 for t in trials if t.state.is_finished() and state_name(t) != "interrupted")
    tab = Table(title=f"sweep: {done} of {wanted} trials done ({counted - done} running or queued)",
                title_justify="left")
    tab.add_column("trial", justify="right")
    tab.add_column("state")
    tab.add_column(sweep.metric, justify="right")
    for s in sweep.spaces:
        tab.add_column(s.key)
    tab.add_column("note", overflow="fold")
    for t in trials[-last:]:
        values = shown_values(sweep, t)
        mark = " *" if best is not None and t.number == best.number else ""
        note = t.user_attrs.get("reason", "") if t.state != TrialState.COMPLETE else ""
        tab.add_row(f"{t.number}{mark}", state_name(t), _number(t.value) if t.value is not None else "",
                    *(values.get(s.key, "") for s in sweep.spaces), str(note))
    return tab


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial, or None while there is none."""
    try:
        return study.best_trial
    except ValueError:
        return None


# --- best.mrs --------------------------------------------------------------------------------

def best_spec_text(spec: str | Path, sweep: Sweep, trial: FrozenTrial, study_name: str) -> tuple[str, list[str]]:
    """The spec's text with `trial`'s values written in and its `sweep` removed. Returns the
    text and the keys that had no place in the spec to write them (they need `--set`)."""
    from mrc.spectext import with_values

    values = value_texts(sweep, trial)
    value = f"{sweep.metric} {trial.value:.4f}" if trial.value is not None else ""
    header = [f"# best.mrs: written by `mrc sweep` from {Path(spec).name} — trial {trial.number} of study "
              f"{study_name!r} ({value})",
              "# its values: " + ", ".join(f"{k}={shown(v)}" for k, v in values.items())]
    unplaced = [k for k in values if k not in sweep.sites]
    if unplaced:
        header.append("# not written here (the spec has no place for them; train with --set): "
                      + " ".join(f"{k}={values[k]}" for k in unplaced))
    return with_values(spec, values, sweep.sites, drop=("sweep",), header=header)


# --- trials.csv ------------------------------------------------------------------------------

def write_csv(study: optuna.Study, path: Path) -> None:
    """All trials, one row each, in the columns of optuna's `trials_dataframe()` (number, value,
    datetime_start, datetime_complete, duration, params_*, user_attrs_*, state), written
    without pandas."""
    trials = study.get_trials(deepcopy=False)
    params = sorted({k for t in trials for k in t.params})
    attrs = sorted({k for t in trials for k in t.user_attrs})
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["number", "value", "datetime_start", "datetime_complete", "duration",
                    *(f"params_{p}" for p in params), *(f"user_attrs_{a}" for a in attrs), "state"])
        for t in trials:
            start, end = t.datetime_start, t.datetime_complete
            duration: _dt.timedelta | None = end - start if start and end else None
            w.writerow([t.number, "" if t.value is None else t.value, start or "", end or "",
                        duration if duration is not None else "", *(t.params.get(p, "") for p in params),
                        *(_cell(t.user_attrs.get(a)) for a in attrs), t.state.name])


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


# --- plots -----------------------------------------------------------------------------------

def write_plots(study: optuna.Study, sweep: Sweep, out: Path) -> tuple[list[Path], list[str]]:
    """PNG plots from optuna.visualization.matplotlib (Agg backend) in OUT/plots: optimisation
    history, intermediate values (when trials reported any), parameter importances (with two or
    more parameters and complete trials), parallel coordinates and slices. A plot optuna cannot
    make is skipped with a note. Returns the files written and the notes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.visualization import matplotlib as vis

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return [], ["no plots: no trial completed"]
    plots: list[tuple[str, Any]] = [("history", vis.plot_optimization_history)]
    notes: list[str] = []
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots.append(("intermediate", vis.plot_intermediate_values))
    if len(sweep.spaces) >= 2 and len(complete) >= 2:
        plots.append(("importances", vis.plot_param_importances))
    else:
        notes.append("importances skipped: it needs two searched keys and two complete trials")
    plots += [("parallel_coordinate", vis.plot_parallel_coordinate), ("slice", vis.plot_slice)]
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, fn in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = fn(study)
            fig = np.ravel(axes)[0].figure
            fig.set_size_inches(max(6.4, fig.get_figwidth()), max(4.8, fig.get_figheight()))
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=80, bbox_inches="tight")
            written.append(path)
        except Exception as err:  # optuna refuses (too few trials, one value only): say so
            notes.append(f"{name} skipped: {first_line(err)}")
        finally:
            plt.close("all")
    return written, notes
