"""Learning rate × batch size: the best learning rate and the steps to a target against the batch.

One `mrc sweep` per seed of specs/repro/lr_batch_grid.mrs (a grid over the batch B and the
learning rate, run through mrc's sweep driver, `mrc.sweep.driver.run_sweep`, so the trials are
ordinary mrc runs in `FOLDER/sweep/trial-NNNN`). Every trial sees the same number of training
examples (a fixed epoch budget), so the steps it may take fall as 1/B. From each seed's grid:

- the best learning rate at each batch, two ways: the rate with the best final validation
  accuracy (the sweep's own metric), and the rate that reaches the target in the fewest steps;
- the steps to a target validation accuracy at each batch: the fewest, over the learning rates,
  of the steps to the first evaluation at or above the target, averaged over a centred window of
  5 evaluations (Shallue et al.'s "steps to result" with the rate tuned per batch; evaluations
  every 1,024 examples);
- the critical batch: McCandlish et al.'s model S(B) = S_min + E_min / B fitted to the steps to
  target, B_crit = E_min / S_min (below it steps fall ~1/B; above it they plateau at S_min).

Small scale: an MLP 784-128-10 on 8,192 Fashion-MNIST training images, plain SGD at a constant
rate, B = 16 … 1024 and lr = 2^-8 … 1 (ratio 2 each), 8 epochs (65,536 examples) per trial,
target 0.82 on 2,000 held-out training images. Full scale (a GPU): the lecture's figure (b)
setting as far as the spec allows — a CNN (ResNet-8, width 16) on all 58,000 training images,
B = 16 … 8,192, lr = 2^-10 … 4, 20 epochs, target 0.90, evaluations every 8,192 examples.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import re
import resource
import time
from pathlib import Path
from typing import Any

from reproductions import harness
from reproductions.harness import Finding, Results, Run

NAME = "lr_batch"
TITLE = "Learning rate × batch size grid sweep: best lr and steps to target vs batch"
SEED_DOC = "training-essentials.md"
CLAIM = ("With a larger batch we expect a reduced number of steps to reach a similar accuracy, the "
         "optimal learning rate to scale linearly with the batch size, and the advantage to saturate "
         "at some critical batch size (the lecture's \"Learning rate vs. Batch size\" slide, with "
         "Shallue et al.'s steps-to-result curves, figure (b): a simple CNN on Fashion-MNIST).")

SPEC = harness.SPECS / "lr_batch_grid.mrs"
TARGET = {"small": 0.82, "full": 0.90}
SAMPLES = {"small": 8 * 8192, "full": 20 * 58000}
EVAL_SAMPLES = {"small": 1024, "full": 8192}  # examples between evaluations (eval_every = N / B)
WINDOW = 5  # evaluations averaged (centred) before comparing with the target; 1 = the raw curve
FULL_BATCHES = "[16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]"
FULL_LRS = "[" + ", ".join(str(2.0 ** e) for e in range(-10, 3)) + "]"


def spec_for(seed: int, scale: str) -> str:
    """The grid spec's text for one seed (and scale): `let seed` set, the data factory's path made
    absolute (the text is written into the run folder), and at full scale the larger setting."""
    text = SPEC.read_text(encoding="utf-8")
    text = re.sub(r"^let seed = \d+$", f"let seed = {seed}", text, count=1, flags=re.M)
    text = text.replace('"fashion_heldout.py:', f'"{harness.SPECS / "fashion_heldout.py"}:')
    if scale == "full":
        text = text.replace("limit=8192", "limit=0").replace("mlp(hidden=[128])", "resnet(depth=8, width=16)")
        text = text.replace("epochs=8", f"epochs=20, device={harness.device(scale)}")
        text = text.replace("eval_every=1024 / B", f"eval_every={EVAL_SAMPLES[scale]} / B")
        text = re.sub(r"^  B = \[.*\]$", f"  B = {FULL_BATCHES}", text, count=1, flags=re.M)
        text = re.sub(r"^  optimizer.lr = \[.*\]$", f"  optimizer.lr = {FULL_LRS}", text, count=1, flags=re.M)
    if f"let seed = {seed}" not in text:
        raise RuntimeError(f"{SPEC}: no `let seed = …` line to set the seed in")
    return text


def runs(scale: str, seeds: list[int]) -> list[Run]:
    """One grid sweep per seed."""
    return [Run(f"grid/seed{seed}", _work(seed, scale)) for seed in seeds]


def _work(seed: int, scale: str):
    def work(folder: Path) -> dict[str, Any]:
        from mrc.sweep.driver import SweepOptions, run_sweep

        spec = folder / f"lr_batch_grid_seed{seed}.mrs"
        spec.write_text(spec_for(seed, scale), encoding="utf-8")
        out = folder / "sweep"
        log = io.StringIO()
        start, cpu0 = time.perf_counter(), _cpu()
        with contextlib.redirect_stdout(log):
            status = run_sweep(SweepOptions(spec=str(spec), jobs=1, out=str(out), progress=False, plots=False))
        (folder / "log.txt").write_text(log.getvalue(), encoding="utf-8")
        if status != 0:
            raise RuntimeError(f"mrc sweep exited with status {status} (see {folder / 'log.txt'} and "
                               f"{out / 'worker-0.log'})")
        return {"trials": _read_trials(out), "sweep_wall_s": time.perf_counter() - start,
                "cpu_s": _cpu() - cpu0}
    return work


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the sweep's worker)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _read_trials(out: Path) -> list[dict[str, Any]]:
    """Each trial of the sweep's trials.csv with its batch, rate, state, final metric and curve."""
    trials = []
    with open(out / "trials.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            number = int(row["number"])
            curve = []
            metrics = out / f"trial-{number:04d}" / "metrics.jsonl"
            if metrics.is_file():
                for line in metrics.read_text(encoding="utf-8").splitlines():
                    rec = json.loads(line)
                    if isinstance(rec.get("val_acc"), int | float):
                        curve.append((int(rec["step"]), float(rec["val_acc"])))
            trials.append({"number": number, "batch": int(float(row["params_B"])),
                           "lr": float(row["params_optimizer.lr"]), "state": row["state"],
                           "val_acc": float(row["value"]) if row["value"] else None,
                           "status": row.get("user_attrs_status", ""), "curve": curve})
    return trials


# --------------------------------------------------------------------------- analysis


def steps_to(curve: list[list[float]] | list[tuple[int, float]], target: float, window: int = 5) -> int | None:
    """The step of the first evaluation where the validation accuracy, averaged over a centred
    window of `window` evaluations (fewer at the ends), is at or above `target`; None if never.

    The window keeps a single lucky evaluation of a noisy small-batch run from counting as
    reaching the target; it spans the same number of examples at every batch (the evaluations
    are a fixed number of examples apart), so it does not favour one batch over another."""
    half = window // 2
    accs = [float(a) for _, a in curve]
    for i, (step, _) in enumerate(curve):
        part = accs[max(0, i - half): i + half + 1]
        if sum(part) / len(part) >= target:
            return int(step)
    return None


def _grid(trials: list[dict[str, Any]]) -> dict[int, dict[float, dict[str, Any]]]:
    grid: dict[int, dict[float, dict[str, Any]]] = {}
    for t in trials:
        grid.setdefault(t["batch"], {})[t["lr"]] = t
    return grid


def _acc(t: dict[str, Any]) -> float:
    """A trial's final validation accuracy; a failed (diverged) trial counts as chance, 0.1."""
    v = t.get("val_acc")
    return float(v) if t["state"] == "COMPLETE" and v is not None and math.isfinite(v) else 0.1


def analyse(trials: list[dict[str, Any]], target: float, window: int = WINDOW) -> dict[int, dict[str, Any]]:
    """Per batch: the best rate by final accuracy, and the fewest steps to `target` with its rate."""
    out = {}
    for batch, row in sorted(_grid(trials).items()):
        best_lr = max(sorted(row), key=lambda lr: _acc(row[lr]))
        reach = {lr: steps_to(t["curve"], target, window) for lr, t in row.items()}
        reached = {lr: s for lr, s in reach.items() if s is not None}
        fast_lr = min(sorted(reached), key=lambda lr: reached[lr]) if reached else None
        out[batch] = {"best_lr": best_lr, "best_acc": _acc(row[best_lr]),
                      "steps": reached[fast_lr] if fast_lr is not None else None, "steps_lr": fast_lr,
                      "acc": {lr: _acc(t) for lr, t in row.items()}}
    return out


def slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ys against xs (NaN with fewer than two distinct xs)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else float("nan")


def critical_fit(batches: list[int], steps: list[float]) -> tuple[float, float, float]:
    """McCandlish et al.'s S(B) = S_min + E_min / B fitted to the steps to target (least squares
    in relative error: weights 1/S²). Returns (S_min, E_min, B_crit = E_min / S_min); B_crit is
    inf when the fit finds no plateau (S_min ≤ 0)."""
    ws = [1.0 / (s * s) for s in steps]
    xs = [1.0 / b for b in batches]
    sw = sum(ws)
    mx = sum(w * x for w, x in zip(ws, xs, strict=True)) / sw
    my = sum(w * y for w, y in zip(ws, steps, strict=True)) / sw
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs, strict=True))
    e_min = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, steps, strict=True)) / sxx
    s_min = my - e_min * mx
    return s_min, e_min, (e_min / s_min if s_min > 0 else float("inf"))


def _lr_text(values: list[float]) -> str:
    sp = harness.spread(math.log2(x) for x in values)
    return f"{2 ** sp.median:.3g} [{2 ** sp.lo:.3g}–{2 ** sp.hi:.3g}]"


def report(results: Results) -> Finding:
    """Best lr and steps to target against the batch, over seeds; figures; the verdict."""
    seeds, scale = results.seeds, results.scale
    target, budget, every = TARGET[scale], SAMPLES[scale], EVAL_SAMPLES[scale]
    per_seed = {s: analyse(results[f"grid/seed{s}"]["trials"], target) for s in seeds}
    batches = sorted(set.intersection(*(set(a) for a in per_seed.values())))
    lrs = sorted(set.intersection(*(set(per_seed[s][batches[0]]["acc"]) for s in seeds)))
    lg = math.log2

    rows, numbers = [], {"target_val_acc": target, "examples_per_trial": budget, "per_batch": {}}
    med_lr, med_fast_lr, med_steps = {}, {}, {}
    for b in batches:
        best = [per_seed[s][b]["best_lr"] for s in seeds]
        fast = [per_seed[s][b]["steps_lr"] for s in seeds]
        acc_sp = harness.spread(per_seed[s][b]["best_acc"] for s in seeds)
        steps = [per_seed[s][b]["steps"] for s in seeds]
        reached = [x for x in steps if x is not None]
        med_lr[b] = 2 ** harness.spread(lg(x) for x in best).median
        if len(reached) == len(seeds):
            st = harness.spread(reached)
            med_steps[b] = st.median
            med_fast_lr[b] = 2 ** harness.spread(lg(x) for x in fast).median
            steps_txt = f"{st.median:.0f} [{st.lo:.0f}–{st.hi:.0f}]"
            examples_txt = f"{st.median * b:,.0f}"
            fast_txt = _lr_text(fast)
        else:
            steps_txt = f"not reached by {len(steps) - len(reached)} of {len(seeds)} seeds" + (
                f" (others: {', '.join(str(x) for x in reached)})" if reached else "")
            examples_txt = "—"
            fast_txt = "—"
        rows.append((b, _lr_text(best), acc_sp.format(4), fast_txt, steps_txt, examples_txt, budget // b))
        numbers["per_batch"][str(b)] = {"best_lr_final_acc": best, "fastest_lr": fast,
                                        "best_val_acc": acc_sp.json(), "steps_to_target": steps}

    doubling = []
    for lo, hi in itertools.pairwise(batches):
        st_ratio = med_steps[hi] / med_steps[lo] if lo in med_steps and hi in med_steps else None
        fl_ratio = med_fast_lr[hi] / med_fast_lr[lo] if lo in med_fast_lr and hi in med_fast_lr else None
        doubling.append((f"{lo} → {hi}", f"{med_lr[hi] / med_lr[lo]:.2f}",
                         f"{fl_ratio:.2f}" if fl_ratio else "—", f"{st_ratio:.2f}" if st_ratio else "—"))

    fit_b = [b for b in batches if b in med_steps]
    s_min, e_min, b_crit = critical_fit(fit_b, [med_steps[b] for b in fit_b]) if len(fit_b) >= 2 else (
        float("nan"), float("nan"), float("nan"))
    below = [b for b in batches if b < b_crit]
    below_steps = [b for b in below if b in med_steps]
    sl_best = slope([lg(b) for b in below], [lg(med_lr[b]) for b in below])
    sl_fast = slope([lg(b) for b in below_steps], [lg(med_fast_lr[b]) for b in below_steps])
    sl_steps = slope([lg(b) for b in below_steps], [lg(med_steps[b]) for b in below_steps])
    above = [b for b in batches if b >= b_crit]
    sl_best_above = slope([lg(b) for b in above], [lg(med_lr[b]) for b in above])
    unreached = [b for b in batches if b not in med_steps]
    examples = {b: med_steps[b] * b for b in med_steps}
    growth = max(examples.values()) / min(examples.values()) if examples else float("nan")
    per_seed_fits = {}
    for s in seeds:
        bs = [b for b in batches if per_seed[s][b]["steps"]]
        per_seed_fits[s] = critical_fit(bs, [per_seed[s][b]["steps"] for b in bs])[2] if len(bs) >= 2 else float("nan")

    def r(x: float, d: int = 3) -> float | None:
        return round(x, d) if math.isfinite(x) else None

    numbers.update({"critical_batch_fit": r(b_crit, 0),
                    "critical_batch_per_seed": [r(x, 0) for x in per_seed_fits.values()],
                    "s_min": r(s_min, 1), "e_min": r(e_min, 0),
                    "slope_best_lr_below_crit": r(sl_best), "slope_fastest_lr_below_crit": r(sl_fast),
                    "slope_steps_below_crit": r(sl_steps), "slope_best_lr_above_crit": r(sl_best_above),
                    "examples_to_target_growth": r(growth, 2), "not_reached_at": unreached})

    lr_linear = math.isfinite(sl_fast) and 0.7 <= sl_fast <= 1.3
    steps_perfect = math.isfinite(sl_steps) and sl_steps <= -0.7
    saturates = math.isfinite(b_crit) and batches[0] < b_crit <= batches[-1] and (growth >= 1.5 or bool(unreached))
    if lr_linear and steps_perfect and saturates:
        verdict = "reproduced"
    elif lr_linear or steps_perfect or saturates:
        verdict = "partly"
    else:
        verdict = "not reproduced"

    # figures
    def acc_curves(b: int) -> list[tuple[list[float], list[float]]]:
        ok = [lr for lr in lrs if all(per_seed[s][b]["acc"][lr] > 0.1 for s in seeds)]  # diverged: left off
        return [([lg(lr) for lr in ok], [per_seed[s][b]["acc"][lr] for lr in ok]) for s in seeds]

    path, acc_md = results.figure("acc_vs_lr")
    harness.bands(path, [("per batch (rates where a seed diverged left off)", "log2 learning rate",
                          f"val accuracy after {budget:,} examples", {f"B={b}": acc_curves(b) for b in batches})],
                  title="Accuracy vs learning rate (median, min–max over seeds)")
    xs = [lg(b) for b in batches]
    lr_panel = {"linear scaling (slope 1)": [(xs, [lg(med_lr[batches[0]]) + (x - xs[0]) for x in xs])],
                "best lr (final acc)": [(xs, [lg(per_seed[s][b]["best_lr"]) for b in batches]) for s in seeds]}
    fx = [lg(b) for b in batches if all(per_seed[s][b]["steps_lr"] for s in seeds)]
    if fx:
        lr_panel["fastest lr to target"] = [(fx, [lg(per_seed[s][int(2 ** x)]["steps_lr"]) for x in fx]) for s in seeds]
    panels = [("best learning rate vs batch (log-log)", "log2 batch", "log2 learning rate", lr_panel)]
    if fx:
        st_panel = {"perfect scaling (1/B)": [(xs, [lg(med_steps[batches[0]]) - (x - xs[0]) for x in xs])]
                    if batches[0] in med_steps else []}
        if math.isfinite(b_crit):
            st_panel[f"fit S_min + E_min/B, B_crit ≈ {b_crit:.0f}"] = [
                (xs, [lg(max(s_min + e_min / b, 1e-9)) for b in batches])]
        st_panel["steps to target"] = [(fx, [lg(per_seed[s][int(2 ** x)]["steps"]) for x in fx]) for s in seeds]
        panels.append(("steps to target vs batch (log-log)", "log2 batch", f"log2 steps to val acc {target}", st_panel))
    path, scaling_md = results.figure("scaling")
    harness.bands(path, panels, title="Batch-size scaling (median, min–max over seeds)")

    sens_rows, sens_crit, sens_slope = [], [], []
    for w in (1, 3, 5, 7):
        cells, med = [], {}
        for b in batches:
            got = [analyse(results[f"grid/seed{s}"]["trials"], target, w)[b]["steps"] for s in seeds]
            if all(got):
                med[b] = harness.spread(got).median
            cells.append(f"{med[b] * b:,.0f}" if b in med else "not reached")
        wb = sorted(med)
        crit_w = critical_fit(wb, [med[b] for b in wb])[2] if len(wb) >= 2 else float("nan")
        under = [b for b in wb if b < crit_w]
        sl_w = slope([lg(b) for b in under], [lg(med[b]) for b in under])
        sens_crit.append(crit_w)
        sens_slope.append(sl_w)
        sens_rows.append((f"{w}" + (" (used)" if w == WINDOW else ""), *cells, f"{crit_w:.0f}", f"{sl_w:.2f}"))
    sensitivity = harness.table(("window", *(f"B={b}" for b in batches), "B_crit", "steps slope below"), sens_rows)

    cpu = sum(float(results[f"grid/seed{s}"].get("cpu_s", 0.0)) for s in seeds)
    numbers["cpu_minutes"] = round(cpu / 60, 1)
    n_trials = sum(len(results[f"grid/seed{s}"]["trials"]) for s in seeds)
    failed = sum(1 for s in seeds for t in results[f"grid/seed{s}"]["trials"] if t["state"] != "COMPLETE")
    grid_txt = f"B = {', '.join(map(str, batches))}; lr = {', '.join(f'{x:g}' for x in lrs)}"
    setup = ("an MLP 784-128-10 (ReLU) on 8,192 Fashion-MNIST training images (normalised), 8 epochs"
             if scale == "small" else
             "a ResNet-8 (width 16) on all 58,000 remaining training images (normalised), 20 epochs")
    body = f"""
## Setup

- **Grid sweep through mrc:** `specs/repro/lr_batch_grid.mrs` has a `sweep grid(metric=val_acc)`
  over the batch `B` (a `let` that the data statement and `eval_every` read) and `optimizer.lr`;
  the harness runs it once per seed with `mrc.sweep.driver.run_sweep` (what `mrc sweep` runs: an
  optuna grid study, each trial an ordinary mrc run): {grid_txt}; {n_trials} trials in all
  ({failed} diverged — mrc stopped them — and count at chance accuracy, 0.1). The sweeps took
  {cpu / 60:.1f} CPU-minutes of one core in all.
- **Model and data:** {setup}; plain SGD (no momentum, no weight decay) at a constant rate, as in
  the lecture's SGD formula. Validation: 2,000 *training* images held out
  (`specs/repro/fashion_heldout.py`; the rates are selected on them, not on the test set).
- **Budget: a fixed number of examples,** {budget:,} per trial (so {budget // batches[0]:,} steps
  at B = {batches[0]} and {budget // batches[-1]:,} at B = {batches[-1]}); evaluation every
  {every:,} examples (`eval_every = {every} / B` steps).
- **Best learning rate** at a batch, two ways: the rate with the best *final* validation accuracy
  after the budget (the sweep's metric), and the rate that reaches the target in the fewest steps.
  **Steps to target:** for each rate, the step of the first evaluation where the validation
  accuracy, averaged over a centred window of {WINDOW} evaluations ({WINDOW * every:,} examples, so
  that a single lucky evaluation of a noisy small-batch run does not count), is ≥ {target}; the
  fewest over the rates (the rate tuned per batch, as Shallue et al. do). A batch
  where no rate reaches the target within the budget is "not reached".
- **Critical batch:** McCandlish et al.'s empirical model S(B) = S_min + E_min/B fitted to the
  median steps to target (weighted least squares in relative error); B_crit = E_min/S_min is the
  batch where a run needs twice the minimal steps *and* twice the minimal examples. Below it the
  steps fall ~1/B, above it they plateau at S_min.
- **Narrowed vs the seed:** the lecture's figure (b) is Shallue et al.'s simple CNN on
  Fashion-MNIST with the learning rate *and momentum* tuned per batch, a linear-decay schedule and
  step budgets large enough for every batch; here a small MLP, plain SGD with a constant rate, an
  8,192-image subset and an equal-examples budget keep the {n_trials} trials within ≈ 10 min of one
  core. The largest batch therefore gets only {budget // batches[-1]} steps.
- **Seeds:** {", ".join(map(str, seeds))} (each seeds the initial weights, the data order and the subset).

## Results (median [min–max] over {len(seeds)} seeds)

{harness.table(("batch", "best lr (final acc)", "val acc at it", "fastest lr to target",
                f"steps to val acc {target}", "examples to target", "steps in budget"), rows)}

Doubling the batch multiplies the median best rate, the median fastest rate and the median steps
to target by (linear scaling: rates × 2, steps × 0.5; no benefit: steps × 1):

{harness.table(("batch", "best lr ×", "fastest lr ×", "steps ×"), doubling)}

- **Critical batch:** the fit gives S_min ≈ {s_min:.0f} steps, E_min ≈ {e_min:,.0f} examples,
  **B_crit ≈ {b_crit:.0f}** (per seed: {", ".join(f"{x:.0f}" for x in per_seed_fits.values())}).
  The examples to target grow {growth:.1f}× from the cheapest batch to the dearest that reaches
  it{f"; no rate reaches it at B = {', '.join(map(str, unreached))} within the budget" if unreached else ""}.
- **Below B_crit** (B = {", ".join(map(str, below))}): log-log slope of the fastest rate
  {sl_fast:.2f}, of the best-final-accuracy rate {sl_best:.2f} (linear: 1); of the steps to target
  {sl_steps:.2f} (perfect scaling: −1).
- **From B_crit on:** the best-final-accuracy rate's slope is {sl_best_above:.2f}
  (B = {", ".join(map(str, above)) or "—"}).

{acc_md}

{scaling_md}

**How much the smoothing matters.** Median examples to target (steps × B) with the validation
accuracy averaged over a centred window of 1 (the raw curve), 3, 5 or 7 evaluations. The window
was chosen after looking at seed 0's curves (at 1 and 3 the small batches' noisy curves cross the
target early on single lucky evaluations); the table shows what the other choices give:

{sensitivity}

## Against the seed

The lecture states three expectations for a larger batch: fewer steps to a similar accuracy, an
optimal learning rate that scales linearly with the batch, and an advantage that saturates at a
critical batch size; its figures are Shallue et al.'s steps-to-result curves (steps fall ∝ 1/B,
then diminishing returns, then a plateau), figure (b) a simple CNN on Fashion-MNIST. The slides
give no numbers to compare with, so the comparison is of shape: the slopes above against 1 (rate)
and −1 (steps), and whether a critical batch appears inside the grid.

## Verdict: {verdict}

{_verdict_text(verdict, sl_fast, sl_best, sl_steps, b_crit, lr_linear, steps_perfect, saturates)}

Over the smoothing windows 1–7 the fitted critical batch lies between {min(sens_crit):.0f} and
{max(sens_crit):.0f} and the steps' slope below it between {min(sens_slope):.2f} and
{max(sens_slope):.2f}; the grid resolves the rates to a factor 2, so "linear" means a slope within
0.7–1.3 over the batches below the critical one, and the steps' fall counts as ~1/B at a slope of
−0.7 or steeper.

## What would change the verdict

- Momentum tuned per batch and a decaying schedule (Shallue et al.), and a CNN: here plain SGD at
  a constant rate, whose stability limit caps the usable rate at large batches.
- A step budget large enough for every batch to reach the target (the equal-examples budget gives
  B = {batches[-1]} only {budget // batches[-1]} steps), and a finer rate grid (ratio √2): the best
  rate is resolved only to a factor 2, and the final accuracy is flat within about a point over
  2–3 rates near the best, so the best-final-accuracy rate is noisier than the fastest rate.
- Another target accuracy: the critical batch grows as the target gets harder (Shallue et al.,
  McCandlish et al.).
"""
    return Finding(verdict, numbers, body)


def _verdict_text(verdict: str, sl_fast: float, sl_best: float, sl_steps: float, b_crit: float,
                  lr_linear: bool, steps_perfect: bool, saturates: bool) -> str:
    parts = [f"Below the critical batch (≈ {b_crit:.0f}) the fastest rate grows with log-log slope "
             f"{sl_fast:.2f} (the best-final-accuracy rate {sl_best:.2f}; linear: 1) "
             + ("— linear within the grid's factor-2 resolution" if lr_linear else "— not linear"),
             f"the steps to target fall with slope {sl_steps:.2f} "
             + ("(close to 1/B; perfect scaling is −1)" if steps_perfect else "(short of 1/B)"),
             "and the gain saturates inside the grid (diminishing returns: the examples to target "
             "grow, each doubling cuts the steps less)" if saturates else "and no saturation appears inside the grid"]
    return "; ".join(parts) + ". " + {
        "reproduced": "All three expectations hold.",
        "partly": "Some of the three expectations hold, not all.",
        "not reproduced": "None of the three expectations holds at this scale.",
    }[verdict]
