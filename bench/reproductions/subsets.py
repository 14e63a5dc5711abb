"""Random-subset multirate as a regulariser (seeds/multirate-training.md, "Application: neural
network regularization").

A single-hidden-layer perceptron (SHLP) on a small class-balanced Fashion-MNIST training subset
(specs/repro/subsets_data.py), small enough that it overfits, trained by three contenders with
the same model, data order, optimizer and epochs:

  sgd        plain SGD with momentum (specs/repro/subsets_sgd.mrs);
  dropout    the same with dropout on the hidden layer (`--set model.dropout=…`);
  multirate  random-subset multirate (specs/repro/subsets_multirate.mrs): every k steps a random
             fraction of the hidden weight matrix is restored and takes one slow step k·h, a new
             subset is drawn and held at zero while the rest takes k fast steps h.

Every epoch the model is scored on the test set (10,000 images) and on its own training subset
(`eval fit`), so the generalisation gap (train accuracy − test accuracy) has a curve.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import harness
from .harness import Finding, Results, Run

NAME = "subsets"
TITLE = "Random-subset multirate as a regulariser (one-hidden-layer perceptron, Fashion-MNIST)"
SEED_DOC = "multirate-training.md"
CLAIM = ("Slow parameters as a randomly selected subset of the weights, held at zero while the "
         "others take k fast steps, then restored for one slow step of k·h and redrawn, regularise "
         "a single-hidden-layer perceptron (SGD, MNIST in the seed): better generalisation than "
         "plain SGD, compared with dropout.")

DROPOUT = 0.5
FRACTION, K = 0.1, 5  # the primary contender (specs/random_subgroups.mrs's setting)
VARIANT = 0.5  # a second slow fraction, same k: what was varied
CONTENDERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sgd": ("plain SGD", "subsets_sgd.mrs", {}),
    "dropout": (f"dropout p = {DROPOUT}", "subsets_sgd.mrs", {"model.dropout": DROPOUT}),
    "multirate": (f"random-subset multirate (f = {FRACTION}, k = {K})", "subsets_multirate.mrs",
                  {"fraction": FRACTION, "k": K}),
    "multirate_f05": (f"random-subset multirate (f = {VARIANT}, k = {K})", "subsets_multirate.mrs",
                      {"fraction": VARIANT, "k": K}),
}
MULTIRATE = ("multirate", "multirate_f05")

# Sizes: `small` a 2,000-image subset (200 per class) that a 512-unit SHLP overfits in a few
# epochs; `full` the seed's scale: the whole training set (60,000), 1,000 hidden units.
SIZES: dict[str, dict[str, Any]] = {
    "small": {"model.hidden": "[512]", "size": 2000, "train.epochs": 40},
    "full": {"model.hidden": "[1000]", "size": 60000, "train.epochs": 100,
             "train.device": "auto"},
}


def runs(scale: str, seeds: list[int]) -> list[Run]:
    """Every contender for every seed (nothing here is timed, so the order does not matter)."""
    return [Run(f"{c}/seed{s}", _work(spec, {**SIZES[scale], **knobs, "train.seed": s}))
            for s in seeds for c, (_, spec, knobs) in CONTENDERS.items()]


def _work(spec: str, overrides: dict[str, Any]) -> Any:
    def work(folder: Path) -> dict[str, Any]:
        start = time.process_time()
        result = harness.train(spec, folder, overrides)
        return {**result, "cpu_s": time.process_time() - start}  # CPU seconds: a standalone-time estimate
    return work


def _curves(result: dict[str, Any]) -> tuple[list[float], list[float], list[float], list[float]]:
    """Epochs, test accuracy, train (fit) accuracy and gap at every evaluation."""
    xs, test = harness.curve(result, "val_acc")
    _, fit = harness.curve(result, "evals.fit.acc")
    n = min(len(test), len(fit))
    return xs[:n], test[:n], fit[:n], [f - t for f, t in zip(fit[:n], test[:n], strict=True)]


def report(results: Results) -> Finding:
    seeds = results.seeds
    curves = {(c, s): _curves(results[f"{c}/seed{s}"]) for c in CONTENDERS for s in seeds}
    final = {(c, s): (results[f"{c}/seed{s}"]["val_acc"], results[f"{c}/seed{s}"]["evals"]["fit"]["acc"])
             for c in CONTENDERS for s in seeds}
    best = {(c, s): max(curves[(c, s)][1]) for c in CONTENDERS for s in seeds}

    rows, numbers = [], {}
    for c, (label, _, _) in CONTENDERS.items():
        test = harness.spread(final[(c, s)][0] for s in seeds)
        fit = harness.spread(final[(c, s)][1] for s in seeds)
        gap = harness.spread(final[(c, s)][1] - final[(c, s)][0] for s in seeds)
        top = harness.spread(best[(c, s)] for s in seeds)
        mean_gap = harness.spread(sum(curves[(c, s)][3]) / len(curves[(c, s)][3]) for s in seeds)
        d_test = harness.spread(final[(c, s)][0] - final[("sgd", s)][0] for s in seeds)
        rows.append((label, test.format(4), fit.format(4), gap.format(4), mean_gap.format(4), top.format(4),
                     "—" if c == "sgd" else d_test.format(4)))
        numbers[c] = {"test_acc": test.json(), "train_acc": fit.json(), "gap": gap.json(),
                      "gap_mean_over_epochs": mean_gap.json(),
                      "best_test_acc": top.json(), "test_acc_minus_sgd": d_test.json()}
    table = harness.table(("contender", "final test acc", "final train acc", "gap (train − test)",
                           "gap, mean over the epochs", "best test acc (any epoch)",
                           "test acc − SGD's, same seed"), rows)

    panels = []
    for i, (title, ylabel) in enumerate((("test accuracy", "accuracy (10,000 test images)"),
                                         ("train accuracy (the training subset)", "accuracy"),
                                         ("generalisation gap", "train acc − test acc")), start=1):
        panels.append((title, "epoch", ylabel,
                       {label: [(curves[(c, s)][0], curves[(c, s)][i]) for s in seeds]
                        for c, (label, _, _) in CONTENDERS.items()}))
    path, md = results.figure("curves")
    harness.bands(path, panels, title="One-hidden-layer perceptron on a Fashion-MNIST subset")

    cpu = [v.get("cpu_s") for v in results.values.values()]
    cpu_note = (f"CPU time of all the runs: {sum(cpu) / 60:.1f} min (one torch thread each; on this "
                f"shared machine it includes the cost of contention)." if all(c is not None for c in cpu) else "")
    verdict, why = _verdict(numbers, final, seeds)
    numbers["verdict_reason"] = why
    return Finding(verdict, numbers, _body(results, table, md, why) + ("\n" + cpu_note if cpu_note else ""))


def _verdict(n: dict[str, Any], final: dict[tuple[str, int], tuple[float, float]],
             seeds: list[int]) -> tuple[str, str]:
    """Per multirate contender against plain SGD: reproduced when its final test accuracy is
    higher and its gap smaller in every seed; partly when one of the two holds in every seed, or
    both in the median only; not reproduced otherwise. The verdict is the primary contender's
    (f = 0.1, the repository's random_subgroups setting); the variant (f = 0.5) can lift it to
    partly at most, since it is the better of two tries. Dropout is reported beside it."""
    rank = {"not reproduced": 0, "partly": 1, "reproduced": 2}
    verdicts, lines = {}, []
    for c in MULTIRATE:
        better = [final[(c, s)][0] > final[("sgd", s)][0] for s in seeds]
        smaller = [final[(c, s)][1] - final[(c, s)][0] < final[("sgd", s)][1] - final[("sgd", s)][0]
                   for s in seeds]
        d = n[c]["test_acc_minus_sgd"]["median"]
        g = n[c]["gap"]["median"] - n["sgd"]["gap"]["median"]
        vs_drop = n[c]["test_acc"]["median"] - n["dropout"]["test_acc"]["median"]
        lines.append(f"{CONTENDERS[c][0]} vs plain SGD: test accuracy {d * 100:+.2f} points (higher in "
                     f"{sum(better)}/{len(seeds)} seeds), gap {g * 100:+.2f} points (smaller in "
                     f"{sum(smaller)}/{len(seeds)} seeds); vs dropout: test accuracy {vs_drop * 100:+.2f} points")
        if all(better) and all(smaller):
            verdicts[c] = "reproduced"
        elif all(better) or all(smaller) or (d > 0 and g < 0):
            verdicts[c] = "partly"
        else:
            verdicts[c] = "not reproduced"
    verdict = verdicts["multirate"]
    if rank[verdicts["multirate_f05"]] > rank[verdict]:
        verdict = "partly"
    return verdict, "; ".join(lines)


NARROWED = ("- **Narrowed vs the seed:** the seed's SHLP trains on MNIST; here Fashion-MNIST (the "
            "issue's real data set) with a 2,000-image subset so that a gap exists and every run fits "
            "the CPU budget. `--scale full` trains on all 60,000 images with 1,000 hidden units for "
            "100 epochs (not run here: no GPU, and no gap is promised at that size).")


def _body(results: Results, table: str, figure: str, why: str) -> str:
    s = SIZES[results.scale]
    small = results.scale == "small"
    return f"""
## Setup

- **Model:** a single-hidden-layer perceptron, `mlp(hidden={s['model.hidden']})` (ReLU), on
  flattened 28×28 images, standardised with Fashion-MNIST's global mean and std (0.286, 0.353).
- **Data:** a class-balanced random subset of {s['size']:,} Fashion-MNIST training images
  (drawn per seed by `specs/repro/subsets_data.py`), small enough that the network fits it
  (train accuracy → 1) and a generalisation gap opens; tested on all 10,000 test images.
- **Training:** SGD, h = 0.01, momentum 0.9, no weight decay, batch 32, {s['train.epochs']}
  epochs, constant rate; evaluated after every epoch on the test set and on the training subset
  (`eval fit`).
- **Contenders:** plain SGD; dropout p = {DROPOUT} on the hidden layer; random-subset multirate
  with a fraction f = {FRACTION} (and, as a variation, f = {VARIANT}) of the hidden weight matrix
  slow and k = {K} (the seed's algorithm, in `specs/repro/subsets_multirate.mrs`:
  `partition subset = random(fraction, per=tensor, of=weight - module("head")) {{ every = k }}`):
  the subset is held at zero for k steps while the other weights take fast steps h, then restored,
  stepped once with k·h and redrawn. Evaluation sees the full weights.
{NARROWED if small else ''}

## Results (median [min–max] over {len(results.seeds)} seeds)

{table}

{figure}

**Reading:** {why}.

## Comparison with the seed

The seed shows (SHLP, MNIST, SGD) the multirate random-subset training reaching a higher test
accuracy than plain SGD, with a smaller gap between training and test accuracy, and compares it
with dropout; its figure gives no numbers in the text, so the comparison is qualitative: does the
ordering of test accuracy and of the gap hold here?

## What was varied, what would change the verdict

Varied here: the regulariser (none, dropout, random-subset multirate at f = {FRACTION} and
f = {VARIANT}), over {len(results.seeds)} seeds (each seed also draws its own training subset).
The verdict is f = {FRACTION}'s (the repository's `specs/random_subgroups.mrs` setting); f =
{VARIANT} can lift it to "partly" at most. Fixed: k = {K}, dropout
p = {DROPOUT}, h, epochs, the subset size. A larger slow fraction or a larger k holds more of the
network at zero for longer (a stronger regulariser, closer to dropout's); a larger training subset
narrows every contender's gap; a weaker or stronger dropout moves the reference line. The seed's
base algorithm is plain SGD; here SGD with momentum 0.9 (mrc integrates random-subset partitions
by SGD-momentum), which may matter: a slow step of k·h with momentum is a large kick. Two
fractions at one k are not a sweep: the seed does not state the fraction or k it used.
"""
