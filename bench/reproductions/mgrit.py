"""Layer-parallel training by MGRIT: convergence against depth, and one-shot against serial.

Three parts, all through mrc's own `mgrit` statement (specs/repro/mgrit_*.mrs):

1. **Convergence factor vs depth.** The level-set ODE-ResNet y ← y + h·tanh(W_n y + b_n) with a
   fixed final time T and h = T/N, at N = 64 … 1024 layers, solved by MGRIT (coarsening 4, FCF
   relaxation) with 2 and 3 levels, from u_n = u_0 (no warm start), 8 iterations of the forward
   and of the adjoint solve, in float64 (specs/repro/mgrit_convergence.mrs: lr = 0, one step; the
   residual norms per iteration are mrc's `mgrit` metrics). Two networks per seed: the *initial*
   one (random weights at each N) and the *trained* one (the serial level-set network of part 2,
   trained at its own depth, its layers sampled piecewise constant in time onto N layers — the
   same ODE discretised with N steps). The convergence factor of a solve is the geometric mean
   of ‖r_k‖/‖r_{k−1}‖ over the iterations above the round-off floor.
2. **One-shot vs serial on the level sets.** The seed's reference problem (LayerParallelLearning,
   examples/peaks: 5000 points in [−3, 3]², 5 level sets of MATLAB's peaks, 8 channels), trained
   serially and one-shot (2 forward and 1 adjoint MGRIT iterations per step, 3 levels,
   coarsening 4, warm start).
3. **One-shot vs serial on Fashion-MNIST** with a conv ODE-ResNet (16 channels, 16 layers) on
   6000 training images pooled to 7×7 (small scale).

`--scale full`: the seed's level-set depth N = 1024 for training, N = 64 … 4096 for the
convergence study, and all 60,000 Fashion-MNIST images at 28×28 with a 64-layer stack.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from reproductions import harness
from reproductions.harness import Finding, Results, Run

NAME = "mgrit"
TITLE = "MGRIT: convergence factor vs depth (2, 3, max levels); one-shot vs serial (level sets, Fashion-MNIST)"
SEED_DOC = "layer-parallel-mgrit.md"
CLAIM = ("Iterative multigrid-in-time (MGRIT, F/C relaxation, coarsening) solves the forward and "
         "backward propagation of a deep ODE-ResNet layer-parallel with \"fast multigrid "
         "convergence, independent of the number of layers\"; one-shot training with early-stopped "
         "MGRIT (2 cycles per optimization iteration) trains the network as accurately as serial "
         "training (level sets N = 1024, hyperspectral N = 512).")

LEVELS: tuple[int | str, ...] = (2, 3, "max")
"""Level counts of the convergence study; "max": as many levels as keep the coarsest grid at
COARSEST steps or more (XBraid's `max_levels` with `min_coarse`, as the seed's reference code
runs it), so the coarsest grid stays about the same size as N grows."""
COARSEST = 8
CF = 4             # the coarsening factor of the convergence study (mgrit_convergence.mrs)
ITERS = 8          # iterations of each solve in the convergence study (mgrit_convergence.mrs)
FLOOR = 1e-11      # relative residual below which float64 round-off decides the ratio
SLOPE = 0.1        # "independent of N": log ρ grows by at most this per unit of log N (7 % per doubling)


def _depths(scale: str) -> list[int]:
    return [64, 128, 256, 512, 1024] + ([2048, 4096] if scale == "full" else [])


def _train_overrides(scale: str, which: str) -> dict[str, Any]:
    """What `--scale full` changes in the training specs (small scale: the specs' own values)."""
    if scale != "full":
        return {}
    dev = harness.device(scale)
    if which == "levelsets":
        return {"depth": 1024, "train.device": dev}
    return {"data.size": 28, "data.limit": 0, "depth": 64, "train.epochs": 10, "train.device": dev}


CONTENDERS: dict[str, tuple[str, dict[str, Any], str, str]] = {  # key: (spec, settings, data, label)
    "levelsets/serial": ("mgrit_levelsets.mrs", {}, "levelsets", "serial"),
    "levelsets/oneshot": ("mgrit_levelsets_oneshot.mrs", {}, "levelsets", "one-shot MGRIT"),
    "levelsets/oneshot_cold": ("mgrit_levelsets_oneshot.mrs", {"mgrit.stack.warm_start": "false"},
                               "levelsets", "one-shot MGRIT, no warm start"),
    "levelsets_T1/serial": ("mgrit_levelsets.mrs", {"T": 1.0}, "levelsets", "serial, T = 1"),
    "levelsets_T1/oneshot": ("mgrit_levelsets_oneshot.mrs", {"T": 1.0}, "levelsets", "one-shot MGRIT, T = 1"),
    "fashion/serial": ("mgrit_fashion.mrs", {}, "fashion", "serial"),
    "fashion/oneshot": ("mgrit_fashion_oneshot.mrs", {}, "fashion", "one-shot MGRIT"),
}


def runs(scale: str, seeds: list[int]) -> list[Run]:
    """Training runs first (the convergence study's trained networks come from them), then the
    convergence runs: network (initial, trained) × levels × depth, per seed."""
    out = []
    for key, (spec, over, which, _) in CONTENDERS.items():
        for seed in seeds:
            settings = {**over, **_train_overrides(scale, which), "train.seed": seed}
            out.append(Run(f"{key}/seed{seed}", _train(spec, settings)))
    for net in ("initial", "trained"):
        for levels in LEVELS:
            for n in _depths(scale):
                for seed in seeds:
                    out.append(Run(f"conv/{net}/L{levels}/N{n}/seed{seed}",
                                   _converge(net, levels, n, seed, scale)))
    return out


def _train(spec: str, settings: dict[str, Any]):
    def work(folder: Path) -> dict[str, Any]:
        return harness.train(spec, folder, settings)
    return work


def levels_for(levels: int | str, n: int) -> int:
    """The number of levels a convergence run uses at depth `n` (see LEVELS)."""
    if levels != "max":
        return int(levels)
    count, size = 1, n
    while size // CF >= COARSEST:
        count, size = count + 1, size // CF
    return count


def _converge(net: str, levels: int | str, n: int, seed: int, scale: str):
    def work(folder: Path) -> dict[str, Any]:
        text = (harness.SPECS / "mgrit_convergence.mrs").read_text(encoding="utf-8")
        if net == "trained":
            # the serial level-set run of this seed: <base>/levelsets/serial/seed<seed>/final.pt
            base = folder.parents[4]
            trained = base / "levelsets" / "serial" / f"seed{seed}" / "final.pt"
            state = torch.load(trained, map_location="cpu", weights_only=True)
            torch.save(resample_layers(state, n), folder / "weights.pt")
            text += '\ninit "weights.pt"(strict = true)\n'
        spec = folder / "convergence.mrs"
        spec.write_text(text, encoding="utf-8")
        overrides = {"depth": n, "mgrit.stack.levels": levels_for(levels, n), "train.seed": seed,
                     "train.device": harness.device(scale)}
        result = harness.train(spec, folder, overrides)
        solves = [rec["mgrit"]["stack"] for rec in result["curves"] if "mgrit" in rec]
        if not solves:
            raise RuntimeError(f"{folder}: the run recorded no MGRIT residuals")
        last = solves[-1]
        return {"forward": last["forward"], "adjoint": last["adjoint"],
                "rho_forward": factor(last["forward"]), "rho_adjoint": factor(last["adjoint"]),
                "wall_s": result["wall_s"]}
    return work


def resample_layers(state: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """A state_dict of an ode_resnet with its stack's layers sampled onto `n` layers: layer j of
    the new stack takes the weights of old layer ⌊j·N_old/n⌋ (piecewise constant in time), so
    with h = T/n it discretises the same ODE y' = tanh(W(t) y + b(t)) as the trained network."""
    prefix = "stack.layers."
    old = 1 + max(int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix))
    out = {k: v for k, v in state.items() if not k.startswith(prefix)}
    for j in range(n):
        src = j * old // n
        for name in ("weight", "bias"):
            out[f"{prefix}{j}.{name}"] = state[f"{prefix}{src}.{name}"].clone()
    return out


def factor(residuals: list[float]) -> float:
    """The convergence factor of a solve: the geometric mean of ‖r_k‖/‖r_{k−1}‖ over the
    iterations whose residual is above the round-off floor (FLOOR relative to the first)."""
    r = [float(x) for x in residuals]
    if len(r) < 2 or r[0] <= 0:
        return float("nan")
    k = max((i for i in range(1, len(r)) if r[i] > FLOOR * r[0]), default=1)
    return (r[k] / r[0]) ** (1.0 / k) if r[k] > 0 else 0.0


def first_factor(residuals: list[float]) -> float:
    """‖r_1‖/‖r_0‖: what the first iteration after the initial relaxation achieves."""
    return float(residuals[1]) / float(residuals[0]) if len(residuals) > 1 and residuals[0] > 0 else float("nan")


def loglog_slope(xs: list[int], ys: list[float]) -> float:
    """The least-squares slope of log y against log x (0: independent of x)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(y, 1e-300)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((x - mx) ** 2 for x in lx)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly, strict=True)) / den if den > 0 else 0.0


# --------------------------------------------------------------------------- report


def report(results: Results) -> Finding:
    seeds = results.seeds
    depths = sorted({int(k.split("/")[3][1:]) for k in results.values if k.startswith("conv/")})
    numbers: dict[str, Any] = {}

    # ---- 1. convergence factor vs depth
    conv_rows, rho = [], {}
    for net in ("initial", "trained"):
        for levels in LEVELS:
            for which in ("forward", "adjoint"):
                row = [net, levels, which]
                for n in depths:
                    s = harness.spread(results[f"conv/{net}/L{levels}/N{n}/seed{seed}"][f"rho_{which}"]
                                       for seed in seeds)
                    rho[(net, levels, which, n)] = s
                    row.append(s.format(3))
                conv_rows.append(row)
    slopes = {}
    for net in ("initial", "trained"):
        for levels in LEVELS:
            for which in ("forward", "adjoint"):
                meds = [rho[(net, levels, which, n)].median for n in depths]
                slopes[(net, levels, which)] = loglog_slope(depths, meds)
                numbers[f"rho_{which}_{net}_L{levels}"] = {
                    str(n): round(m, 4) for n, m in zip(depths, meds, strict=True)}
    worst_slope = max(slopes.values())
    worst_rho = max(s.hi for s in rho.values())
    independent = worst_slope <= SLOPE and worst_rho < 1.0
    numbers["rho_worst_loglog_slope"] = round(worst_slope, 3)
    numbers["rho_worst"] = round(worst_rho, 4)
    slope_rows = [(net, levels, which, f"{v:+.3f}") for (net, levels, which), v in slopes.items()]
    # the first iteration's reduction ‖r_1‖/‖r_0‖: one-shot training runs only 2 iterations
    first_rows = []
    for net in ("initial", "trained"):
        for levels in LEVELS:
            row = [net, levels]
            for n in depths:
                row.append(harness.spread(first_factor(results[f"conv/{net}/L{levels}/N{n}/seed{seed}"]["forward"])
                                          for seed in seeds).format(3))
            first_rows.append(row)

    path, conv_md = results.figure("convergence")
    panels = []
    for which in ("forward", "adjoint"):
        lines = {}
        for net in ("initial", "trained"):
            for levels in LEVELS:
                lines[f"{net}, {levels} levels"] = [
                    ([math.log2(n) for n in depths],
                     [results[f"conv/{net}/L{levels}/N{n}/seed{seed}"][f"rho_{which}"] for n in depths])
                    for seed in seeds]
        panels.append((f"{which} solve: convergence factor vs depth", "log2 N (layers)",
                       "convergence factor ρ", lines))
    hist = {}
    for n in (depths[0], depths[len(depths) // 2], depths[-1]):
        hist[f"N={n}"] = [_history(results[f"conv/trained/L3/N{n}/seed{seed}"]["forward"]) for seed in seeds]
    panels.append(("trained net, 3 levels: forward residual", "MGRIT iteration", "log10 ‖r_k‖/‖r_0‖", hist))
    harness.bands(path, panels, title="MGRIT convergence vs depth (fixed T, h = T/N; median, min–max over seeds)")

    # ---- 2./3. one-shot vs serial
    def accs(key: str) -> list[float]:
        return [float(results[f"{key}/seed{s}"]["val_acc"]) for s in seeds]

    acc_rows, deltas = [], {}
    pairs = (("levelsets", "level sets (peaks), T = 3.2", "levelsets/serial", "levelsets/oneshot"),
             ("levelsets_cold", "level sets, T = 3.2, no warm start", "levelsets/serial", "levelsets/oneshot_cold"),
             ("levelsets_T1", "level sets, T = 1", "levelsets_T1/serial", "levelsets_T1/oneshot"),
             ("fashion", "Fashion-MNIST (conv)", "fashion/serial", "fashion/oneshot"))
    for name, label, ser_key, one_key in pairs:
        ser, one = accs(ser_key), accs(one_key)
        d = harness.spread(o - s for o, s in zip(one, ser, strict=True))
        deltas[name] = d
        ws = harness.spread(float(results[f"{ser_key}/seed{s}"]["wall_s"]) for s in seeds)
        wo = harness.spread(float(results[f"{one_key}/seed{s}"]["wall_s"]) for s in seeds)
        sers, ones = harness.spread(ser), harness.spread(one)
        acc_rows.append((label, sers.format(4), ones.format(4),
                         f"{d.median * 100:+.2f} [{d.lo * 100:+.2f} – {d.hi * 100:+.2f}]",
                         f"{ws.median:.0f} / {wo.median:.0f}"))
        numbers[f"{name}_serial_acc"] = sers.json()
        numbers[f"{name}_oneshot_acc"] = ones.json()
        numbers[f"{name}_oneshot_minus_serial_pts"] = round(d.median * 100, 2)

    # the solves' residuals during one-shot training (the last logged step's, per logged step)
    res_rows = []
    for key in ("levelsets/oneshot", "levelsets/oneshot_cold", "levelsets_T1/oneshot", "fashion/oneshot"):
        fwd = [rec["mgrit"]["stack"]["forward"] for s in seeds
               for rec in results[f"{key}/seed{s}"]["curves"] if "mgrit" in rec]
        ratio = harness.spread(f[-1] / f[0] for f in fwd if len(f) > 1 and f[0] > 0)
        res_rows.append((CONTENDERS[key][3] + f" ({key.split('/')[0]})", len(fwd),
                         harness.spread(f[0] for f in fwd).format(3), harness.spread(f[-1] for f in fwd).format(3),
                         ratio.format(3)))
    path, acc_md = results.figure("accuracy")

    def curves(key: str) -> list[tuple[list[float], list[float]]]:
        return [harness.curve(results[f"{key}/seed{s}"], "val_acc") for s in seeds]

    harness.bands(path, [
        ("level sets (peaks), T = 3.2: validation accuracy", "epoch", "val accuracy",
         {"serial": curves("levelsets/serial"), "one-shot MGRIT": curves("levelsets/oneshot"),
          "one-shot, no warm start": curves("levelsets/oneshot_cold")}),
        ("level sets (peaks), T = 1: validation accuracy", "epoch", "val accuracy",
         {"serial": curves("levelsets_T1/serial"), "one-shot MGRIT": curves("levelsets_T1/oneshot")}),
        ("Fashion-MNIST conv ODE-ResNet: test accuracy", "epoch", "test accuracy",
         {"serial": curves("fashion/serial"), "one-shot MGRIT": curves("fashion/oneshot")}),
    ], title="One-shot MGRIT (2 forward, 1 adjoint iterations per step) vs serial training")

    def accurate(d: harness.Spread) -> str:
        return "reproduced" if d.median >= -0.01 else ("partly" if d.median >= -0.03 else "not reproduced")

    sub = {"convergence independent of N": "reproduced" if independent else (
               "partly" if worst_rho < 1.0 else "not reproduced"),
           "one-shot ≈ serial, level sets (T = 3.2, the seed's warm start)": accurate(deltas["levelsets"]),
           "one-shot ≈ serial, Fashion-MNIST": accurate(deltas["fashion"])}
    verdicts = set(sub.values())
    verdict = verdicts.pop() if len(verdicts) == 1 else "partly"
    numbers["sub_verdicts"] = sub

    r0 = results[f"levelsets/serial/seed{seeds[0]}"]
    f0 = results[f"fashion/serial/seed{seeds[0]}"]
    full = results.scale == "full"
    ls_depth = 1024 if full else 64
    max_levels = ", ".join(f"{levels_for('max', n)} at N={n}" for n in depths)
    crit = "the median one-shot − serial difference over the seeds is ≥ −1 point (partly: ≥ −3)"
    body = f"""
## Verdict per claim

{harness.table(("claim", "verdict"), sub.items())}

Criteria, fixed before the final 3-seed run (after a one-seed trial run): *independent of N* —
the least-squares slope of log ρ against log N is at most +{SLOPE} (ρ grows by at most 7 % per
doubling of N) for every network, level count and solve, and every factor is below 1;
*as accurate* — {crit}. The experiment's verdict is the common one of the claims, else *partly*.

## Setup

- **The serial level-set baseline (fixed first).** The issue's 0.68 (one-shot) / 0.69 (serial)
  came from `specs/mgrit_levelsets.mrs` as it was: `data levelsets`, Adam at 0.01, 10 epochs.
  Two things were wrong. (1) The data: the seed's level-set problem is that of its authors'
  reference code (LayerParallelLearning, `examples/peaks/peaks.cfg`: 5000 training points in
  [−3, 3]², 5 classes, 8 channels, T = 1, 32 layers), the level sets of MATLAB's `peaks` — mrc's
  `data peaks`. mrc's `data levelsets` is another, harder field ((x²+y²)/4 + sin 2x·cos 2y, a
  grid of wavy bumps) that mrc's docs called "the seed's set". (2) Under-training: measured here
  (seed 0, serial, depth 64, T = 3.2): Adam 0.01 for 10 epochs gives 0.68 on `levelsets` and
  0.88 on `peaks`; Adam 0.03 with a cosine decay over 20 epochs gives 0.88 on `levelsets` (0.95
  at width 16) and 0.96 on `peaks`. The specs here and `specs/mgrit_levelsets.mrs`,
  `specs/ode_levelsets.mrs` now use `peaks`, Adam 0.03, cosine, 20 epochs. Checked and not at
  fault: h = T/N, tanh, width 8, the data generation (uniform points, equal-area level sets).
- **Level-set network:** `ode_resnet(width=8, depth={ls_depth}, h=T/depth, T=3.2, tanh)`: a dense
  opening layer 2→8 with tanh, the stack y ← y + h·tanh(W_n y + b_n), a linear head; 4000
  training / 1000 validation points, batch 64, Adam(0.03), cosine decay, 20 epochs
  ({r0.get('steps')} steps). The seed's reference code uses T = 1, 32 layers, SmoothReLU and
  full-batch L-BFGS; here T = 3.2 (h = 0.05 at 64 layers, as `specs/mgrit_levelsets.mrs`; it
  trains to higher accuracy than T = 1 in the same budget), tanh and Adam on mini-batches.
- **One-shot MGRIT:** the same spec with `mgrit "stack" {{ levels = 3; coarsening = 4; relax = FCF;
  forward_iters = 2; backward_iters = 1 }}`: every step runs 2 forward V-cycles and 1 adjoint
  V-cycle, each warm-started from the previous step's states (mrc's default), and updates with
  the inexact gradient (the seed's "2 multigrid cycles per optimization iteration"). Evaluation
  runs the stack serially. Variants: no warm start (each solve from u_n = u_0), and T = 1.
- **Convergence study:** `specs/repro/mgrit_convergence.mrs`: the same network at N =
  {", ".join(map(str, depths))} layers with the same T (h = T/N), one batch of 128 points, lr = 0,
  float64, each solve from u_n = u_0 (no warm start), {ITERS} forward and {ITERS} adjoint
  iterations, coarsening {CF}, FCF relaxation, with 2 levels (coarsest grid N/4, solved serially),
  3 levels (N/16), and *max* levels: as many as keep the coarsest grid ≥ {COARSEST} steps
  ({max_levels}; the reference code's `braid_maxlevels`/`braid_mincoarse` way, which keeps the
  serial coarse solve about the same size as N grows). ρ = geometric mean of ‖r_k‖/‖r_{{k−1}}‖
  over the iterations above a relative residual of {FLOOR:g} (mrc's residual: the fine level's
  C-point residual, one 2-norm, recorded in the run's `mgrit` metrics). *initial*: the random
  initial weights of each seed at each N; *trained*: the seed's serial level-set network (above,
  trained at {ls_depth} layers) with its layers sampled piecewise constant in time onto N layers
  (the same ODE, finer steps).
- **Fashion-MNIST:** a conv ODE-ResNet `ode_resnet(variant=conv, width=16, depth={64 if full else 16},
  T=1.6, tanh)` (3×3 convolutions at the input resolution, global average pooling, linear head)
  on {"all 60,000 training images at 28×28" if full else "6000 training images average-pooled 4×4 to 7×7"}
  (`specs/repro/mgrit_fashion_data.py`), normalised, batch 64, Adam(0.03), cosine,
  {f0.get('epochs')} epochs; the 10,000 test images are the validation split. One-shot: 3 levels,
  coarsening 2, FCF, 2 forward / 1 adjoint iterations, warm start.
  **Narrowed vs the seed:** the seed's image example is MNIST (28×28; no network size in the
  seed document); pooling to 7×7, 16 layers and 6000 images keep 3 seeds × 2 contenders in the
  CPU budget (a conv ODE-ResNet keeps its resolution through every layer). Its accuracy (≈ 0.75)
  is that of a small, bottlenecked network (16 channels averaged into the head), not of a good
  Fashion-MNIST model: what is compared is one-shot against serial on the same network.
- **Seeds:** {", ".join(map(str, seeds))} (initial weights, data order; the data sets are fixed).

## Results

### Convergence factor vs depth (median [min–max] over {len(seeds)} seeds)

{harness.table(("network", "levels", "solve", *[f"N={n}" for n in depths]), conv_rows)}

Trend: the least-squares slope of log ρ (median over seeds) against log N (0: independent of
the depth; negative: faster at greater depth). Largest factor seen: {worst_rho:.3f}.

{harness.table(("network", "levels", "solve", "slope of log ρ vs log N"), slope_rows)}

The first iteration's reduction ‖r_1‖/‖r_0‖ of the forward solve (median [min–max]). One-shot
training runs 2 forward iterations per step, so this pre-asymptotic reduction, more than the
asymptotic ρ, is what its gradients see:

{harness.table(("network", "levels", *[f"N={n}" for n in depths]), first_rows)}

{conv_md}

### One-shot vs serial (final validation accuracy, median [min–max] over {len(seeds)} seeds)

{harness.table(("data", "serial", "one-shot MGRIT", "Δ one-shot − serial, pts, median [min–max]",
                 "wall s serial / one-shot (median)"), acc_rows)}

{acc_md}

The forward solve's residual during one-shot training, median [min–max] over every logged
step of every seed: the residual of the first iteration (after its relaxation) ‖r_1‖, of the
second ‖r_2‖, and their ratio (absolute norms: comparable between runs of one network only):

{harness.table(("one-shot run", "logged steps", "‖r_1‖", "‖r_2‖", "‖r_2‖/‖r_1‖"), res_rows)}

Time: the whole small-scale command (3 seeds, {len(results.values)} runs) used 451 s of CPU on one
thread when measured (2026-12-06; ≈ 19 min wall on a shared 2-core machine), so ≈ 8 min of one
core standalone. The wall times above are on one CPU core with other jobs on the machine: MGRIT on one device does
more work than the serial network (its speed-up needs the layers spread over many processors;
the seed's crossover is ≈ 16 cores); mrc's `distributed layers` runs it over processes, not
measured here.

## Reading the results

- **Convergence vs depth.** At fixed T the asymptotic factor stays small at every depth (at most
  {worst_rho:.2f}, for random and trained weights, forward and adjoint, 2, 3 and max levels). With
  a fixed hierarchy of 2 or 3 levels it is flat or falls with N: deeper networks have smaller
  steps h = T/N on every level, so the coarse Euler propagators are more accurate. With *max*
  levels on the random networks it rises from ≈ 0.07 (N = 64, 2 levels) to ≈ 0.10 (N ≥ 256,
  3–4 levels) and then stays flat: over the whole range a slope above the +{SLOPE} criterion,
  which is why this claim reads *partly* — the rise comes with the added levels, not with N at
  a fixed hierarchy, and it stops at ≈ 0.10.
- **The first iterations on trained weights.** With trained weights (larger ‖W‖) the coarse steps
  of the shallow networks (4h and 16h at N = 64: 0.2 and 0.8) are at the edge of explicit
  Euler's stability: the first iteration barely reduces the residual (‖r_1‖/‖r_0‖ ≈ 0.8–0.95 for
  3 levels up to N = 512), and with max levels (4 at N ≥ 512) the first iteration *increases*
  it; only the later iterations converge fast. The asymptotic factor hides this; a one-shot
  step, which runs 2 iterations, does not.
- **One-shot on the level sets.** Two causes of the gap, both measured: (1) on the trained
  network at N = 64 the 2 forward iterations do not converge (the residual table above: ‖r_2‖
  is ≈ 0.8 × ‖r_1‖ with T = 3.2), so the gradients are those of inexact states; with T = 1
  (coarse steps ≈ 3× smaller) ‖r_2‖/‖r_1‖ is ≈ 0.2 and the gap is half as large, at a lower
  serial accuracy. (2) mrc's warm start reuses the previous step's states, which belong to the
  previous *mini-batch's* examples; in the seed's reference code the batch is the whole
  training set (`nbatch = 5000`, deterministic), so the warm start is the same examples'
  states. Here the warm-started residual is ≈ 2× the cold-started one, and one-shot without
  warm start is slightly closer to serial (the ranges overlap).
- **One-shot on Fashion-MNIST** (conv, 16 layers, coarsening 2, T = 1.6: coarse steps 2h and
  4h of 0.2 and 0.4, with small conv weights) reduces its residual ≈ 3× per iteration during
  training, and one-shot is within 0.6 points of serial training on every seed.

## Against the seed

The seed's slides show, for the level-set network, "fast multigrid convergence, independent of
the number of layers" and weak scaling with constant runtime (4 layers per core); and one-shot
training (2 cycles per optimization iteration) on the level sets at N = 1024 and on
hyperspectral images at N = 512 reaching the serial training's accuracy. The seed document gives
no numeric factors or accuracies (its figures are plots), so the comparison is with the claims'
shape: ρ flat in N (here: small at every depth, flat or falling for a fixed number of levels,
rising by ≈ 40 % and then flat when levels are added with N), and one-shot ≈ serial (here: on
Fashion-MNIST yes; on the level sets 2–6 points lower, at N = 64 with mini-batches, where the
seed used N = 1024 and full batches).

## What was varied, and what would change the verdict

- Convergence: depth N = {depths[0]} … {depths[-1]} at fixed T; 2, 3 and max levels; random and trained
  weights; forward and adjoint. Not varied: the coarsening factor ({CF}), T (3.2), FCF relaxation,
  width 8. Growing T with N (fixed h) instead of fixing T would make every coarse step larger and
  could make ρ grow with N.
- One-shot: 2 forward / 1 adjoint iterations as in the seed; warm start on/off; T = 3.2 and 1.
  The level-set verdict would move with a deeper one-shot run (N = 1024, as the seed; the
  convergence table shows trained-network factors ≤ 0.03 there: `--scale full`), with full
  batches (the warm start then reuses the same examples' states), or with more iterations.
- Level sets: 4000 training points, 20 epochs. Fashion-MNIST: 6000 images pooled to 7×7,
  4 epochs; the full scale (28×28, 60,000 images, 64 layers, 10 epochs; level sets at N = 1024;
  convergence to N = 4096) is sized for a GPU and was not run here.
"""
    return Finding(verdict, numbers, body)


def _history(residuals: list[float]) -> tuple[list[float], list[float]]:
    r = [float(x) for x in residuals]
    xs, ys = [], []
    for i, x in enumerate(r):
        if r[0] > 0 and x > 0:
            xs.append(float(i))
            ys.append(math.log10(x / r[0]))
    return xs, ys
