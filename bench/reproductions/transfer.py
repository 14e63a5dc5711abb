"""Multirate transfer learning (seeds/multirate-training.md, "Application: transfer learning").

A ResNet is pretrained on the Fashion-MNIST classes 0–4 (a cached run per seed, key
`pretrain/seedN`: the fixture), then fine-tuned with a new head on the classes 5–9 by four
contenders from one spec (specs/repro/transfer_finetune.mrs, chosen by `--set`):

  full       every layer every step (k = 1);
  k5, k10    multirate: the head every step with step size h, the backbone every k-th step with
             k·h; on the other k−1 steps the backbone runs forward without autograd (the seed's
             "only need to compute gradients for full network every k steps");
  head       head only: the backbone never moves (k beyond the run, its step size 0).

The fine-tune's `init` is a string in the spec, not an override, so each fine-tune run writes a
copy of the spec into its own folder with `init` pointing at its seed's pretraining run's
final.pt (a run folder of this experiment), and trains that copy.

Wall time here is noisy (several jobs share two cores), so the contenders of each seed run back
to back in an order rotated by the seed, and the report also gives the contention-free counts:
optimizer steps and backbone backward passes to the target accuracy.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
import time
from pathlib import Path
from typing import Any

from . import harness
from .harness import Finding, Results, Run

NAME = "transfer"
TITLE = "Multirate transfer: fast head, slow backbone (ResNet, Fashion-MNIST 0–4 → 5–9)"
SEED_DOC = "multirate-training.md"
CLAIM = ("Split the net in two: the final layer(s) fast, the rest slow, so the gradients of the "
         "full network are needed only every k steps; deep nets for transfer learning then train "
         "\"in half the time, without losing much (if any) performance\" (ResNet-50 on CIFAR-100: "
         "≈9,900 s → ≈5,000 s at ≈ equal accuracy).")

HEAD_ONLY_K = 1_000_000  # a period longer than any run: the backbone's one step (step 0) has lr 0
CONTENDERS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("full fine-tuning (k = 1)", {"k": 1}),
    "k5": ("multirate k = 5", {"k": 5}),
    "k10": ("multirate k = 10", {"k": 10}),
    "head": ("head only", {"k": HEAD_ONLY_K, "slow_lr": 0}),
}
COST_STEPS, COST_WARMUP, COST_REPEATS = 24, 4, 3  # the step-cost runs: steps, skipped, repeats
TARGETS = (0.90, 0.97)  # targets: these fractions of the same seed's full fine-tune final accuracy

# Sizes: `small` fits the CPU budget (ResNet-8, width 16, a few thousand images); `full` is the
# seed's scale for a GPU: a CIFAR-style ResNet-50 (6·8+2 layers, width 64) on every image.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "small": {
        "pretrain": {"model.depth": 8, "model.width": 16, "data.limit": 10000, "train.epochs": 3},
        "finetune": {"model.depth": 8, "model.width": 16, "data.limit": 5000, "train.epochs": 5,
                     "train.eval_every": 20, "train.log_every": 20},
    },
    "full": {
        "pretrain": {"model.depth": 50, "model.width": 64, "data.limit": 0, "train.epochs": 15,
                     "train.device": "auto"},
        "finetune": {"model.depth": 50, "model.width": 64, "data.limit": 0, "train.epochs": 10,
                     "train.eval_every": 47, "train.log_every": 47, "train.device": "auto"},
    },
}


def runs(scale: str, seeds: list[int]) -> list[Run]:
    """Per seed: the pretraining fixture, then the four fine-tunes in an order rotated by the seed
    (so no contender always runs first, when the shared machine may be quieter)."""
    sizes = SIZES[scale]
    order = list(CONTENDERS)
    out: list[Run] = []
    for i, seed in enumerate(seeds):
        out.append(Run(f"pretrain/seed{seed}", _pretrain(sizes["pretrain"], seed)))
        for name in order[i % len(order):] + order[:i % len(order)]:
            out.append(Run(f"{name}/seed{seed}", _finetune(sizes["finetune"], seed, CONTENDERS[name][1])))
        out.append(Run(f"stepcost/seed{seed}", _step_costs(sizes["finetune"], seed)))
    return out


def _pretrain(sizes: dict[str, Any], seed: int) -> Any:
    def work(folder: Path) -> dict[str, Any]:
        start = time.process_time()
        result = harness.train("transfer_pretrain.mrs", folder, {**sizes, "train.seed": seed})
        return {**result, "cpu_s": time.process_time() - start}
    return work


def _spec(folder: Path, seed: int) -> Path:
    """A copy of transfer_finetune.mrs in `folder` whose `init` is the final.pt of the seed's
    pretraining run (a sibling run folder of this experiment: `<base>/pretrain/seedN`)."""
    weights = folder.parents[1] / "pretrain" / f"seed{seed}" / "final.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: the pretraining run of seed {seed} is missing")
    text = (harness.SPECS / "transfer_finetune.mrs").read_text(encoding="utf-8")
    text, n = re.subn(r'^init "[^"]*"', f'init "{weights.resolve().as_posix()}"', text, flags=re.M)
    if n != 1:
        raise ValueError("transfer_finetune.mrs: expected one `init \"…\"` line")
    spec = folder / "finetune.mrs"
    spec.write_text(text, encoding="utf-8")
    return spec


def _finetune(sizes: dict[str, Any], seed: int, knobs: dict[str, Any]) -> Any:
    def work(folder: Path) -> dict[str, Any]:
        start = time.process_time()
        result = harness.train(_spec(folder, seed), folder, {**sizes, **knobs, "train.seed": seed})
        return {**result, "k": knobs["k"], "cpu_s": time.process_time() - start}
    return work


def _step_costs(sizes: dict[str, Any], seed: int) -> Any:
    """The seconds of a full step and of a head-only step (backbone forward without autograd),
    measured with mrc's own trainer: short runs of each, interleaved COST_REPEATS times; a run's
    figure is the median of its per-step clock differences after COST_WARMUP steps (a stall of
    the shared machine moves a few differences, not the median), the result the median over the
    repeats. A cost model built on these is far less noisy here than the runs' own wall times."""
    def work(folder: Path) -> dict[str, Any]:
        start = time.process_time()
        spec = _spec(folder, seed)
        over = {**sizes, "data.limit": 128 * COST_STEPS, "train.epochs": 1, "train.log_every": 1,
                "train.eval_every": 0, "train.seed": seed}
        out: dict[str, list[float]] = {"full": [], "head": []}
        for rep in range(COST_REPEATS):
            for name in ("full", "head"):
                knobs = CONTENDERS[name][1]
                sub = folder / f"{name}{rep}"
                sub.mkdir()
                res = harness.train(spec, sub, {**over, **knobs})
                stamps = sorted((int(r["step"]), float(r["time"])) for r in res["curves"] if "loss" in r)
                diffs = [b[1] - a[1] for a, b in itertools.pairwise(stamps) if a[0] >= COST_WARMUP]
                out[name].append(statistics.median(diffs))
        return {"full_s": statistics.median(out["full"]), "head_s": statistics.median(out["head"]),
                "samples": out, "cpu_s": time.process_time() - start}
    return work


# --------------------------------------------------------------------------- reading the runs


def evaluations(result: dict[str, Any]) -> list[dict[str, float]]:
    """The run's evaluations with the training time before each: `time` of an evaluation record
    minus the time spent in the evaluations so far (each evaluation's cost is its record's time
    minus the loss record logged just before it at the same step; log_every = eval_every)."""
    logged: dict[int, float] = {}
    out: list[dict[str, float]] = []
    spent = 0.0
    for rec in result.get("curves", []):
        if "loss" in rec and "time" in rec:
            logged[int(rec["step"])] = float(rec["time"])
        elif "val_acc" in rec and "time" in rec:
            step = int(rec["step"])
            before = logged.get(step)
            if before is not None:
                spent += max(0.0, float(rec["time"]) - before)
            out.append({"step": step, "epoch": float(rec["epoch"]), "acc": float(rec["val_acc"]),
                        "train_s": float(rec["time"]) - spent})
    return out


def backbone_passes(steps: int, k: int) -> int:
    """Backward passes through the backbone in `steps` steps: the steps t with t % k == 0 (the
    head-only run's single one, at step 0, has step size 0)."""
    return math.ceil(steps / k) if steps > 0 else 0


def modelled(steps: int, k: int, cost: dict[str, float]) -> float:
    """Seconds of `steps` steps by the measured step costs: the backbone passes as full steps, the
    others as head-only steps (the head-only run's step 0 is a full step, of step size 0)."""
    passes = backbone_passes(steps, k)
    return passes * cost["full_s"] + (steps - passes) * cost["head_s"]


def _acc_at(evals: list[dict[str, float]], k: int, cost: dict[str, float], when: float) -> float:
    """The run's test accuracy at modelled time `when`, linearly interpolated between evaluations
    (the last evaluation's accuracy beyond it)."""
    points = [(modelled(int(e["step"]), k, cost), e["acc"]) for e in evals]
    for (t0, a0), (t1, a1) in itertools.pairwise(points):
        if t0 <= when <= t1:
            return a0 + (a1 - a0) * (when - t0) / (t1 - t0) if t1 > t0 else a1
    return points[0][1] if when < points[0][0] else points[-1][1]


def to_target(evals: list[dict[str, float]], target: float, k: int) -> dict[str, float] | None:
    """The first evaluation at or above `target`: its training time, step and backbone passes."""
    for e in evals:
        if e["acc"] >= target:
            return {"train_s": e["train_s"], "step": e["step"], "epoch": e["epoch"],
                    "backbone": backbone_passes(int(e["step"]), k)}
    return None


# --------------------------------------------------------------------------- the report


def report(results: Results) -> Finding:
    seeds = results.seeds
    pre = harness.spread(results[f"pretrain/seed{s}"]["val_acc"] for s in seeds)
    evals = {(c, s): evaluations(results[f"{c}/seed{s}"]) for c in CONTENDERS for s in seeds}
    final = {(c, s): results[f"{c}/seed{s}"]["val_acc"] for c in CONTENDERS for s in seeds}
    total = {(c, s): evals[(c, s)][-1]["train_s"] for c in CONTENDERS for s in seeds}
    steps = int(results[f"full/seed{seeds[0]}"]["steps"])
    cost = {s: results[f"stepcost/seed{s}"] for s in seeds}
    k_of = {c: knobs["k"] for c, (_, knobs) in CONTENDERS.items()}
    full_s = harness.spread(cost[s]["full_s"] * 1e3 for s in seeds)
    head_s = harness.spread(cost[s]["head_s"] * 1e3 for s in seeds)
    numbers: dict[str, Any] = {"targets": list(TARGETS), "pretrain_acc": pre.json(),
                               "step_ms": {"full": full_s.json(2), "head_only": head_s.json(2)}}

    rows = []
    for c, (label, knobs) in CONTENDERS.items():
        acc = harness.spread(final[(c, s)] for s in seeds)
        tot = harness.spread(total[(c, s)] for s in seeds)
        rel_total = harness.spread(total[(c, s)] / total[("full", s)] for s in seeds)
        passes = 0 if c == "head" else backbone_passes(steps, knobs["k"])
        model = harness.spread(modelled(steps, knobs["k"], cost[s]) / modelled(steps, 1, cost[s]) for s in seeds)
        rows.append((label, acc.format(3), tot.format(1), rel_total.format(2), model.format(2), passes))
        numbers[c] = {"final_acc": acc.json(), "train_s": tot.json(2), "train_s_vs_full": rel_total.json(3),
                      "modelled_vs_full": model.json(3), "backbone_passes": passes}
    table = harness.table(("contender", "final test acc", "training time, whole run (s)",
                           "÷ full, same seed", "modelled time ÷ full", "backbone passes, whole run"), rows)

    target_tables = []
    for fraction in TARGETS:
        tag = f"{round(fraction * 100)}"
        rows = []
        for c, (label, knobs) in CONTENDERS.items():
            hit = {s: to_target(evals[(c, s)], fraction * final[("full", s)], knobs["k"]) for s in seeds}
            ok = [s for s in seeds if hit[s] is not None]
            both = [s for s in ok if to_target(evals[("full", s)], fraction * final[("full", s)], 1)]
            ttt = harness.spread(hit[s]["train_s"] for s in ok) if ok else None
            rel = harness.spread(hit[s]["train_s"] / to_target(evals[("full", s)], fraction * final[("full", s)],
                                                              1)["train_s"] for s in both) if both else None
            stt = harness.spread(hit[s]["step"] for s in ok) if ok else None
            btt = harness.spread(hit[s]["backbone"] for s in ok) if ok else None
            mod = harness.spread(
                modelled(int(hit[s]["step"]), k_of[c], cost[s]) / modelled(int(to_target(
                    evals[("full", s)], fraction * final[("full", s)], 1)["step"]), 1, cost[s])
                for s in both) if both else None
            rows.append((label, f"{len(ok)}/{len(seeds)}", ttt.format(1) if ttt else "—",
                         rel.format(2) if rel else "—", mod.format(2) if mod else "—",
                         stt.format(0) if stt else "—", btt.format(0) if btt else "—"))
            numbers[c][f"target{tag}"] = {"reached": len(ok), "time_s": ttt.json(2) if ttt else None,
                                          "time_vs_full": rel.json(3) if rel else None,
                                          "modelled_vs_full": mod.json(3) if mod else None,
                                          "steps": stt.json(0) if stt else None,
                                          "backbone_passes": btt.json(0) if btt else None}
        target_tables.append(
            f"**Target {fraction:.0%} of the same seed's full fine-tune final accuracy**\n\n" + harness.table(
                ("contender", "reached", "training time to target (s)", "÷ full, same seed",
                 "modelled time ÷ full", "steps to target", "backbone passes to target"), rows))

    # curves: accuracy against epoch, and against training time (the x of each evaluation is the
    # median over seeds of the training time at it, so the seeds' curves share their x values)
    by_epoch, by_time, by_model = {}, {}, {}
    for c, (label, _) in CONTENDERS.items():
        by_epoch[label] = [([e["epoch"] for e in evals[(c, s)]], [e["acc"] for e in evals[(c, s)]]) for s in seeds]
        n = min(len(evals[(c, s)]) for s in seeds)
        xs = [harness.spread(evals[(c, s)][j]["train_s"] for s in seeds).median for j in range(n)]
        by_time[label] = [(xs, [e["acc"] for e in evals[(c, s)][:n]]) for s in seeds]
        xm = [harness.spread(modelled(int(evals[(c, s)][j]["step"]), k_of[c], cost[s]) for s in seeds).median
              for j in range(n)]
        by_model[label] = [(xm, [e["acc"] for e in evals[(c, s)][:n]]) for s in seeds]
    path, md = results.figure("curves")
    harness.bands(path, [("test accuracy vs epoch", "epoch", "test accuracy (classes 5–9)", by_epoch),
                         ("test accuracy vs training time", "training time (s, median over seeds)",
                          "test accuracy (classes 5–9)", by_time),
                         ("test accuracy vs modelled time", "modelled time (s, median over seeds)",
                          "test accuracy (classes 5–9)", by_model)],
                  title="Fine-tuning on Fashion-MNIST 5–9 from a ResNet pretrained on 0–4")

    # equal compute: full fine-tuning's accuracy at the modelled time where each multirate run ends
    same = []
    for c in ("k5", "k10"):
        full_at = [_acc_at(evals[("full", s)], 1, cost[s], modelled(steps, k_of[c], cost[s])) for s in seeds]
        own = harness.spread(final[(c, s)] for s in seeds)
        numbers[c]["full_acc_at_same_modelled_time"] = harness.spread(full_at).json()
        same.append(f"at the modelled time where {CONTENDERS[c][0]} ends, full fine-tuning is at "
                    f"{harness.spread(full_at).format(3)} (multirate: {own.format(3)})")
    equal = ("Equal compute: " + "; ".join(same) + ". Where these agree, multirate at equal epochs "
             "behaves like a shorter full fine-tune: its time saving buys no accuracy that full "
             "fine-tuning would not reach in the same time.")

    cpu = [v.get("cpu_s") for v in results.values.values()]
    cpu_note = (f"CPU time of all the runs: {sum(cpu) / 60:.1f} min (one torch thread each; on this "
                f"shared machine it includes the cost of contention)." if all(c is not None for c in cpu) else "")
    verdict, why = _verdict(numbers)
    numbers["verdict_reason"] = why
    costs = (f"Measured step costs (mrc's trainer, interleaved short runs, median): full step "
             f"{full_s.format(1)} ms, head-only step {head_s.format(1)} ms, c = "
             f"{harness.spread(cost[s]['head_s'] / cost[s]['full_s'] for s in seeds).format(2)}")
    reading = why + "\n\n" + costs + ".\n\n" + equal.rstrip(".")
    body = _body(results, pre, table, "\n\n".join(target_tables), md, reading, steps)
    return Finding(verdict, numbers, body + ("\n" + cpu_note if cpu_note else ""))


def _verdict(n: dict[str, Any]) -> tuple[str, str]:
    """Judged on the modelled times (measured step costs × step counts; the runs' own wall times
    are too noisy on the shared machine, and are reported beside). Reproduced: a multirate
    contender reaches the strict target (97 %) in every seed in ≤ 0.6× full fine-tuning's time
    (median of same-seed ratios) and ends within 1 point of its final accuracy. Partly: a
    multirate contender's whole run takes ≤ 0.6× the full run's time and it either ends within
    3 points or reaches the loose target (90 %) in every seed faster than full fine-tuning. Not
    reproduced otherwise."""
    full_acc = n["full"]["final_acc"]["median"]
    strict, loose = (f"target{round(f * 100)}" for f in (max(TARGETS), min(TARGETS)))
    lines, best = [], "not reproduced"
    rank = {"not reproduced": 0, "partly": 1, "reproduced": 2}
    for c in ("k5", "k10"):
        m = n[c]
        gap = full_acc - m["final_acc"]["median"]
        whole, wall = m["modelled_vs_full"]["median"], m["train_s_vs_full"]["median"]
        s_rel, l_rel = m[strict]["modelled_vs_full"], m[loose]["modelled_vs_full"]
        lines.append(f"{c}: whole run {whole:.2f}× the full fine-tune's modelled time ({wall:.2f}× its "
                     f"wall time), final accuracy {gap * 100:.1f} points below it; "
                     f"{round(max(TARGETS) * 100)} % target reached in "
                     f"{m[strict]['reached']}/{n['full'][strict]['reached']} seeds"
                     + (f" at {s_rel['median']:.2f}× full's modelled time" if s_rel else "")
                     + f", {round(min(TARGETS) * 100)} % target in {m[loose]['reached']}/{n['full'][loose]['reached']}"
                     + (f" at {l_rel['median']:.2f}× full's modelled time" if l_rel else ""))
        verdict = "not reproduced"
        if (m[strict]["reached"] == n["full"][strict]["reached"] and s_rel and s_rel["median"] <= 0.6
                and gap <= 0.01):
            verdict = "reproduced"
        elif whole <= 0.6 and (gap <= 0.03 or (m[loose]["reached"] == n["full"][loose]["reached"]
                                              and l_rel and l_rel["max"] < 1.0)):
            verdict = "partly"
        best = verdict if rank[verdict] > rank[best] else best
    return best, "; ".join(lines)


CPU_TIMING = ("this machine has 2 cores shared by several jobs, so wall times are noisy. The four "
              "contenders of a seed run back to back, in an order rotated by the seed, with one torch "
              "thread each; the step and backbone-pass counts are free of contention, and the ratio to "
              "the full fine-tune of the same seed cancels part of the noise.")
NARROWED = ("- **Narrowed vs the seed:** the seed fine-tunes an ImageNet-pretrained ResNet-50 on "
            "CIFAR-100; here a ResNet-8 pretrained on 10,000 images of half of Fashion-MNIST's classes, "
            "on a CPU, in minutes. `--scale full` pretrains a CIFAR-style ResNet-50 (basic blocks, "
            "width 64) on all 30,000 images of classes 0–4 (15 epochs) and fine-tunes it on all 30,000 "
            "of classes 5–9 (10 epochs), for a GPU; it has not been run here (no GPU).")


def _body(results: Results, pre: Any, table: str, targets: str, figure: str, why: str, steps: int) -> str:
    small = results.scale == "small"
    sizes = SIZES[results.scale]
    p, f = sizes["pretrain"], sizes["finetune"]
    return f"""
## Setup

- **Pretraining (the fixture, one cached run per seed):** `specs/repro/transfer_pretrain.mrs`,
  a CIFAR-style ResNet-{p['model.depth']} (width {p['model.width']}) on the Fashion-MNIST classes
  0–4 (T-shirt, trouser, pullover, dress, coat), {p['data.limit'] or 'all 30,000'} training
  images, {p['train.epochs']} epochs, SGD momentum 0.9, lr 0.05 cosine, weight decay 5e-4, crop +
  flip. Test accuracy on classes 0–4: {pre.format(3)}.
- **Fine-tuning:** `specs/repro/transfer_finetune.mrs`, a new 5-way head on the classes 5–9
  (sandal, shirt, sneaker, bag, ankle boot), {f['data.limit'] or 'all 30,000'} training images,
  {f['train.epochs']} epochs ({steps} steps of batch 128), SGD momentum 0.9, h = 0.02 with a cosine decay,
  weight decay 5e-4, crop + flip; evaluated on the 5,000 test images of classes 5–9 every
  {f['train.eval_every']} steps. The multirate contenders use the seed's no-drift algorithm:
  the backbone takes a step of k·h every k-th step (its gradient taken with the head's, in one
  backward pass), the head a step of h every step; on the other steps the backbone runs forward
  without autograd (`mrc graph specs/repro/transfer_finetune.mrs --set k=5 --compact` shows the
  two step patterns). Head only: the backbone never moves (its batch-norm statistics still
  follow the new data, as in every contender).
- **Targets:** 90 % and 97 % of the same seed's full fine-tune final test accuracy (the first
  evaluation at or above it; evaluations every {f['train.eval_every']} steps).
  "Training time" is the run's clock at an evaluation minus the time spent in the evaluations
  before it, so evaluation is not counted. "Modelled time" is the same count of steps priced by
  step costs measured per seed with mrc's trainer in short interleaved runs (`stepcost/seedN`: a
  full step, and a head-only step whose backbone runs without autograd; the median per-step
  clock difference, median of {COST_REPEATS} repeats): backbone passes × full step + other
  steps × head-only step. It is robust to the shared machine's stalls; the verdict uses it, the
  wall times are reported beside it.
- **Timing caveat:** {CPU_TIMING if small else 'timings on the device named above.'}
{NARROWED if small else ''}

## Results (median [min–max] over {len(results.seeds)} seeds)

{table}

{targets}

Backbone passes are the backward passes through the backbone (and its updates), a count free of
machine noise; a fast step costs the backbone's forward only. "—": no seed reached the target.

{figure}

**Reading:** {why}.

## Comparison with the seed

The seed's ResNet-50/CIFAR-100 fine-tune takes ≈9,900 s in full and ≈5,000 s with multirate at
about the same accuracy (≈ 0.5×); DistilBERT/SST-2 ≈380 s → ≈200 s. The ideal ratio for a
multirate step is (1 + (k−1)·c)/k of a full step, with c the cost of a head-only step over a full
one (forward of the backbone without autograd plus the head's backward): c ≈ 1/3 gives ≈ 0.47 at
k = 5 and ≈ 0.40 at k = 10.

## What was varied, what would change the verdict

Varied: k (1, 5, 10, and head only, which is k = ∞). Fixed: h and its cosine decay, the
pretraining, the data sizes and the number of epochs: every contender runs the same steps, as in
the seed's comparison at equal epochs. The time saving per step is a property of the schedule
(the backbone's backward pass is skipped on k−1 of k steps) and should hold anywhere; the accuracy
at equal epochs depends on how far the backbone must move. Here the pretrained features transfer
only partly (head only ends well below full fine-tuning), so the backbone must learn, and it gets
1/k as many (k times larger) steps. The verdict could change with a backbone that needs less
adaptation (a larger, longer pretraining, as the seed's ImageNet-pretrained ResNet-50: head only
closer to full), with more epochs for the multirate runs (they could then spend part of the time
saved; not run here), with a lower target (the 90 % table), or with another k·h for the backbone
(the seed's rule h_S = k·h was kept).
"""
