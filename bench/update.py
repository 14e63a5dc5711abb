"""One SGD-momentum update of a ResNet-50-sized parameter set: torch.optim against mrc's kernels.

The parameter set has the 161 tensors of torchvision's resnet50 (25,557,032 float32 values),
listed by hand so torchvision is not needed. In one run this times one optimizer update
(lr 0.1, momentum 0.9, weight decay 5e-4) by

* torch.optim.SGD(foreach=True)         the baseline: one call per op over the tensor list
* torch.optim.SGD(fused=True)           the best a careful user can ask torch.optim for, on
                                        the CPU too where this torch build has it (if not, the
                                        table says so in its row)
* mrc torch path                        sgd_torch over one FlatGroup (whole-buffer ops)
* mrc Triton path                       sgd_triton over the FlatGroup (CUDA only): one launch
* copy                                  dst.copy_(src), the bandwidth ceiling

and reports, for each, the median time of one update with min–max over the samples (CUDA events
on a GPU, perf_counter on the CPU; warm-up calls first, so Triton's autotune is not timed), the
bytes an SGD-momentum update must move (θ read and written, g read, p read and written: 5 × 4
bytes per parameter), the achieved rate, and the fraction of the measured copy bandwidth. The
copy moves a buffer of 10 bytes per parameter (read + write = the same 20 bytes per parameter as
the update), so its bandwidth is measured on the same traffic. Variants run interleaved, round
after round, so drift in the machine's speed hits all alike. Before timing, two updates of every
variant from the same start are checked against the foreach result.

    python bench/update.py [--quick] [--reps N] [--device cpu|cuda]

On a GPU one sample is 10 back-to-back calls between two CUDA events (the host runs ahead, so
Python and launch overhead overlap the previous update as they do in training).

Last line, one JSON object: {"torch_path_vs_foreach": foreach time / mrc torch time,
"triton_vs_foreach": … or null, "triton_bw_fraction": … or null, "device": …, …}.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from mrc.kernels.flat import FlatGroup
from mrc.kernels.sgd import sgd_torch, sgd_triton

from mrc.target import detect

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
BYTES_PER_PARAM = 5 * 4  # θ read + write, g read, p read + write, float32
FUSED_MISSING: list[str] = []  # why torch.optim's fused SGD is not in the table, if it is not


def resnet50_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision.models.resnet50(), in named_parameters() order."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]  # conv1, bn1
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            out = planes * 4
            shapes += [(planes, inplanes, 1, 1), (planes,), (planes,),  # conv1, bn1
                       (planes, planes, 3, 3), (planes,), (planes,),  # conv2, bn2
                       (out, planes, 1, 1), (out,), (out,)]  # conv3, bn3
            if b == 0:
                shapes += [(out, inplanes, 1, 1), (out,), (out,)]  # downsample conv, bn
            inplanes = out
    return [*shapes, (1000, 2048), (1000,)]  # fc


def make_params(shapes: list[tuple[int, ...]], device: torch.device) -> list[torch.nn.Parameter]:
    """Parameters and gradients drawn from fixed seeds (never zeros: they can time faster)."""
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter((0.05 * torch.randn(shape, generator=gen)).to(device))
        p.grad = torch.randn(shape, generator=gen).to(device)
        params.append(p)
    return params


@dataclass
class Variant:
    """One way of doing the update; `theta()` flattens its parameters for the check."""

    name: str
    step: Callable[[], None]
    theta: Callable[[], torch.Tensor]
    bytes_moved: int
    times: list[float] = field(default_factory=list)


def timer(device: torch.device, inner: int) -> Callable[[Callable[[], None]], float]:
    """Seconds per call. On a GPU: CUDA events around `inner` back-to-back calls (the host
    runs ahead and the launch overhead overlaps the previous update, as in training), then
    divided; on the CPU: perf_counter around one call."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_time(fn: Callable[[], None]) -> float:
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / inner

        return cuda_time

    def cpu_time(fn: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return cpu_time


def build(device: torch.device, n: int) -> list[Variant]:
    shapes = resnet50_shapes()
    update_bytes = BYTES_PER_PARAM * n
    variants: list[Variant] = []

    def flat_of(params: list[torch.nn.Parameter]) -> Callable[[], torch.Tensor]:
        return lambda: torch.cat([p.detach().reshape(-1) for p in params])

    # torch.optim on per-tensor parameters, each variant with its own parameters and momentum
    # buffers, so each is checked from the same start
    listed = make_params(shapes, device)
    kw = {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY}
    foreach = torch.optim.SGD(listed, foreach=True, **kw)
    variants.append(Variant("torch.optim foreach", foreach.step, flat_of(listed), update_bytes))
    try:
        probe = torch.nn.Parameter(torch.ones(4, device=device))
        probe.grad = torch.ones_like(probe)
        torch.optim.SGD([probe], fused=True, **kw).step()  # raises where there is no fused SGD
        fused_params = make_params(shapes, device)
        fused = torch.optim.SGD(fused_params, fused=True, **kw)
        variants.append(Variant("torch.optim fused", fused.step, flat_of(fused_params),
                                update_bytes))
    except (RuntimeError, TypeError, ValueError) as exc:
        FUSED_MISSING.append(f"not available on {device.type} in torch {torch.__version__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")

    # mrc: whole-buffer torch ops and (on CUDA) one Triton launch, each over its own
    # FlatGroup so both start from the same point for the check
    def mrc_variant(name: str, fn: Callable[..., None]) -> Variant:
        group = FlatGroup(make_params(shapes, device))
        momentum = group.state("momentum")
        first = [True]

        def step() -> None:
            fn(group.data, group.grad(), momentum, lr=LR, momentum=MOMENTUM,
               weight_decay=WEIGHT_DECAY, first_step=first[0])
            first[0] = False

        def theta() -> torch.Tensor:
            return torch.cat([group.view(group.data, i).reshape(-1) for i in range(len(group))])

        return Variant(name, step, theta, update_bytes)

    variants.append(mrc_variant("mrc torch path", sgd_torch))
    target = detect(device.type)
    if target.device == "cuda" and target.triton:
        variants.append(mrc_variant("mrc triton", sgd_triton))

    # the ceiling: a copy moving the same number of bytes
    src = torch.randn(update_bytes // 2 // 4, device=device)
    dst = torch.empty_like(src)
    variants.append(Variant("copy (ceiling)", lambda: dst.copy_(src), lambda: dst, 2 * src.numel() * 4))
    return variants


def check(variants: list[Variant], device: torch.device) -> dict[str, float]:
    """Two updates of each variant from the same start; max |Δθ| against foreach."""
    errors = {}
    results = {}
    for v in variants:
        if v.name.startswith("copy"):
            continue
        v.step()
        v.step()
        results[v.name] = v.theta().float()
    ref = results["torch.optim foreach"]
    for name, got in results.items():
        errors[name] = float((got - ref).abs().max() / ref.abs().max())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per variant")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but no CUDA device is available")
    gpu = device.type == "cuda"
    reps = args.reps or ((10 if args.quick else 30) if gpu else (3 if args.quick else 7))
    warm = 10 if gpu else 1
    inner = 10 if gpu else 1  # calls per timed sample on a GPU

    n = sum(math.prod(s) for s in resnet50_shapes())
    variants = build(device, n)
    errors = check(variants, device)
    clock = timer(device, inner)
    for _ in range(warm):
        for v in variants:
            v.step()
    for _ in range(reps):  # interleaved rounds
        for v in variants:
            v.times.append(clock(v.step))

    med = {v.name: statistics.median(v.times) for v in variants}
    copy_bw = next(v.bytes_moved / med[v.name] for v in variants if v.name.startswith("copy"))
    base = med["torch.optim foreach"]
    name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"SGD-momentum update, {len(resnet50_shapes())} tensors, {n:,} float32 params, "
          f"{BYTES_PER_PARAM * n / 1e6:.0f} MB moved per update; {name}; "
          f"median of {reps} samples of {inner} call(s)")
    fused_t = med.get("torch.optim fused")
    print(f"{'variant':22s} {'time ms':>10s} {'[min–max]':>17s} {'GB/s':>8s} {'of copy':>8s} "
          f"{'vs foreach':>11s} {'vs fused':>9s} {'max rel err':>12s}")
    for v in variants:
        t = med[v.name]
        bw = v.bytes_moved / t
        err = errors.get(v.name)
        span = f"[{min(v.times) * 1e3:.2f}–{max(v.times) * 1e3:.2f}]"
        vs_fused = f"{fused_t / t:9.2f}" if fused_t else f"{'n/a':>9s}"
        print(f"{v.name:22s} {t * 1e3:10.3f} {span:>17s} {bw / 1e9:8.1f} {bw / copy_bw:8.2f} "
              f"{base / t:11.2f} {vs_fused} {'' if err is None else f'{err:12.1e}'}")
    for why in FUSED_MISSING:
        print(f"{'torch.optim fused':22s} {why}")

    def ratio(key: str) -> float | None:
        return round(base / med[key], 3) if key in med else None

    def fraction(key: str) -> float | None:
        return round(BYTES_PER_PARAM * n / med[key] / copy_bw, 3) if key in med else None

    print(json.dumps({
        "torch_path_vs_foreach": ratio("mrc torch path"),
        "triton_vs_foreach": ratio("mrc triton"),
        "triton_bw_fraction": fraction("mrc triton"),
        "device": name,
        "fused_vs_foreach": ratio("torch.optim fused"),
        "torch_path_vs_fused": (round(med["torch.optim fused"] / med["mrc torch path"], 3)
                                if "torch.optim fused" in med else None),
        "fused_missing": FUSED_MISSING[0] if FUSED_MISSING else None,
        "torch_path_bw_fraction": fraction("mrc torch path"),
        "copy_GBps": round(copy_bw / 1e9, 1),
        "n_params": n,
    }))


if __name__ == "__main__":
    main()
