"""Brains that step together: batched over stacked parameters vs one after another.

In one run, per training step (forward, backward, SGD-momentum update) of a 64-256-256-10 MLP
with batch 64 per brain, time (a) 4 brains batched (mrc.runtime.batched: BrainStack and
StackedSGD, what `mrc train` runs for brains that step together), (b) the same 4 brains one after
another, each its own model and torch.optim.SGD step, and (c) a single brain. Median of many
steps after warm-up. The script also checks that (a) and (b) end with the same parameters.

    python bench/brains.py [--device cpu|cuda] [--steps 300]

Last line: {"batched_over_sequential": a/b, "batched_over_single": a/c, "device": …}
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F

from mrc.models import build_model, trace_model
from mrc.runtime.batched import BrainStack, StackedSGD

BRAINS, BATCH, LRS = 4, 64, (0.01, 0.02, 0.04, 0.08)


def timed(fn, steps: int, device: torch.device) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--steps", type=int, default=300)
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

    # the same 5 steps on fresh copies: batched and sequential must agree
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
        for i, (m, opt) in enumerate(zip(check_models, check_opts, strict=True)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x[i]), y[i]).backward()
            opt.step()
    same = all(torch.allclose(check_stack.brain_state_dict(i)[k], v, rtol=1e-5, atol=1e-6)
               for i, m in enumerate(check_models) for k, v in m.state_dict().items())

    t_b = timed(batched, args.steps, device)
    t_s = timed(sequential, args.steps, device)
    t_1 = timed(single, args.steps, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"4 brains of mlp 64-256-256-10, batch {BATCH} each, SGD-momentum; {name}")
    print(f"{'':<28}{'ms/step':>10}{'× single':>10}")
    for label, t in (("(a) batched, 4 brains", t_b), ("(b) sequential, 4 brains", t_s), ("(c) single brain", t_1)):
        print(f"{label:<28}{t * 1e3:>10.3f}{t / t_1:>10.2f}")
    print(f"batched / sequential: {t_b / t_s:.3f}   same parameters after 5 steps: {same}")
    print(json.dumps({"batched_over_sequential": round(t_b / t_s, 3), "batched_over_single": round(t_b / t_1, 3),
                      "same_params": same, "device": name}))


if __name__ == "__main__":
    main()
