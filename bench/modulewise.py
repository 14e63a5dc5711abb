"""Module-wise training (parallel TRGL / VanGL) against end-to-end: memory, time, accuracy.

In one run, against end-to-end baselines measured in the same run:

1. Memory. A CIFAR-style ResNet (`resnet(depth=20, width=16)`, `--depth` for deeper) on
   synthetic 3×32×32 images at batch 64: the peak activation memory of a training step of
   parallel TRGL (`aux = conv(width=32)`, `transport = fixed(tau=0.1)`) at K = 2, 4, 8 with
   `equal` and `balanced` splits, as a fraction of end-to-end (the same spec without `modules`).
   The figure is the run summary's `activation_memory` (mrc.runtime.memory: on the CPU the bytes
   of the tensors autograd saves for backward, once per storage, parameters, batch and buffers
   left out). It is a count of bytes, not a timing: it does not vary between repeats.
   Cross-check: for end-to-end and K = 4 (balanced and equal) the script counts the saved bytes
   itself, with its own `torch.autograd.graph.saved_tensors_hooks` pair around one `plan.step`
   of a freshly compiled and lowered plan, and splits that count into each module's peak (in the
   parallel regime every module's backward frees its graph before the next module runs, so the
   live total returns to zero between modules); the table puts these beside the graph's
   per-module estimates (`mrc graph`).
2. Time. Whole runs of the memory spec, end-to-end and TRGL K = 4 balanced, interleaved and
   repeated; each run is timed over its whole epochs after the first (warm-up, which also holds
   the one measured step) from mrc's own log stamps (logging once per epoch); a run's figure is
   the median of its epochs, the table the median over repeats [min–max], and the ratio is
   paired per repeat. Every run uses one torch intra-op thread unless `--threads` says otherwise
   (0: mrc's own choice, two threads for this ResNet on a 2-core machine): on a shared 2-core
   machine whose cores other jobs hold, two spinning intra-op threads made the end-to-end step
   about 4× slower than one thread did, which swamps the ratio.
3. Accuracy. The digits as 1×8×8 images, `resnet(depth=14, width=8)`, batch 64, SGD lr 0.1
   momentum 0.9 weight decay 5e-4, cosine schedule (warm-up 20), the same epoch budget for all
   (10): end-to-end, VanGL K = 4 (`transport = none`) and TRGL K = 4 (`transport =
   fixed(tau=0.5)`, the value of specs/modules_trgl.mrs; not tuned here), balanced split,
   `aux = conv(width=16)`, over `--seeds` (each seed: its own initialisation, validation split
   and batch order, shared by the three contenders). The figure is the final model's validation
   accuracy (the last module's classifier, i.e. the whole network) — the median over seeds.

The issue's goal: at K = 4 with a balanced split, ≤ 0.35 of end-to-end activation memory and
validation accuracy within 1 point of end-to-end.

    python bench/modulewise.py            # a few minutes on a 2-core CPU
    python bench/modulewise.py --quick    # under a minute: K = 4 only, fewer repeats, epochs, seeds

Last line: {"memory_k4_balanced": …, "memory_k4_equal": …, "time_k4_balanced": …,
"acc_e2e": …, "acc_vangl_k4": …, "acc_trgl_k4": …, "device": …, …} (memory and time as
fractions of end-to-end; accuracies are medians over the seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import Spread, interleaved, period_times, ratios, step_clock
from torch import nn

import mrc.api as api

MEMORY_SPEC = """
model resnet(depth={depth}, width=16)
data synthetic(shape=[3, 32, 32], classes=10, samples=512, batch=64)
optimizer sgd(lr=0.05, momentum=0.9)
train(steps=4, seed=0, log_every={log_every}, threads={threads})
{modules}
"""
TRGL_MEMORY = "modules {{ split = {split}({k}); aux = conv(width=32); transport = fixed(tau=0.1); regime = parallel }}"

DIGITS_SPEC = """
model resnet(depth=14, width=8)
data digits(shape=image, batch=64, val=0.2)
optimizer sgd(lr=0.1, momentum=0.9, weight_decay=5e-4)
schedule cosine(warmup=20)
train(epochs={epochs}, seed={seed}, log_every=1000000, threads={threads})
{modules}
"""
DIGITS_MODULES = "modules {{ split = balanced(4); aux = conv(width=16); transport = {transport}; regime = parallel }}"
TAU_ACC = 0.5
GOAL_MEMORY, GOAL_ACC = 0.35, 0.01
MiB = 2**20


# ---- an independent saved-tensor counter ------------------------------------------------


class _Held:
    """What the pack hook gives autograd; releasing it (autograd frees the saved variable) uncounts."""

    __slots__ = ("counter", "key", "tensor")

    def __init__(self, tensor: torch.Tensor, counter: SavedCounter | None, key: int) -> None:
        # hold non-leaves detached (autograd re-attaches them on unpack): holding the attached
        # output of a node that saves its own output would make a reference cycle
        self.tensor = tensor.detach() if tensor.grad_fn is not None else tensor
        self.counter, self.key = counter, key

    def __del__(self) -> None:
        if self.counter is not None:
            self.counter.release(self.key)


class SavedCounter:
    """Bytes of the storages autograd holds for backward, each storage once, while held.

    Not counted: parameters (and leaves that require grad) and views of them, and the storages of
    `exclude` (the batch, buffers). `events` is the live total after every change, so a step's
    timeline can be cut into the modules' stretches (where it returns to zero).
    """

    def __init__(self, exclude: list[torch.Tensor]) -> None:
        self.skip = {t.untyped_storage().data_ptr() for t in exclude}
        self.held: dict[int, int] = {}
        self.nbytes: dict[int, int] = {}
        self.live = 0
        self.events: list[int] = []

    def pack(self, t: torch.Tensor) -> _Held:
        base = t._base if t._base is not None else t
        if isinstance(base, nn.Parameter) or (base.is_leaf and base.requires_grad):
            return _Held(t, None, 0)
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.skip:
            return _Held(t, None, 0)
        if key in self.held:
            self.held[key] += 1
        else:
            self.held[key] = 1
            self.nbytes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.events.append(self.live)
        return _Held(t, self, key)

    @staticmethod
    def unpack(held: _Held) -> torch.Tensor:
        return held.tensor

    def release(self, key: int) -> None:
        self.held[key] -= 1
        if self.held[key] == 0:
            del self.held[key]
            self.live -= self.nbytes.pop(key)
            self.events.append(self.live)

    @property
    def peak(self) -> int:
        return max(self.events, default=0)

    def stretches(self) -> list[int]:
        """The peak of each stretch of the timeline between returns to zero."""
        out, current = [], 0
        for live in self.events:
            current = max(current, live)
            if live == 0:
                out.append(current)
                current = 0
        if current:
            out.append(current)
        return out


def own_count(spec: Path) -> tuple[int, list[int], int]:
    """Compile and lower `spec`, run step 0 of a plan under a SavedCounter: (peak bytes, peak
    of each stretch, bytes still held after the step)."""
    compiled = api.compile_spec(spec, training=True)
    plan = api.lower(compiled, 2)
    data = compiled.bound.data
    dtype = next(compiled.bound.model.parameters()).dtype
    tx, ty = data.train_x.to(dtype), data.train_y
    plan.attach(tx, ty, data.val_x.to(dtype), data.val_y)
    plan.module.train()
    idx = data.batch_indices(0)[0]
    x, y = tx[idx], ty[idx]
    buffers = [b for m in (compiled.bound.model, plan.module, *plan.checkpointed_models()) for b in m.buffers()]
    counter = SavedCounter([x, y, *buffers])
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        plan.step(0, x, y)
    return counter.peak, counter.stretches(), counter.live


# ---- the three measurements -------------------------------------------------------------


def memory_runs(tmp: Path, depth: int, ks: list[int], threads: int) -> dict[str, dict[str, Any]]:
    """Each contender's activation memory from its run summary, and the graph's estimates."""
    contenders = {"e2e": ""} | {
        f"{split}{k}": TRGL_MEMORY.format(split=split, k=k) for k in ks for split in ("equal", "balanced")
    }
    # VanGL at K = 4 balanced: what the transport term itself costs (it saves every r_m for backward)
    contenders["balanced4_vangl"] = TRGL_MEMORY.format(split="balanced", k=4).replace("fixed(tau=0.1)", "none")
    out = {}
    for name, modules in contenders.items():
        spec = tmp / f"mem_{name}.mrs"
        spec.write_text(MEMORY_SPEC.format(depth=depth, modules=modules, log_every=1000000, threads=threads))
        s = api.train(spec, save=False, steps=1).summary
        mods = s.get("modules", {})
        out[name] = {
            "spec": spec,
            "bytes": s["activation_memory"]["bytes"],
            "kind": s["activation_memory"]["kind"],
            "estimates": [m["activation_bytes_estimate"] for m in mods.values()],
        }
    return out


def timing_runs(tmp: Path, depth: int, epochs: int, repeats: int, threads: int) -> tuple[dict[str, list[float]], int]:
    """Seconds per step (median of a run's whole epochs after the first) of each repeat."""
    probe = api.compile_spec(
        _write(tmp / "probe.mrs", MEMORY_SPEC.format(depth=depth, modules="", log_every=1, threads=threads))
    )
    spe = probe.bound.data.steps_per_epoch()
    total = spe * epochs
    specs = {
        name: _write(
            tmp / f"time_{name}.mrs", MEMORY_SPEC.format(depth=depth, modules=modules, log_every=spe, threads=threads)
        )
        for name, modules in (("e2e", ""), ("trgl", TRGL_MEMORY.format(split="balanced", k=4)))
    }

    def timed(spec: Path) -> float:
        result = api.train(spec, save=False, steps=total)
        return statistics.median(period_times(step_clock(result), spe, total, spe)) / spe

    runs = interleaved({name: (lambda s=spec: timed(s)) for name, spec in specs.items()}, repeats)
    return runs, spe


def accuracy_runs(tmp: Path, epochs: int, seeds: list[int], threads: int,
                  tau: float = TAU_ACC) -> dict[str, list[dict[str, Any]]]:
    contenders = {
        "e2e": "",
        "vangl": DIGITS_MODULES.format(transport="none"),
        "trgl": DIGITS_MODULES.format(transport=f"fixed(tau={tau})"),
    }
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    for seed in seeds:
        for name, modules in contenders.items():
            spec = _write(
                tmp / f"acc_{name}_{seed}.mrs",
                DIGITS_SPEC.format(epochs=epochs, seed=seed, modules=modules, threads=threads),
            )
            s = api.train(spec, save=False).summary
            out[name].append(
                {"val_acc": s["val_acc"], "modules": {m: v["val_acc"] for m, v in s.get("modules", {}).items()}}
            )
    return out


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _mib(n: float) -> str:
    return f"{n / MiB:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tau", type=float, default=TAU_ACC, help="τ of the TRGL digits runs (0.5)")
    ap.add_argument("--quick", action="store_true", help="K = 4 only, 3 repeats, shorter runs, one seed (< 1 min)")
    ap.add_argument("--parts", default="memory,time,accuracy", help="which measurements to run (all three)")
    ap.add_argument("--depth", type=int, default=20, help="ResNet depth of the memory and time spec (6n+2)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved timed runs of each contender (5; 3 quick)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per timed run, the first is warm-up (5; 2 quick)")
    ap.add_argument("--acc-epochs", type=int, default=None, help="epochs of each digits run (10; 5 quick)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds of the digits runs (0,1,2; 0 quick)")
    ap.add_argument("--ks", default=None, help="comma-separated module counts of the memory table (2,4,8; 4 quick)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads of every run (1; 0: mrc's choice, 2 here for the ResNet-20)",
    )
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if not parts or parts - {"memory", "time", "accuracy"}:
        ap.error("--parts: a comma-separated subset of memory,time,accuracy")
    if args.threads:
        torch.set_num_threads(args.threads)  # the cross-check's plan.step; the runs set their own
    repeats = args.repeats or (3 if args.quick else 5)
    epochs = args.epochs or (2 if args.quick else 5)
    acc_epochs = args.acc_epochs or (5 if args.quick else 10)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    if epochs < 2:
        ap.error("--epochs must be ≥ 2 (the first epoch is warm-up)")
    ks = sorted({4, *(int(k) for k in (args.ks or ("4" if args.quick else "2,4,8")).split(","))})
    threads = args.threads or "mrc's choice"
    start = time.perf_counter()
    out: dict[str, Any] = {
        "memory_k4_balanced": None,
        "memory_k4_equal": None,
        "time_k4_balanced": None,
        "acc_e2e": None,
        "acc_vangl_k4": None,
        "acc_trgl_k4": None,
        "device": "cpu",
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "memory" in parts:
            out.update(report_memory(tmp, args.depth, ks, args.threads))
        if "time" in parts:
            out.update(report_time(tmp, args.depth, epochs, repeats, args.threads, threads))
        if "accuracy" in parts:
            out.update(report_accuracy(tmp, acc_epochs, seeds, args.threads, args.tau))
    goals = []
    if out["memory_k4_balanced"] is not None:
        out["goal_memory_met"] = out["memory_k4_balanced"] <= GOAL_MEMORY
        goals.append(
            f"memory ≤ {GOAL_MEMORY} of e2e: {out['memory_k4_balanced']:.3f} "
            f"({'met' if out['goal_memory_met'] else 'NOT met'})"
        )
    if out["acc_trgl_k4"] is not None:
        gap = out["acc_trgl_k4"] - out["acc_e2e"]
        out["goal_acc_met"] = gap >= -GOAL_ACC
        goals.append(
            f"TRGL accuracy within {GOAL_ACC * 100:.0f} point of e2e: {gap * 100:+.2f} points "
            f"({'met' if out['goal_acc_met'] else 'NOT met'})"
        )
    wall = time.perf_counter() - start
    print(f"\ngoal at K=4 balanced: {'; '.join(goals) or '-'}   [{wall:.0f} s]")
    out.update({"depth": args.depth, "threads": threads, "quick": args.quick, "wall_s": round(wall, 1)})
    print(json.dumps(out))


def report_memory(tmp: Path, depth: int, ks: list[int], threads: int) -> dict[str, Any]:
    mem = memory_runs(tmp, depth, ks, threads)
    own = {name: own_count(mem[name]["spec"]) for name in ("e2e", "balanced4", "equal4")}
    e2e = mem["e2e"]["bytes"]
    frac = {name: m["bytes"] / e2e for name, m in mem.items()}
    print(
        f"1. activation memory of a training step: resnet(depth={depth}, width=16), synthetic 3×32×32, "
        f"batch 64; parallel TRGL aux conv(width=32), tau 0.1 (_vangl: transport none); "
        f"mrc's run summary ({mem['e2e']['kind']})"
    )
    print(f"{'':<16}{'MiB':>8}{'÷ e2e':>8}   per-module estimates of `mrc graph` (MiB)")
    for name, m in mem.items():
        est = " ".join(_mib(b) for b in m["estimates"]) or "-"
        print(f"{name:<16}{_mib(m['bytes']):>8}{frac[name]:>8.3f}   {est}")
    print("cross-check: own saved_tensors_hooks counter around one plan.step (and each module's peak, MiB)")
    for name, (peak, stretches, left) in own.items():
        agree = "same bytes" if peak == mem[name]["bytes"] else f"differs from mrc's {mem[name]['bytes']}"
        print(
            f"{name:<16}{_mib(peak):>8}{peak / own['e2e'][0]:>8.3f}   "
            f"{' '.join(_mib(b) for b in stretches)}   ({agree}; {left} bytes held after the step)"
        )
    return {
        "memory_k4_balanced": round(frac["balanced4"], 4),
        "memory_k4_equal": round(frac["equal4"], 4),
        "memory": {name: round(f, 4) for name, f in frac.items()},
        "memory_mib": {name: round(m["bytes"] / MiB, 3) for name, m in mem.items()},
        "memory_own_count": {name: round(o[0] / own["e2e"][0], 4) for name, o in own.items()},
        "memory_own_module_peaks_mib": {name: [round(b / MiB, 3) for b in o[1]] for name, o in own.items()},
        "own_count_agrees": all(o[0] == mem[name]["bytes"] for name, o in own.items()),
    }


def report_time(tmp: Path, depth: int, epochs: int, repeats: int, threads: int, label: Any) -> dict[str, Any]:
    times, spe = timing_runs(tmp, depth, epochs, repeats, threads)
    ratio = ratios(times["trgl"], times["e2e"])
    print(
        f"\n2. time per step, resnet(depth={depth}, width=16), {repeats} interleaved repeats of {epochs} epochs "
        f"× {spe} steps (epochs 2–{epochs} timed), threads={label}: median [min–max]"
    )
    print(f"{'end-to-end':<24}{Spread.of(times['e2e']).fmt(1e3, 1):>24} ms/step")
    print(f"{'TRGL K=4 balanced':<24}{Spread.of(times['trgl']).fmt(1e3, 1):>24} ms/step")
    print(f"{'TRGL / end-to-end':<24}{ratio.fmt():>24}")
    return {
        "time_k4_balanced": round(ratio.median, 4),
        "time_spread": ratio.as_json(4),
        "s_per_step": {name: Spread.of(ts).as_json(5) for name, ts in times.items()},
        "repeats": repeats,
        "epochs": epochs,
    }


def report_accuracy(tmp: Path, epochs: int, seeds: list[int], threads: int,
                    tau: float = TAU_ACC) -> dict[str, Any]:
    acc = accuracy_runs(tmp, epochs, seeds, threads, tau)
    med = {name: statistics.median(r["val_acc"] for r in rs) for name, rs in acc.items()}
    print(
        f"\n3. validation accuracy on digits (1×8×8, 359 val), resnet(depth=14, width=8), {epochs} epochs, "
        f"seeds {','.join(map(str, seeds))}; K=4 balanced, aux conv(width=16); TRGL tau={tau:g}"
    )
    labels = {"e2e": "end-to-end", "vangl": "VanGL K=4", "trgl": f"TRGL K=4 tau={tau:g}"}
    for name, rs in acc.items():
        per_seed = " ".join(f"{r['val_acc']:.4f}" for r in rs)
        mods = " | ".join(" ".join(f"{v:.3f}" for v in r["modules"].values()) for r in rs if r["modules"])
        print(
            f"{labels[name]:<22} median {med[name]:.4f}   per seed {per_seed}"
            + (f"   per module {mods}" if mods else "")
        )
    return {
        "acc_e2e": round(med["e2e"], 4),
        "acc_vangl_k4": round(med["vangl"], 4),
        "acc_trgl_k4": round(med["trgl"], 4),
        "acc_per_seed": {name: [round(r["val_acc"], 4) for r in rs] for name, rs in acc.items()},
        "acc_module_val_acc": {
            name: [[round(v, 4) for v in r["modules"].values()] for r in rs]
            for name, rs in acc.items()
            if name != "e2e"
        },
        "seeds": seeds,
        "tau_acc": tau,
        "acc_epochs": epochs,
    }


if __name__ == "__main__":
    main()
