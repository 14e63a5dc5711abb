"""Multirate training against references written straight from the seed's equations.

seeds/multirate-training.md, base algorithm SGD-momentum μ, slow step h (= k·h_F), fast h/k:

  no drift:     p_S := μ p_S + ∇_S L;  θ_S := θ_S − h p_S;
                for i = 1..k:  p_F := μ p_F + ∇_F L;  θ_F := θ_F − (h/k) p_F
  linear drift: p_S := μ p_S + ∇_S L;
                for i = 1..k:  p_F := μ p_F + ∇_F L;  θ_F := θ_F − (h/k) p_F;  θ_S := θ_S − (h/k) p_S

mrc's default gradient point ("shared") takes the first ∇_F together with ∇_S, before θ_S moves;
`multirate(first_fast_gradient = after_slow)` is the literal no-drift loop. The references below
are plain PyTorch loops over the same model, data order and seed, in float64.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mrc.api import compile_spec, train
from mrc.techniques.random_subsets.integrator import _seed, draw_masks

BASE = """
model mlp(hidden=[{hidden}], activation=tanh)
data {data}
optimizer sgd(lr={lr}, momentum={mu}, weight_decay={wd})
{extra}
train(steps={steps}, seed={seed}, dtype=float64, log_every=1000, checkpoint_every=0)
"""


def spec(tmp_path: Path, extra: str, *, hidden: str = "16, 12", lr: float = 0.05,
         mu: float = 0.9, wd: float = 0.0, steps: int = 24, seed: int = 1,
         data: str = "spirals(samples=400, batch=16)", name: str = "m.mrs") -> Path:
    path = tmp_path / name
    path.write_text(BASE.format(hidden=hidden, lr=lr, mu=mu, wd=wd, extra=extra, steps=steps,
                                seed=seed, data=data))
    return path


def batches(data, steps: int):
    t, epoch = 0, 0
    while True:
        for idx in data.batch_indices(epoch):
            if t == steps:
                return
            yield data.train_x[idx].double(), data.train_y[idx]
            t += 1
        epoch += 1


def grads(model, x, y, names):
    params = dict(model.named_parameters())
    loss = F.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, [params[n] for n in names])
    return dict(zip(names, g, strict=True))


def reference(path: Path, groups: dict[str, tuple[list[str], int, str]], *, lr: float, mu: float,
              wd: float, steps: int, literal: bool = False) -> dict[str, torch.Tensor]:
    """The seed's multirate SGD-momentum for partitions {name: (params, k, drift)}; fast step h_F =
    lr, a partition with rate k moves with h = k·lr on steps 0, k, 2k, … (drift: by h/k·p each
    step of its interval)."""
    compiled = compile_spec(path)
    model, data = compiled.bound.model, compiled.bound.data
    params = dict(model.named_parameters())
    mom = {n: torch.zeros_like(p) for n, p in params.items()}
    started: set[str] = set()
    every_name = [n for ns, _, _ in groups.values() for n in ns]
    for t, (x, y) in enumerate(batches(data, steps)):
        moving = {g: (ns, k, d) for g, (ns, k, d) in groups.items() if t % k == 0}
        slow = [g for g, (_, k, d) in moving.items() if k > 1 and d == "none"]
        phases = [slow, [g for g in moving if g not in slow]] if literal and slow else [list(moving)]
        for members in phases:
            if not members:
                continue
            g_all = grads(model, x, y, every_name)
            with torch.no_grad():
                for gname in members:
                    names, k, drift = groups[gname]
                    for n in names:
                        d = g_all[n] + wd * params[n]
                        # torch.optim.SGD: the first momentum is the gradient itself
                        mom[n] = d.clone() if n not in started else mu * mom[n] + d
                        started.add(n)
                        if drift == "none" or k == 1:
                            params[n] -= (k * lr) * mom[n]
        with torch.no_grad():  # linear drift: θ_S -= (h/k) p_S on every step of the interval
            for names, k, drift in groups.values():
                if drift == "linear" and k > 1:
                    for n in names:
                        params[n] -= lr * mom[n]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], tol: float) -> None:
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=tol, msg=key)


HEAD = ["head.weight", "head.bias"]
FIRST = ["layers.0.weight", "layers.0.bias"]
SECOND = ["layers.1.weight", "layers.1.bias"]


@pytest.mark.parametrize("drift", ["none", "linear"])
def test_k1_is_plain_sgd_momentum_exactly(tmp_path: Path, drift: str) -> None:
    plain = train(spec(tmp_path, "", name="plain.mrs", wd=1e-3), save=False).model.state_dict()
    parts = (f'partition head = module("head")\n'
             f"partition body = rest {{ every = 1; drift = {drift} }}")
    multi = train(spec(tmp_path, parts, wd=1e-3), save=False).model.state_dict()
    for key in plain:
        assert torch.equal(plain[key], multi[key]), key


@pytest.mark.parametrize(("k", "drift", "literal", "wd"), [
    (3, "none", False, 0.0), (3, "linear", False, 0.0), (4, "none", True, 0.0),
    (2, "linear", True, 1e-3), (5, "none", False, 1e-3),
])
def test_two_rates_match_the_seed(tmp_path: Path, k: int, drift: str, literal: bool,
                                  wd: float) -> None:
    extra = (f'partition head = module("head")\n'
             f"partition body = rest {{ every = {k}; drift = {drift} }}\n"
             + ("multirate(first_fast_gradient=after_slow)\n" if literal else ""))
    path = spec(tmp_path, extra, wd=wd, steps=5 * k + 2)
    got = train(path, save=False).model.state_dict()
    want = reference(path, {"head": (HEAD, 1, "none"), "body": (FIRST + SECOND, k, drift)},
                     lr=0.05, mu=0.9, wd=wd, steps=5 * k + 2, literal=literal)
    assert_same(got, want, 1e-12)  # float64: measured differences ≈ 4e-16 (summation order)
    # and not trivially: the slow partition really moved less often than plain training would
    plain = train(spec(tmp_path, "", name="plain.mrs", wd=wd, steps=5 * k + 2),
                  save=False).model.state_dict()
    assert (got["layers.0.weight"] - plain["layers.0.weight"]).abs().max() > 1e-4


def test_three_rates_with_explicit_step_size(tmp_path: Path) -> None:
    """A model and partition layout not among the specs: rates 1, 2, 6, one drifting, one with
    an explicit step size lr = 0.02 instead of k·h_F."""
    extra = ('partition first = depth(0, 1) { every = 6; drift = linear }\n'
             'partition second = depth(1, 2) { every = 2; lr = 0.02 }\n'
             "partition fast = rest\n")
    path = spec(tmp_path, extra, hidden="10, 9", lr=0.03, mu=0.8, steps=20, seed=7,
                data="levelsets(samples=300, batch=10)")
    got = train(path, save=False).model.state_dict()
    # rate 2 with lr 0.02 is the reference with k·lr = 0.02 → lr_eff = 0.01 per k
    compiled = compile_spec(path)
    model, data = compiled.bound.model, compiled.bound.data
    params = dict(model.named_parameters())
    mom: dict[str, torch.Tensor] = {}
    names = list(params)
    for t, (x, y) in enumerate(batches(data, 20)):
        g = grads(model, x, y, names)
        with torch.no_grad():
            for n in names:
                k, step = (6, 6 * 0.03) if n in FIRST else (2, 0.02) if n in SECOND else (1, 0.03)
                if t % k == 0:
                    mom[n] = g[n].clone() if n not in mom else 0.8 * mom[n] + g[n]
                    if n not in FIRST:
                        params[n] -= step * mom[n]
            for n in FIRST:
                params[n] -= (6 * 0.03 / 6) * mom[n]
    assert_same(got, {k: v.detach() for k, v in model.state_dict().items()}, 1e-12)  # float64, as above


def test_pruned_and_unpruned_execution_agree(tmp_path: Path) -> None:
    extra = 'partition head = module("head")\npartition body = rest { every = 3 }\n'
    path = spec(tmp_path, extra, steps=14)
    pruned = compile_spec(path)
    unpruned = compile_spec(path, pipeline=["group-updates"])
    assert any(op.kind == "forward" and op.segment != "model" for op in pruned.graph.ops())
    assert all(op.kind != "forward" or op.segment == "model" for op in unpruned.graph.ops())
    a = train(pruned, save=False).model.state_dict()
    b = train(unpruned, save=False).model.state_dict()
    assert_same(a, b, 1e-12)


def test_transfer_backbone_is_differentiated_only_on_slow_steps(tmp_path: Path) -> None:
    extra = 'partition head = module("head")\npartition backbone = rest { every = 5 }\n'
    graph = compile_spec(spec(tmp_path, extra)).graph
    for step in range(5):
        backward = [op for op in graph.at(step) if op.kind == "backward"]
        assert backward[0].wrt == (("head", "backbone") if step == 0 else ("head",))
        forwards = [op for op in graph.at(step) if op.kind == "forward"]
        if step:
            assert [f.grad for f in forwards] == [(), ("head",)]
            assert forwards[0].segment == "model[:2]"


SUBSET = 'partition subset = random(0.3, per=tensor, of=params("layers.0.weight")) {{ every = {k} }}\n' \
         "partition others = rest\n"


def subset_reference(path: Path, k: int, steps: int, *, slow: int | None = None, lr: float = 0.05,
                     mu: float = 0.9) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The seed's random-subset procedure for SUBSET (seed 2): hold a random 30 % of
    layers.0.weight at zero for k steps while the rest takes fast steps; at the next interval
    restore it, give it one slow step slow·h (slow = k unless given), draw a new subset. The
    final state and the last subset."""
    slow = k if slow is None else slow
    compiled = compile_spec(path)
    model, data = compiled.bound.model, compiled.bound.data
    params = dict(model.named_parameters())
    w = params["layers.0.weight"]
    mom = {n: torch.zeros_like(p) for n, p in params.items()}
    seen = torch.zeros_like(w, dtype=torch.bool)
    mask, stash = None, None
    started: set[str] = set()
    for t, (x, y) in enumerate(batches(data, steps)):
        start = t % k == 0
        with torch.no_grad():
            if start and mask is not None:
                w[mask] = stash  # re-activate the slow parameters
        g = grads(model, x, y, list(params))
        with torch.no_grad():
            for n, p in params.items():
                if n != "layers.0.weight":
                    mom[n] = g[n].clone() if n not in started else mu * mom[n] + g[n]
                    started.add(n)
                    p -= lr * mom[n]
            moving = torch.ones_like(seen) if start or mask is None else ~mask
            b = mom["layers.0.weight"]
            new_b = torch.where(moving & ~seen, g["layers.0.weight"], mu * b + g["layers.0.weight"])
            mom["layers.0.weight"] = torch.where(moving, new_b, b)
            seen |= moving
            step = torch.full_like(w, lr)
            if start and mask is not None:
                step[mask] = slow * lr  # the slow step of the re-activated subset
            w -= torch.where(moving, step * mom["layers.0.weight"], torch.zeros_like(w))
            if start:
                mask = draw_masks([w.shape], 0.3, "tensor", _seed(2, "subset", t // k), w.device)[0]
                stash = w[mask].clone()
                w[mask] = 0
    with torch.no_grad():
        w[mask] = stash  # the end of training restores the held-out weights
    return {n: v.detach() for n, v in model.state_dict().items()}, mask


def test_random_subset_matches_the_seed_procedure(tmp_path: Path) -> None:
    k, steps = 3, 13
    path = spec(tmp_path, SUBSET.format(k=k), steps=steps, seed=2)
    got = train(path, save=False).model.state_dict()
    want, mask = subset_reference(path, k, steps)
    assert_same(got, want, 1e-10)
    assert int(mask.sum()) == round(0.3 * mask.numel())


def test_a_random_subsets_slow_step_is_its_resample_ops(tmp_path: Path) -> None:
    """The interval k a resample op carries is the slow step (k·h) its subset takes when the
    next restore brings it back: edited on the ops, the run follows (the draws stay where the
    graph has its ops, every 3 steps)."""
    from dataclasses import replace

    from mrc.api import lower
    from mrc.techniques.random_subsets.ops import Resample

    k, steps = 3, 13
    path = spec(tmp_path, SUBSET.format(k=k), steps=steps, seed=2)
    compiled = compile_spec(path)
    edited = 0
    for p in compiled.graph.patterns():
        for op in list(p.of_kind(Resample)):
            p.replace(op, replace(op, every=5))
            edited += 1
    assert edited
    plan = lower(compiled, steps)
    for t, (x, y) in enumerate(batches(compiled.bound.data, steps)):
        plan.step(t, x, y)
    plan.finish()
    got = compiled.bound.model.state_dict()
    want, _ = subset_reference(path, k, steps, slow=5)
    assert_same(got, want, 1e-10)
    plain, _ = subset_reference(path, k, steps)
    assert any(not torch.allclose(got[n], plain[n], rtol=0, atol=1e-6) for n in plain)


def test_random_subset_is_zero_during_the_fast_steps(tmp_path: Path) -> None:
    extra = ('partition subset = random(0.5, per=global, of=weight - module("head")) '
             "{ every = 4 }\npartition others = rest\n")
    compiled = compile_spec(spec(tmp_path, extra, steps=6))
    from mrc.api import lower

    plan = lower(compiled, 6)
    data = compiled.bound.data
    for t, (x, y) in enumerate(batches(data, 6)):
        plan.step(t, x, y)
        subset = plan.ctx.subsets[("", "subset")]
        held = sum(int((p[m] == 0).sum()) for p, m in zip(subset.params, subset.masks, strict=True))
        total = sum(p.numel() for p in subset.params)
        assert held == round(0.5 * total)
        with plan.full_weights():
            assert sum(int((p[m] == 0).sum()) for p, m in
                       zip(subset.params, subset.masks, strict=True)) == 0


def test_langevin_with_zero_temperature_is_its_deterministic_integrator(tmp_path: Path) -> None:
    h, gamma, steps = 0.2, 1.5, 9
    extra = (f'partition head = module("head") {{ optimizer langevin(lr={h}, gamma={gamma}, '
             f"tau=0) }}\npartition body = rest\n")
    path = spec(tmp_path, extra, steps=steps, mu=0.0)
    got = train(path, save=False).model.state_dict()
    compiled = compile_spec(path)
    model, data = compiled.bound.model, compiled.bound.data
    params = dict(model.named_parameters())
    p_head = {n: torch.zeros_like(params[n]) for n in HEAD}
    for t, (x, y) in enumerate(batches(data, steps)):
        g = grads(model, x, y, list(params))
        with torch.no_grad():
            for n, p in params.items():
                if n in HEAD:  # BAOAB, τ = 0: B (h/2 first, then h), A, O, A
                    p_head[n] -= (h / 2 if t == 0 else h) * g[n]
                    p += (h / 2) * p_head[n]
                    p_head[n] *= math.exp(-gamma * h)
                    p += (h / 2) * p_head[n]
                else:
                    p -= 0.05 * g[n]
    assert_same(got, {n: v.detach() for n, v in model.state_dict().items()}, 1e-10)


def test_langevin_noise_has_the_right_variance() -> None:
    from mrc.optim.langevin import Langevin

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(200_000, dtype=torch.float64))
    opt = Langevin([p], lr=0.1, gamma=2.0, tau=0.5)
    p.grad = torch.zeros_like(p)
    opt.step()
    m = opt.state[p]["momentum"]
    want = (1 - math.exp(-2 * 2.0 * 0.1)) * 0.5
    assert abs(m.var().item() - want) / want < 0.02
    assert abs(m.mean().item()) < 0.01


def test_resume_mid_interval_is_bit_identical(tmp_path: Path) -> None:
    """Drift steps, a held-out random subset and Langevin noise all survive a checkpoint."""
    extra = ('partition first = depth(0, 1) { every = 4; drift = linear }\n'
             'partition subset = random(0.2, of=params("layers.1.weight")) { every = 3 }\n'
             'partition head = module("head") { optimizer langevin(lr=0.1, tau=1e-3) }\n'
             "partition others = rest\n")
    path = spec(tmp_path, extra, steps=23)
    whole = train(path, out=tmp_path / "whole").model.state_dict()
    train(path, out=tmp_path / "split", stop_at=10)  # mid-interval for both rates
    resumed = train(path, resume=tmp_path / "split").model.state_dict()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_fused_update_path_equals_torch_optim_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flat-buffer fused SGD (kernel=torch here, triton on CUDA) against torch.optim."""
    extra = ('partition first = depth(0, 1) { every = 3; drift = linear }\n'
             'partition second = depth(1, 2) { every = 2 }\n'
             "partition fast = rest\n")
    path = spec(tmp_path, extra, wd=1e-3, steps=17)
    fused = compile_spec(path, ["train.kernels=torch"])  # every SGD rule through the fused path
    kernels = {op.kernel for op in fused.graph.ops() if op.kind == "update_group"}
    assert kernels == {"torch"}
    reference_path = compile_spec(path, pipeline=["prune-gradients", "freeze-prefix", "group-updates"])
    assert {op.kernel for op in reference_path.graph.ops() if op.kind == "update_group"} == {"torch.optim"}
    a = train(fused, save=False).model.state_dict()
    b = train(reference_path, save=False).model.state_dict()
    assert_same(a, b, 1e-12)
    from mrc.api import lower

    plan = lower(fused, 17)
    kinds = {key[1] for key in plan.ctx.integrators}
    assert kinds == {"fused"}  # every rule went through the flat buffer


@pytest.mark.parametrize("rule", ["adam(lr=0.01, weight_decay=0.001)", "adamw(lr=0.01)"])
def test_fused_adam_path_equals_torch_optim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rule: str) -> None:
    """Adam partitions on two rates through the flat-buffer kernels (float32: their state is)."""
    extra = (f'partition head = module("head") {{ optimizer {rule} }}\n'
             f"partition body = rest {{ every = 3; optimizer {rule} }}\n")
    path = spec(tmp_path, extra, steps=11)
    path.write_text(path.read_text().replace("dtype=float64", "dtype=float32"))
    fused = compile_spec(path, ["train.kernels=torch"])
    assert {op.kernel for op in fused.graph.ops() if op.kind == "update_group"} == {"torch"}
    reference_path = compile_spec(path, pipeline=["prune-gradients", "freeze-prefix", "group-updates"])
    a = train(fused, save=False).model.state_dict()
    b = train(reference_path, save=False).model.state_dict()
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def _fused_against_torch_optim_on_cuda(tmp_path: Path, extra: str, steps: int) -> None:
    """On a GPU the rules run as Triton launches; float32 here, so the tolerance is float32
    rounding accumulated over the steps."""
    path = spec(tmp_path, extra, wd=1e-3, steps=steps)
    path.write_text(path.read_text().replace("dtype=float64", "dtype=float32, device=cuda"))
    fused = compile_spec(path)
    assert {op.kernel for op in fused.graph.ops() if op.kind == "update_group"} == {"triton"}
    reference_path = compile_spec(path, pipeline=["prune-gradients", "freeze-prefix", "group-updates"])
    a = train(fused, save=False).model.state_dict()
    b = train(reference_path, save=False).model.state_dict()
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_fused_path_on_cuda_matches_torch_optim(tmp_path: Path) -> None:
    _fused_against_torch_optim_on_cuda(tmp_path, 'partition first = depth(0, 1) { every = 3; drift = linear }\n'
                                       'partition second = depth(1, 2) { every = 2 }\n'
                                       "partition fast = rest\n", 17)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_adam_path_on_cuda_matches_torch_optim(tmp_path: Path) -> None:
    _fused_against_torch_optim_on_cuda(tmp_path, 'partition head = module("head") { optimizer adamw(lr=0.01) }\n'
                                       'partition body = rest { every = 2; optimizer adamw(lr=0.01) }\n', 11)


@pytest.mark.parametrize("kernels", ["auto", "torch", '"torch.optim"'])
@pytest.mark.parametrize("own_rule", [False, True])
def test_literal_gradient_point_with_drift_on_every_update_path(tmp_path: Path, kernels: str, own_rule: bool) -> None:
    """Issue 9's reproduction: with `first_fast_gradient = after_slow`, on a step where a
    no-drift slow partition updates first, a drifting partition of the same rule must not drift
    before the second gradient is taken, nor twice. The fused flat-buffer path (kernel=torch on the
    CPU), torch.optim, and a rule of its own for `b` all equal the seed's literal loop."""
    rule = " optimizer sgd(lr=0.05, momentum=0.9, dampening=0);" if own_rule else ""
    extra = ('partition a = module("layers.*") { every = 2 }\n'
             f"partition b = rest {{ every = 4; drift = linear;{rule} }}\n"
             "multirate(first_fast_gradient = after_slow)\n")
    path = spec(tmp_path, extra, hidden="6", steps=5, data="spirals(samples=30, batch=24, val=0.2)")
    compiled = compile_spec(path, [f"train.kernels={kernels}"])
    got = train(compiled, save=False).model.state_dict()
    want = reference(path, {"a": (FIRST, 2, "none"), "b": (HEAD, 4, "linear")}, lr=0.05, mu=0.9, wd=0.0,
                     steps=5, literal=True)
    assert_same(got, want, 1e-10)
