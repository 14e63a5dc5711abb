"""Element-level partitions against references written from the seed's equations on masked
elements (seeds/multirate-training.md, "Within networks … random subgroups").

`partition slow = sample(f, of=…) { every = k }` holds a fixed random subset S of the elements
(drawn once from the run's seed and the partition's name); `partition fast = rest` the others.
With SGD-momentum μ, weight decay λ, d = ∇L + λθ and fast step h:

  fast elements, every step:     p_F ← μ p_F + d_F;  θ_F ← θ_F − h p_F
  slow elements, steps 0, k, …:  p_S ← μ p_S + d_S;  θ_S ← θ_S − k·h p_S        (no drift)
                                 or, linear drift, θ_S ← θ_S − h p_S on every step of the interval

(p ← d on an element's first update, as torch.optim.SGD). The references below are plain
PyTorch loops over the same model, data order and masks, in float64.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_multirate import assert_same, batches, grads, spec  # the same folder (pytest puts it on the path)

from mrc.api import compile_spec, lower, train
from mrc.techniques.multirate.bind import sample_seed
from mrc.techniques.random_subsets.masks import random_subset_masks

W0 = "layers.0.weight"


def slow_fast(k: int, drift: str = "none", fraction: float = 0.5, of: str = f'params("{W0}")',
              per: str = "tensor") -> str:
    return (f"partition slow = sample({fraction}, per={per}, of={of}) "
            f"{{ every = {k}; drift = {drift} }}\npartition fast = rest\n")


def masks_of(compiled, name: str) -> dict[str, torch.Tensor]:
    """Per tensor the elements partition `name` holds (all of a tensor it holds whole)."""
    part = next(p for p in compiled.bound.partitions if p.name == name)
    params = dict(compiled.bound.model.named_parameters())
    return {n: (torch.ones_like(params[n], dtype=torch.bool) if m is None else m)
            for n, m in zip(part.params, part.masks, strict=True)}


def reference(path: Path, *, k: int, drift: str, lr: float, mu: float, wd: float,
              steps: int) -> dict[str, torch.Tensor]:
    """The seed's two-rate SGD-momentum with the slow set S the partition `slow`'s elements."""
    compiled = compile_spec(path)
    model, data = compiled.bound.model, compiled.bound.data
    params = dict(model.named_parameters())
    slow = masks_of(compiled, "slow")
    fast = masks_of(compiled, "fast")
    p_f = {n: torch.zeros_like(p) for n, p in params.items()}
    p_s = {n: torch.zeros_like(p) for n, p in params.items()}
    for t, (x, y) in enumerate(batches(data, steps)):
        g = grads(model, x, y, list(params))
        with torch.no_grad():
            new = {}
            for n, p in params.items():
                d = g[n] + wd * p
                theta = p.clone()
                if n in fast:
                    m = fast[n]
                    p_f[n] = torch.where(m, d if t == 0 else mu * p_f[n] + d, p_f[n])
                    theta = torch.where(m, p - lr * p_f[n], theta)
                if n in slow and t % k == 0:
                    m = slow[n]
                    p_s[n] = torch.where(m, d if t == 0 else mu * p_s[n] + d, p_s[n])
                    if drift == "none" or k == 1:
                        theta = torch.where(m, p - (k * lr) * p_s[n], theta)
                new[n] = theta
            for n, p in params.items():
                p.copy_(new[n])
            if drift == "linear" and k > 1:  # θ_S ← θ_S − (h_S/k) p_S = θ_S − h p_S, every step
                for n, m in slow.items():
                    params[n].copy_(torch.where(m, params[n] - lr * p_s[n], params[n]))
    return {n: v.detach().clone() for n, v in model.state_dict().items()}


def test_sample_draws_once_from_the_seed_and_the_partition_name(tmp_path: Path) -> None:
    path = spec(tmp_path, slow_fast(3, of='params("layers.*.weight")'), seed=5)
    a, b = compile_spec(path), compile_spec(path)
    shapes = [a.bound.model.get_parameter(n).shape for n in ("layers.0.weight", "layers.1.weight")]
    want = random_subset_masks(shapes, 0.5, sample_seed(5, "slow"))
    for compiled in (a, b):
        got = masks_of(compiled, "slow")
        for n, m in zip(("layers.0.weight", "layers.1.weight"), want, strict=True):
            assert torch.equal(got[n], m), n
            assert int(m.sum()) == round(0.5 * m.numel())
    fast = masks_of(a, "fast")
    for n, m in masks_of(a, "slow").items():
        assert torch.equal(fast[n], ~m)  # `rest` takes exactly the other elements
    other = compile_spec(spec(tmp_path, slow_fast(3, of='params("layers.*.weight")'), seed=6,
                              name="other.mrs"))
    assert not torch.equal(masks_of(other, "slow")[W0], masks_of(a, "slow")[W0])


def test_global_sample_counts_over_all_its_tensors(tmp_path: Path) -> None:
    compiled = compile_spec(spec(tmp_path, slow_fast(2, fraction=0.3, per="global", of="weight")))
    slow = masks_of(compiled, "slow")
    total = sum(m.numel() for m in slow.values())
    assert sum(int(m.sum()) for m in slow.values()) == round(0.3 * total)
    info = compiled.graph.partitions["slow"]
    assert info.numel == round(0.3 * total) and len(info.partial) == len(slow)
    text = compiled.graph.to_text()
    assert f"partition slow: elements of {len(slow)} tensors numel={info.numel} every=2 sample=0.3/global" in text


@pytest.mark.parametrize("drift", ["none", "linear"])
def test_k1_element_partitions_are_plain_sgd_momentum_exactly(tmp_path: Path, drift: str) -> None:
    plain = train(spec(tmp_path, "", name="plain.mrs", wd=1e-3), save=False).model.state_dict()
    multi = train(spec(tmp_path, slow_fast(1, drift, of="weight", per="global"), wd=1e-3),
                  save=False).model.state_dict()
    for key in plain:
        assert torch.equal(plain[key], multi[key]), key


@pytest.mark.parametrize(("k", "drift", "wd", "kernels"), [
    (3, "none", 1e-3, '"torch.optim"'), (3, "linear", 1e-3, '"torch.optim"'),
    (4, "linear", 0.0, "torch"), (3, "none", 1e-3, "torch"), (2, "linear", 1e-3, "auto"),
])
def test_fast_slow_split_of_one_matrix_matches_the_seed(tmp_path: Path, k: int, drift: str,
                                                        wd: float, kernels: str) -> None:
    steps = 5 * k + 2
    path = spec(tmp_path, slow_fast(k, drift), wd=wd, steps=steps)
    compiled = compile_spec(path, [f"train.kernels={kernels}"])
    got = train(compiled, save=False).model.state_dict()
    want = reference(path, k=k, drift=drift, lr=0.05, mu=0.9, wd=wd, steps=steps)
    assert_same(got, want, 1e-10)
    # not trivially: the slow elements moved differently from the fast ones of their matrix
    plain = train(spec(tmp_path, "", name="plain.mrs", wd=wd, steps=steps), save=False).model.state_dict()
    slow = masks_of(compiled, "slow")[W0]
    assert (got[W0] - plain[W0])[slow].abs().max() > 1e-4


def test_slow_elements_stay_put_between_their_steps(tmp_path: Path) -> None:
    compiled = compile_spec(spec(tmp_path, slow_fast(4), steps=8))
    plan = lower(compiled, 8)
    w = compiled.bound.model.get_parameter(W0)
    slow = masks_of(compiled, "slow")[W0]
    for t, (x, y) in enumerate(batches(compiled.bound.data, 8)):
        before = w.detach().clone()
        plan.step(t, x, y)
        moved = (w.detach() != before)
        if t % 4:
            assert not moved[slow].any(), t
        assert moved[~slow].all(), t


@pytest.mark.parametrize("drift", ["none", "linear"])
def test_fused_path_equals_torch_optim(tmp_path: Path, drift: str) -> None:
    """Masked segments of the flat-buffer SGD (kernels=torch) against torch.optim's shadows,
    with a whole-tensor partition of the same rule beside them."""
    extra = ('partition head = module("head") { every = 2 }\n'
             + slow_fast(3, drift, of='params("layers.*.weight")'))
    path = spec(tmp_path, extra, wd=1e-3, steps=14)
    fused = compile_spec(path, ["train.kernels=torch"])
    assert {op.kernel for op in fused.graph.ops() if op.kind == "update_group"} == {"torch"}
    ref = compile_spec(path, ['train.kernels="torch.optim"'])
    assert {op.kernel for op in ref.graph.ops() if op.kind == "update_group"} == {"torch.optim"}
    assert_same(train(fused, save=False).model.state_dict(), train(ref, save=False).model.state_dict(), 1e-12)


def test_partitions_of_other_rules_sharing_a_tensor_run_through_torch_optim(tmp_path: Path) -> None:
    """A slow half with a rule of its own: the tensor cannot sit in two flat buffers, so both
    rules step masked shadows, and the result is still the seed's update."""
    extra = (f'partition slow = sample(0.5, of=params("{W0}")) {{ every = 2; '
             "optimizer sgd(lr=0.05, momentum=0.5) }\npartition fast = rest\n")
    path = spec(tmp_path, extra, steps=9)
    compiled = compile_spec(path, ["train.kernels=torch"])
    kernels = {op.partitions: op.kernel for op in compiled.graph.ops() if op.kind == "update_group"}
    assert set(kernels.values()) == {"torch.optim"}
    got = train(compiled, save=False).model.state_dict()
    model, data = compiled.bound.model, compiled.bound.data
    params = dict(model.named_parameters())
    slow = masks_of(compiled, "slow")[W0]
    mom_f = {n: torch.zeros_like(p) for n, p in params.items()}
    mom_s = torch.zeros_like(params[W0])
    for t, (x, y) in enumerate(batches(data, 9)):
        g = grads(model, x, y, list(params))
        with torch.no_grad():
            for n, p in params.items():
                fast = ~slow if n == W0 else torch.ones_like(p, dtype=torch.bool)
                mom_f[n] = torch.where(fast, g[n] if t == 0 else 0.9 * mom_f[n] + g[n], mom_f[n])
                new = torch.where(fast, p - 0.05 * mom_f[n], p)
                if n == W0 and t % 2 == 0:
                    mom_s = torch.where(slow, g[n] if t == 0 else 0.5 * mom_s + g[n], mom_s)
                    new = torch.where(slow, p - 0.1 * mom_s, new)
                p.copy_(new)
    assert_same(got, {n: v.detach() for n, v in model.state_dict().items()}, 1e-10)


@pytest.mark.parametrize("kernels", ["torch", '"torch.optim"'])
def test_resume_mid_interval_is_bit_identical(tmp_path: Path, kernels: str) -> None:
    extra = slow_fast(4, "linear", of='params("layers.*.weight")')
    path = spec(tmp_path, extra, wd=1e-3, steps=19)
    path.write_text(path.read_text().replace("checkpoint_every=0", f"checkpoint_every=0, kernels={kernels}"))
    whole = train(path, out=tmp_path / "whole").model.state_dict()
    train(path, out=tmp_path / "split", stop_at=10)  # step 10: inside the slow interval 8…11
    resumed = train(path, resume=tmp_path / "split").model.state_dict()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_a_checkpoint_of_other_elements_is_refused(tmp_path: Path) -> None:
    a = compile_spec(spec(tmp_path, slow_fast(2), seed=1))
    b = compile_spec(spec(tmp_path, slow_fast(2), seed=2, name="b.mrs"))
    plan_a, plan_b = lower(a, 4), lower(b, 4)
    state = plan_a.state_dict()
    assert state["element_masks"] and state["element_masks"] != plan_b.mask_digest()
    plan_a.load_state_dict(state)  # its own elements: fine
    with pytest.raises(ValueError, match="other elements"):
        plan_b.load_state_dict(state)
