"""Brains that step together: batched over stacked parameters vs one after another.

In one run, per training step (forward, backward, SGD-momentum update) of a 64-256-256-10 MLP
with batch 64 per brain, time (a) 4 brains batched (mrc.techniques.brains.stack: BrainStack and
StackedSGD, what `mrc train` runs for brains that step together), (b) the same 4 brains one after
another, each its own model and torch.optim.SGD step, (c) a careful user's batched brains:
`torch.func.stack_module_state` + `torch.func.vmap(functional_call)` for the forward and a
hand-written foreach SGD-momentum over the stacked tensors with a per-brain step size, and
(d) a single brain. The variants are timed interleaved, in rounds of `--chunk` steps each; the
table shows the median step time over the rounds with min–max. The script also checks that (a)
and (c) end with the same parameters as (b) after 5 steps.

    python bench/brains.py [--device cpu|cuda] [--steps 300]

Last line: {"batched_over_sequential": a/b, "batched_over_single": a/d,
"batched_over_vmap": a/c, "vmap_over_sequential": c/b, "same_params": …, "device": …}
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import Spread, interleaved, sync
from torch.func import functional_call, stack_module_state, vmap

from mrc.models import build_model, trace_model
from mrc.techniques.brains.stack import BrainStack, StackedSGD

BRAINS, BATCH, LRS = 4, 64, (0.01, 0.02, 0.04, 0.08)


def timed(fn: Callable[[], None], steps: int, device: torch.device) -> Callable[[], float]:
    """A sampler: seconds per step over `steps` back-to-back steps."""
    def sample() -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        return (time.perf_counter() - start) / steps
    return sample


def vmap_brains(models: list[torch.nn.Module], lrs: torch.Tensor,
                momentum: float) -> tuple[Callable[[torch.Tensor, torch.Tensor], None],
                                          dict[str, torch.Tensor]]:
    """A careful user's batched brains: stacked parameters, vmap over functional_call, and a
    foreach SGD-momentum (first momentum = the gradient, as torch.optim) with step lrs[i]."""
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    names = list(params)
    tensors = [params[n] for n in names]
    scale = [lrs.view(-1, *([1] * (t.ndim - 1))) for t in tensors]
    bufs: list[torch.Tensor] = []

    def forward(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    batched_forward = vmap(forward)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        out = batched_forward(params, buffers, x)
        loss = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
        grads = torch.autograd.grad(loss.view(len(models), -1).mean(1).sum(), tensors)
        with torch.no_grad():
            if not bufs:
                bufs.extend(g.clone() for g in grads)
            else:
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads)
            torch._foreach_sub_(tensors, torch._foreach_mul(bufs, scale))

    return step, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--steps", type=int, default=300, help="timed steps of each variant")
    ap.add_argument("--chunk", type=int, default=20, help="steps per timed sample")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = build_model("mlp", (64,), 10, {"hidden": [256, 256]}).to(device)
    gm = trace_model(base, torch.randn(2, 64, device=device))
    x = torch.randn(BRAINS, BATCH, 64, device=device)
    y = torch.randint(0, 10, (BRAINS, BATCH), device=device)

    stack = BrainStack(copy.deepcopy(gm), [base.state_dict()] * BRAINS).to(device)
    sgd = StackedSGD(stack.stacked_parameters(), BRAINS, momentum=0.9)
    sgd.bufs = [b.to(device) for b in sgd.bufs]
    sel = torch.arange(BRAINS, device=device)
    lrs = torch.tensor(LRS, device=device)

    def batched() -> None:
        sgd.zero_grad()
        out = stack(x)
        loss = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(BRAINS, -1).mean(1)
        loss.sum().backward()
        sgd.step(sel, lrs, True)

    models = [copy.deepcopy(gm) for _ in range(BRAINS)]
    opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for m, lr in zip(models, LRS, strict=True)]

    def sequential() -> None:
        for i, (m, opt) in enumerate(zip(models, opts, strict=True)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x[i]), y[i]).backward()
            opt.step()

    single_model = copy.deepcopy(gm)
    single_opt = torch.optim.SGD(single_model.parameters(), lr=0.01, momentum=0.9)

    def single() -> None:
        single_opt.zero_grad(set_to_none=True)
        F.cross_entropy(single_model(x[0]), y[0]).backward()
        single_opt.step()

    vmap_step, _ = vmap_brains([copy.deepcopy(base) for _ in range(BRAINS)], lrs, 0.9)

    def vmapped() -> None:
        vmap_step(x, y)

    # the same 5 steps on fresh copies: batched, vmapped and sequential must agree
    check_vmap, check_vmap_params = vmap_brains([copy.deepcopy(base) for _ in range(BRAINS)], lrs, 0.9)
    check_stack = BrainStack(copy.deepcopy(gm), [base.state_dict()] * BRAINS).to(device)
    check_sgd = StackedSGD(check_stack.stacked_parameters(), BRAINS, momentum=0.9)
    check_sgd.bufs = [b.to(device) for b in check_sgd.bufs]
    check_models = [copy.deepcopy(gm) for _ in range(BRAINS)]
    check_opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for m, lr in zip(check_models, LRS, strict=True)]
    for _ in range(5):
        check_sgd.zero_grad()
        out = check_stack(x)
        F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(BRAINS, -1).mean(1).sum().backward()
        check_sgd.step(sel, lrs, True)
        check_vmap(x, y)
        for i, (m, opt) in enumerate(zip(check_models, check_opts, strict=True)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x[i]), y[i]).backward()
            opt.step()
    same = all(torch.allclose(check_stack.brain_state_dict(i)[k], v, rtol=1e-5, atol=1e-6)
               for i, m in enumerate(check_models) for k, v in m.state_dict().items())
    same_vmap = all(torch.allclose(check_vmap_params[k][i].detach(), v, rtol=1e-5, atol=1e-6)
                    for i, m in enumerate(check_models) for k, v in m.named_parameters())

    for fn in (batched, sequential, vmapped, single):  # warm-up
        for _ in range(20):
            fn()
    rounds = max(1, args.steps // args.chunk)
    samples = interleaved({name: timed(fn, args.chunk, device) for name, fn in (
        ("batched", batched), ("sequential", sequential), ("vmap", vmapped),
        ("single", single))}, rounds)
    spread = {name: Spread.of(ts) for name, ts in samples.items()}
    t_b, t_s, t_v, t_1 = (spread[n].median for n in ("batched", "sequential", "vmap", "single"))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"4 brains of mlp 64-256-256-10, batch {BATCH} each, SGD-momentum; {name}; "
          f"{rounds} interleaved rounds of {args.chunk} steps: median [min–max]")
    print(f"{'':<34}{'ms/step':>22}{'× single':>10}")
    for label, key in (("(a) mrc batched, 4 brains", "batched"),
                       ("(b) sequential, 4 brains", "sequential"),
                       ("(c) torch.func vmap, 4 brains", "vmap"), ("(d) single brain", "single")):
        print(f"{label:<34}{spread[key].fmt(1e3):>22}{spread[key].median / t_1:>10.2f}")
    print(f"batched / sequential: {t_b / t_s:.3f}   batched / vmap: {t_b / t_v:.3f}   "
          f"vmap / sequential: {t_v / t_s:.3f}")
    print(f"same parameters after 5 steps as sequential: batched {same}, vmap {same_vmap}")
    print(json.dumps({"batched_over_sequential": round(t_b / t_s, 3),
                      "batched_over_single": round(t_b / t_1, 3),
                      "batched_over_vmap": round(t_b / t_v, 3),
                      "vmap_over_sequential": round(t_v / t_s, 3),
                      "ms_per_step": {k: v.as_json(4) for k, v in
                                      ((k, Spread(v.median * 1e3, v.lo * 1e3, v.hi * 1e3, v.n))
                                       for k, v in spread.items())},
                      "same_params": same, "same_params_vmap": same_vmap, "device": name}))

if __name__ == "__main__":
    main()
