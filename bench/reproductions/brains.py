"""Multirate across networks ("multi-brain"): two and three brains against each rate alone.

Copies of one network train with step sizes h, k·h (and 16h); a brain with step k·h steps once
per k steps of the fastest, and whenever brains reach the same time they are merged — the mean
of their parameters, or the brain with the best validation accuracy — and go on from there
(specs/repro/brains_*.mrs, mrc's `brain` and `merge` statements). Each brains contender is
compared with single networks trained alone at each of its rates, for the same number of steps.

Small scale: an MLP 784-256-10 on 12,000 Fashion-MNIST training images (batch 64, 8 epochs,
SGD momentum 0.9, h = 0.002); 2,000 other training images are the validation split the `best`
merge selects on, and the 10,000 test images are evaluated apart. Full scale: all 58,000
training images, an MLP 784-1024-1024-10, batch 128, 30 epochs (the seed names no size for this
experiment; this is a GPU-sized version of the same comparison).
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

from reproductions import harness
from reproductions.harness import Finding, Results, Run

NAME = "brains"
TITLE = "Multi-brain: 2 and 3 brains (k = 4, 16; mean and best merges) vs each rate alone"
SEED_DOC = "multirate-training.md"
CLAIM = ("Train independent copies (brains) of the same network with different learning rates and "
         "merge their parameters whenever two or more reach the same time; multirate training "
         "\"can learn different features by training the net on different time scales "
         "simultaneously\" and acts as an add-on that enhances the base optimizer (the seed gives "
         "no figure for brains: read as: the merged model is at least as good as the best of its "
         "rates trained alone).")

H = 0.002
# contender: (spec, overrides, rates as multiples of h, label)
CONTENDERS: dict[str, tuple[str, dict[str, Any], tuple[int, ...], str]] = {
    "single_h": ("brains_single.mrs", {"h": H}, (1,), "h alone"),
    "single_4h": ("brains_single.mrs", {"h": 4 * H}, (4,), "4h alone"),
    "single_16h": ("brains_single.mrs", {"h": 16 * H}, (16,), "16h alone"),
    "two_k4_mean": ("brains_two.mrs", {"brain.slow.every": 4}, (1, 4), "2 brains k=4, mean"),
    "two_k4_best": ("brains_two_best.mrs", {"brain.slow.every": 4}, (1, 4), "2 brains k=4, best"),
    "two_k16_mean": ("brains_two.mrs", {"brain.slow.every": 16}, (1, 16), "2 brains k=16, mean"),
    "two_k16_best": ("brains_two_best.mrs", {"brain.slow.every": 16}, (1, 16), "2 brains k=16, best"),
    "three_mean": ("brains_three.mrs", {}, (1, 4, 16), "3 brains 1/4/16, mean"),
    "three_best": ("brains_three_best.mrs", {}, (1, 4, 16), "3 brains 1/4/16, best"),
    "two_k4_mean_own": ("brains_two.mrs", {"brain.slow.every": 4, "brain.fast.data": "own", "brain.slow.data": "own"},
                        (1, 4), "2 brains k=4, mean, own data"),
}
SINGLE = {1: "single_h", 4: "single_4h", 16: "single_16h"}


def scale_overrides(scale: str) -> dict[str, Any]:
    """What `--scale full` changes in every spec (the small scale is the specs' own values)."""
    if scale == "full":
        return {"data.limit": 0, "data.batch": 128, "model.hidden": "[1024, 1024]", "train.epochs": 30,
                "train.device": harness.device(scale)}
    return {}


def runs(scale: str, seeds: list[int]) -> list[Run]:
    """One run per contender and seed."""
    out = []
    for key, (spec, over, _, _) in CONTENDERS.items():
        for seed in seeds:
            settings = {**over, **scale_overrides(scale), "train.seed": seed}
            out.append(Run(f"{key}/seed{seed}", _work(spec, settings)))
    return out


def _work(spec: str, settings: dict[str, Any]):
    def work(folder: Path) -> dict[str, Any]:
        start = _cpu()
        result = harness.train(spec, folder, settings)
        return {**result, "cpu_s": _cpu() - start}
    return work


def _cpu() -> float:
    """CPU seconds of this process so far (the runs train in it, on one thread)."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def _final(result: dict[str, Any], what: str) -> float:
    return float(result["evals"]["test"]["acc"] if what == "test" else result["val_acc"])


def report(results: Results) -> Finding:
    """Final val/test accuracy per contender (median [min–max] over seeds), curves, verdict."""
    seeds = results.seeds
    rows, numbers, spreads = [], {}, {}
    for key, (_, _, rates, label) in CONTENDERS.items():
        vals = [results[f"{key}/seed{s}"] for s in seeds]
        val = harness.spread(_final(r, "val") for r in vals)
        test = harness.spread(_final(r, "test") for r in vals)
        wall = harness.spread(float(r["wall_s"]) for r in vals)
        spreads[key] = test
        rates_txt = ", ".join("h" if k == 1 else f"{k}h" for k in rates)
        grads = sum(1 / k for k in rates) * min(rates)
        rows.append((label, rates_txt, f"{grads:.4g}", val.format(4), test.format(4), f"{wall.median:.1f}"))
        numbers[key] = {"val_acc": val.json(), "test_acc": test.json()}

    # each brains contender against the best single rate among its own rates
    comparisons, deltas, vs_h_all = [], {}, []
    for key, (_, _, rates, label) in CONTENDERS.items():
        if len(rates) == 1:
            continue
        best_single = max((SINGLE[k] for k in rates), key=lambda s: spreads[s].median)
        per_seed = [_final(results[f"{key}/seed{s}"], "test") - _final(results[f"{best_single}/seed{s}"], "test")
                    for s in seeds]
        d = harness.spread(per_seed)
        deltas[key] = d
        wins = sum(1 for x in per_seed if x > 0)
        vs_h = harness.spread(_final(results[f"{key}/seed{s}"], "test") - _final(results[f"single_h/seed{s}"], "test")
                              for s in seeds)
        vs_h_all.append(vs_h.median)
        comparisons.append((label, CONTENDERS[best_single][3], f"{d.median * 100:+.2f} "
                            f"[{d.lo * 100:+.2f} – {d.hi * 100:+.2f}]", f"{wins}/{len(seeds)}",
                            f"{vs_h.median * 100:+.2f} [{vs_h.lo * 100:+.2f} – {vs_h.hi * 100:+.2f}]"))
    best_overall_single = max(SINGLE.values(), key=lambda s: spreads[s].median)
    best_brains = max(deltas, key=lambda k: spreads[k].median)
    numbers["best_single"] = best_overall_single
    numbers["best_brains"] = best_brains
    numbers["best_brains_minus_best_own_single_pts"] = round(deltas[best_brains].median * 100, 2)

    # verdict, on the paired (same seed) differences with the best of a contender's own rates alone:
    # "reproduced" when some brains contender is above it on every seed; "partly" when some is at
    # least level with it on the median seed (as good, not better); "not reproduced" when every
    # brains contender is below it on the median seed
    beats_all = [k for k, d in deltas.items() if d.lo > 0]
    noise = max(spreads[s].hi - spreads[s].lo for s in SINGLE.values())
    if beats_all:
        verdict = "reproduced"
    elif any(d.median >= 0 for d in deltas.values()):
        verdict = "partly"
    else:
        verdict = "not reproduced"
    numbers["below_best_own_rate"] = f"{sum(1 for d in deltas.values() if d.median < 0)}/{len(deltas)}"
    numbers["seed_noise_pts"] = round(noise * 100, 2)

    # curves: merged (test) accuracy vs epoch for each contender, and each brain's val accuracy
    def curves(key: str, metric: str) -> list[tuple[list[float], list[float]]]:
        return [harness.curve(results[f"{key}/seed{s}"], metric) for s in seeds]

    path, merged_md = results.figure("merged")
    harness.bands(path, [
        ("single rates vs two brains (test acc)", "epoch", "test accuracy",
         {CONTENDERS[k][3]: curves(k, "evals.test.acc") for k in
          ("single_h", "single_4h", "single_16h", "two_k4_mean", "two_k4_best", "two_k16_mean", "two_k16_best")}),
        ("single rates vs three brains, own-data brains (test acc)", "epoch", "test accuracy",
         {CONTENDERS[k][3]: curves(k, "evals.test.acc") for k in
          ("single_h", "single_4h", "single_16h", "three_mean", "three_best", "two_k4_mean_own")}),
    ], title="Merged model vs each rate alone (median, min–max band over seeds)")
    panels = []
    for key in ("two_k4_mean", "two_k16_mean", "three_mean", "two_k16_best", "three_best"):
        brains = ("fast", "medium", "slow") if key.startswith("three") else ("fast", "slow")
        lines = {"merged": curves(key, "val_acc")}
        for b in brains:
            lines[f"brain {b}"] = curves(key, f"brains.{b}.val_acc")
        panels.append((CONTENDERS[key][3], "epoch", "val accuracy", lines))
    path, brains_md = results.figure("each_brain")
    harness.bands(path, panels, title="Each brain and the merged model (validation accuracy)")

    cpus = [results[k].get("cpu_s") for k in results.values]
    cpu_txt = (f"The {len(cpus)} runs took {sum(cpus) / 60:.1f} CPU-minutes of one core (the standalone "
               f"time; the wall time above is on a shared, busy machine)." if all(cpus) else "")
    if all(cpus):
        numbers["cpu_minutes"] = round(sum(cpus) / 60, 1)
    r0 = results[f"two_k4_mean/seed{seeds[0]}"]
    steps, epochs = r0.get("steps"), r0.get("epochs")
    scale_txt = ("an MLP 784-256-10 (ReLU) on a 12,000-image random subset of the Fashion-MNIST "
                 "training set (normalised), batch 64, 8 epochs"
                 if results.scale == "small" else
                 "an MLP 784-1024-1024-10 on all 58,000 remaining training images, batch 128, 30 epochs")
    body = f"""
## Setup

- **Model and data:** {scale_txt} ({steps} steps of the fastest brain, {epochs} epochs). The
  validation split is 2,000 *training* images held out (a fixed draw,
  `specs/repro/fashion_heldout.py`): the `best` merge selects on it, so it must not be the test
  set. The test accuracy is on the 10,000 Fashion-MNIST test images, evaluated apart (`eval test`).
- **Optimizer:** SGD, momentum 0.9, h = {H} for the fastest brain; brain i steps every k_i steps
  with step size k_i·h (mrc's `brain NAME {{ every = k }}`), each keeps its own momentum
  (`momentum = keep`), all start from the same initial weights and see the same batches
  (`data = shared`). Merges: `mean` (the parameters' mean) or `best(metric=val_acc)` (every
  brain that arrives continues from the one with the best validation accuracy, measured on the
  2,000 held-out images at every merge). The final model is the rule applied to all brains.
- **Contenders:** a single network alone at h, 4h and 16h (same steps, same data order, same
  initial weights); two brains (h, 4h) and (h, 16h); three brains (h, 4h, 16h) merged pairwise
  every 4 steps and all together every 16 — each with the mean and the best merge; and two brains
  (h, 4h, mean) that each draw their own batch order (`data = own`) instead of sharing the batch.
- **Narrowed vs the seed:** the seed shows the scheme (two brains h_M = k·h_F; three brains
  h_S = k_2·h_M = k_1·h_F) but gives no model, data or numbers for it. The small MLP and the
  12,000-image subset keep the 30 runs within ≈ 10 min of one CPU core. The full scale is not
  the seed's size (it names none) but the same comparison at GPU size; it was not run here.
- **Seeds:** {", ".join(map(str, seeds))} (each seeds the initial weights, the data order and the subset).
  {cpu_txt}

## Results (final model, median [min–max] over {len(seeds)} seeds)

{harness.table(("contender", "rates", "gradients per step", "val acc", "test acc",
                "wall s (median, busy machine)"), rows)}

"Gradients per step": gradient evaluations per step of the fastest brain (a brain with step k·h
takes one per k steps), so the brains get up to 31 % more gradient computation than a single
network; the `best` merge also evaluates every arriving brain on the 2,000 validation images at
every merge (the wall-time column).

Each brains contender against the best (by median test accuracy) of its own rates trained alone,
and against the smallest rate h alone, paired by seed (test accuracy, percentage points; wins =
seeds where the brains are above the best own rate):

{harness.table(("brains", "best own single rate", "Δ vs it, pts, median [min–max]", "wins",
                "Δ vs h alone, pts"), comparisons)}

The seeds' spread of the single rates (largest max − min of test accuracy) is
{noise * 100:.2f} points.

**Why the brains track h alone.** In the seed's scheme a brain with step k·h steps once per k
steps, so every brain — and the merged model — has advanced the same "time" n·h after n steps of
the fastest brain: the time of the network trained alone at h. The network trained alone at 4h
has advanced 4n·h in the same steps. The merged models end at a median {min(vs_h_all) * 100:+.2f} to
{max(vs_h_all) * 100:+.2f} points from h alone (last column): they follow h alone's curve (first figure), not
the faster rates'. Comparing at equal steps, the brains pay more gradients than h alone for about
the same model.

{merged_md}

{brains_md}

In the second figure the brains of a pair coincide with the merged model wherever an evaluation
(once per epoch) falls on a merge step: with k = 4 every evaluation does, so their curves are one;
with k = 16 the brains are seen up to 15 steps after their last merge.

## Against the seed

The seed's slides on "multi-brain" state the scheme (independent copies, different learning
rates, merge whenever copies reach the same time threshold) and its take-aways that multirate
methods act as an add-on to any optimizer and "can learn different features by training the net
on different time scales simultaneously". They show no accuracy figure for brains, so there is
no number to compare with; the test here is whether the merged model beats (or matches) each of
its rates trained alone.

## Verdict: {verdict}

{_verdict_text(verdict, deltas, spreads, best_overall_single, best_brains)}

## What would change the verdict

- Brains that merge less often (here every k steps — the seed's rule — keeps them within k steps
  of each other, so the mean merge is close to a single trajectory with a mixed step size); a
  merge period of an epoch or more would let the brains find different features.
- More data diversity between the brains: `data = own` was tried for one pair (h, 4h, mean) and
  is in the table.
- A larger h grid: with h = {H} the rates straddle the best single rate; at another h the
  ordering of the single rates, and so which rate the brains must beat, changes.
- Full scale (`--scale full`, not run here: no GPU) and a CNN.
"""
    return Finding(verdict, numbers, body)


def _verdict_text(verdict: str, deltas: dict[str, harness.Spread], spreads: dict[str, harness.Spread],
                  best_single: str, best_brains: str) -> str:
    d = deltas[best_brains]
    return (f"The best single rate is {CONTENDERS[best_single][3]} (test acc "
            f"{spreads[best_single].format(4)}); the best brains contender is "
            f"{CONTENDERS[best_brains][3]} ({spreads[best_brains].format(4)}), "
            f"{d.median * 100:+.2f} points [{d.lo * 100:+.2f} – {d.hi * 100:+.2f}] against the best of "
            f"its own rates alone. " + {
                "reproduced": "Some brains contender is above its best single rate on every seed.",
                "partly": "No brains contender is above its best single rate on every seed; at "
                          "least one is level with it or above on the median seed (as good, not "
                          "better).",
                "not reproduced": "Every brains contender is below the best of its rates trained "
                                  "alone on the median seed (paired by seed): merging across time "
                                  "scales did not give a better model than the best single rate here.",
            }[verdict])
