"""The update kernels: torch paths against torch.optim and the seed's equations, Triton kernels
against the torch paths.

How the Triton kernels run here. Triton decides between compiling and interpreting when a
kernel is *decorated*, i.e. when `triton` and `mrc.kernels.*` are imported, from the
environment variable TRITON_INTERPRET. So this module sets TRITON_INTERPRET=1 before it
imports them, when there is no CUDA device and nothing imported triton yet; the CPU
parameterisation (`device="cpu"`) then runs the kernels in Triton's interpreter at small sizes.
A conftest.py would set the variable for every test in tests/unit, so it is set here instead.
If something imported triton earlier in the session without the variable (the kernels are then
compiled-mode objects that cannot run on the CPU), the in-process interpreter tests skip and
`test_interpreter_tests_in_a_subprocess` runs them in a fresh interpreter process instead, so
they are never silently lost. With CUDA, the variable is left alone: the `device="cuda"` cases
(marked `gpu`) run the compiled kernels.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

_CUDA = torch.cuda.is_available()
if "triton" not in sys.modules and not _CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

from mrc.kernels import adam, configs, langevin, sgd, subset  # noqa: E402
from mrc.kernels.flat import FlatGroup  # noqa: E402
from mrc.kernels.sgd import Mode, Segment  # noqa: E402

from mrc.techniques.random_subsets.masks import random_subset_mask  # noqa: E402


def _interpreted() -> bool:
    if not configs.HAS_TRITON:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(sgd._sgd_kernel.fn, InterpretedFunction)


INTERPRETED = _interpreted()
COMPILED_GPU = _CUDA and configs.HAS_TRITON and not INTERPRETED

# ----------------------------------------------------------------------------- tolerances
# |actual − expected| ≤ atol + rtol·max(|expected|, |θ₀|) elementwise, by parameter dtype
# (θ₀: the parameter before the steps, the trajectory's scale).
TOL = {
    # Both sides compute in float32; operation order and FMA contraction differ (the in-place
    # torch path folds weight decay into the momentum, Triton contracts a·b + c), so results
    # differ by a few ulp of float32 per step.
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    # Loosened: θ is stored in bfloat16 (8 significant bits). Two float32 updates a few ulp
    # apart can round to neighbouring bfloat16 values: one bfloat16 ulp, ≤ 2**-7·|θ|, and that
    # absolute gap stays when θ later shrinks towards 0 (hence relative to the trajectory's
    # scale |θ₀|, not to the final value). Allow two such roundings over the steps.
    torch.bfloat16: {"rtol": 2 * 2**-7, "atol": 1e-5},
}
# bfloat16 parameters are checked against torch.optim run in float32 with θ rounded to
# bfloat16 after every step (exactly "float32 arithmetic, θ stored in bfloat16"), θ with
# TOL[bfloat16]. The float32 state (momentum, m, v) of a bfloat16 run, against torch.optim or
# between the torch and Triton paths, is loosened from TOL[float32]: where θ rounded to the
# neighbouring bfloat16 value (one ulp, ≤ 2**-7·|θ| ≤ 0.04 for these |θ| < 5), the next step's
# weight-decay term (wd = 1e-2) moves the state by up to 1e-2·0.04 = 4e-4.
STATE_TOL_BF16 = {"rtol": 1e-5, "atol": 4e-4}
STEPS = 3
# Langevin noise on a GPU: Triton's log/cos/sqrt there are fast approximations (~1e-6
# relative) where torch uses correctly rounded ones, and the normals reach |R| ≈ 5.
RANDN_TOL_GPU = {"rtol": 1e-4, "atol": 1e-4}
# In the interpreter both sides use correctly rounded float32 functions (numpy vs torch):
# a few ulp.
RANDN_TOL_CPU = {"rtol": 1e-5, "atol": 1e-6}

DTYPES = [torch.float32, torch.bfloat16]
TORCH_SIZES = [1, 7, 1823, 2**20 + 3]
INTERPRETER_SIZES = [1, 7, 1823]  # the interpreter runs programs one by one: keep them few
GPU_SIZES = [1, 7, 1823, 2**20 + 3]

_SKIP_INTERP = pytest.mark.skipif(
    not INTERPRETED, reason="kernels not in interpreter mode in this process (no triton, a "
    "CUDA device, or triton imported before TRITON_INTERPRET was set; see the subprocess test)")
_SKIP_GPU = pytest.mark.skipif(not COMPILED_GPU, reason="needs CUDA and compiled Triton kernels")
TRITON_CASES = (
    [pytest.param("cpu", n, marks=_SKIP_INTERP, id=f"interp-{n}") for n in INTERPRETER_SIZES]
    + [pytest.param("cuda", n, marks=[pytest.mark.gpu, _SKIP_GPU], id=f"cuda-{n}")
       for n in GPU_SIZES]
)
TRITON_DEVICES = [
    pytest.param("cpu", marks=_SKIP_INTERP, id="interp"),
    pytest.param("cuda", marks=[pytest.mark.gpu, _SKIP_GPU], id="cuda"),
]


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return TOL[dtype]


def _state_tol(dtype: torch.dtype) -> dict[str, float]:
    """Tolerance of the float32 state of a run whose parameters have `dtype`."""
    return TOL[torch.float32] if dtype == torch.float32 else STATE_TOL_BF16


def _randn(n: int, seed: int, dtype: torch.dtype = torch.float32,
           device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g).to(dtype=dtype, device=device)


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: dict[str, float], what: str,
           scale: torch.Tensor | None = None) -> None:
    """Elementwise |actual − expected| ≤ atol + rtol·max(|expected|, |scale|); no NaN."""
    a, e = actual.float().cpu(), expected.float().cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert not torch.isnan(a).any(), f"{what}: NaN"
    ref = e.abs() if scale is None else torch.maximum(e.abs(), scale.float().cpu().abs())
    err = (a - e).abs()
    bad = err > tol["atol"] + tol["rtol"] * ref
    if bad.any():
        i = int((err - tol["rtol"] * ref).argmax())
        a, e = a.reshape(-1), e.reshape(-1)
        raise AssertionError(f"{what}: {int(bad.sum())} of {a.numel()} elements off, worst at "
                             f"{i}: {a[i].item()!r} vs {e[i].item()!r} (tolerance {tol})")


# ============================================================================ SGD

SGD_CONFIGS = {
    "plain": {"momentum": 0.0},
    "weight-decay": {"momentum": 0.0, "weight_decay": 1e-2},
    "heavy-ball": {"momentum": 0.9, "weight_decay": 5e-4},
    "dampening": {"momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2},
    "nesterov": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    "maximize": {"momentum": 0.8, "maximize": True},
}
LR = 0.1


def _run_sgd(fn, theta: torch.Tensor, grads: list[torch.Tensor], cfg: dict,
             mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    theta = theta.clone()
    buf = torch.full(theta.shape, float("nan"), device=theta.device)  # poisoned: step 1 sets it
    if mask is not None:
        buf.zero_()
    for step, g in enumerate(grads):
        fn(theta, g, buf, lr=LR, first_step=step == 0, mask=mask, **cfg)
    return theta, buf


def _round_like(p: torch.Tensor, dtype: torch.dtype) -> None:
    """Store θ in `dtype` between float32 steps (what the kernels do for bfloat16)."""
    with torch.no_grad():
        p.copy_(p.to(dtype).float())


def _optim_sgd(theta: torch.Tensor, grads: list[torch.Tensor],
               cfg: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch.optim.SGD in float32 on upcast copies, θ rounded to its dtype after each step."""
    p = torch.nn.Parameter(theta.float().cpu().clone())
    opt = torch.optim.SGD([p], lr=LR, foreach=False, **cfg)
    for g in grads:
        p.grad = g.float().cpu().clone()
        opt.step()
        _round_like(p, theta.dtype)
    return p.detach(), opt.state[p].get("momentum_buffer")


@pytest.mark.parametrize("cfg", list(SGD_CONFIGS), ids=list(SGD_CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("n", TORCH_SIZES)
def test_sgd_torch_matches_torch_optim(n: int, dtype: torch.dtype, cfg: str) -> None:
    theta = _randn(n, 0, dtype)
    grads = [_randn(n, 1 + s, dtype) for s in range(STEPS)]
    got, buf = _run_sgd(sgd.sgd_torch, theta, grads, SGD_CONFIGS[cfg])
    want, want_buf = _optim_sgd(theta, grads, SGD_CONFIGS[cfg])
    if dtype == torch.float32:
        _close(got, want, TOL[dtype], "θ")
        if want_buf is not None:
            _close(buf, want_buf, TOL[dtype], "momentum")
    else:
        _close(got, want, TOL[dtype], "θ (bf16 storage)", scale=theta)
        if want_buf is not None:
            _close(buf, want_buf, STATE_TOL_BF16, "momentum")
    if want_buf is None:
        assert torch.isnan(buf).all(), "plain SGD must not touch the momentum buffer"


@pytest.mark.parametrize("cfg", list(SGD_CONFIGS), ids=list(SGD_CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize(("device", "n"), TRITON_CASES)
def test_sgd_triton_matches_torch(device: str, n: int, dtype: torch.dtype, cfg: str) -> None:
    theta = _randn(n, 0, dtype, device)
    grads = [_randn(n, 1 + s, dtype, device) for s in range(STEPS)]
    got, buf = _run_sgd(sgd.sgd_triton, theta, grads, SGD_CONFIGS[cfg])
    want, want_buf = _run_sgd(sgd.sgd_torch, theta, grads, SGD_CONFIGS[cfg])
    _close(got, want, _tol(dtype), "θ", scale=theta)
    if SGD_CONFIGS[cfg]["momentum"]:
        _close(buf, want_buf, _state_tol(dtype), "momentum")
    if dtype == torch.float32 and device == "cuda":
        opt, _ = _optim_sgd(theta, grads, SGD_CONFIGS[cfg])
        _close(got, opt, TOL[dtype], "θ vs torch.optim")


@pytest.mark.parametrize("impl", [
    pytest.param("torch", id="torch"),
    pytest.param("cpu", marks=_SKIP_INTERP, id="interp"),
    pytest.param("cuda", marks=[pytest.mark.gpu, _SKIP_GPU], id="cuda"),
])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
def test_sgd_mask_updates_only_the_selection(impl: str, dtype: torch.dtype) -> None:
    n = 1823
    device = "cpu" if impl == "torch" else impl
    fn = sgd.sgd_torch if impl == "torch" else sgd.sgd_triton
    cfg = {"momentum": 0.9, "weight_decay": 1e-2}
    mask = random_subset_mask(n, 0.3, seed=3, device=device)
    theta = _randn(n, 0, dtype, device)
    grads = [_randn(n, 1 + s, dtype, device) for s in range(2)]
    got, buf = _run_sgd(fn, theta, grads, cfg, mask=mask)
    full, full_buf = _run_sgd(sgd.sgd_torch, theta, grads, cfg)
    assert torch.equal(got[~mask], theta[~mask]), "unselected θ must not move"
    assert torch.all(buf[~mask] == 0), "unselected momentum must not move"
    _close(got[mask], full[mask], _tol(dtype), "selected θ", scale=theta[mask])
    _close(buf[mask], full_buf[mask], _state_tol(dtype), "selected momentum")


def test_sgd_rejects_bad_input() -> None:
    theta, g = torch.zeros(5), torch.zeros(5)
    with pytest.raises(ValueError, match="Nesterov"):
        sgd.sgd_torch(theta, g, torch.zeros(5), lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(TypeError, match="float32"):
        sgd.sgd_torch(theta, g, torch.zeros(5, dtype=torch.bfloat16), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="contiguous flat"):
        sgd.sgd_torch(theta, torch.zeros(6), None, lr=0.1)
    with pytest.raises(ValueError, match="buffer"):
        sgd.sgd_torch(theta, g, None, lr=0.1, momentum=0.9)


# ============================================================================ multirate


def _two_partitions(n_fast: int, n_slow: int, dtype: torch.dtype, device: str = "cpu"):
    n = n_fast + n_slow
    theta = _randn(n, 10, dtype, device)
    buf = _randn(n, 11, torch.float32, device)
    return n, theta, buf


@pytest.mark.parametrize("k", [1, 3])
def test_multirate_torch_follows_the_seed_equations_with_linear_drift(k: int) -> None:
    """k fast steps of the linear-drift scheme, against the seed's loop written out:
    p_S ← μp_S + ∇_S L; then k times p_F ← μp_F + ∇_F L; θ_F −= (h/k)p_F; θ_S −= (h/k)p_S."""
    n_fast, n_slow, mu, h = 37, 1823, 0.9, 0.1
    n, theta, buf = _two_partitions(n_fast, n_slow, torch.float32)
    grads = [_randn(n, 20 + i) for i in range(k)]
    # the seed, literally (float64 for a clean reference)
    th, p = theta.double().clone(), buf.double().clone()
    F, S = slice(0, n_fast), slice(n_fast, n)
    p[S] = mu * p[S] + grads[0].double()[S]
    for i in range(k):
        p[F] = mu * p[F] + grads[i].double()[F]
        th[F] -= (h / k) * p[F]
        th[S] -= (h / k) * p[S]
    # the kernel: slow step (both UPDATE) then k − 1 fast steps (slow DRIFTs)
    got_th, got_p = theta.clone(), buf.clone()
    for i in range(k):
        slow_mode = Mode.UPDATE if i == 0 else Mode.DRIFT
        segs = [Segment(0, n_fast, Mode.UPDATE, 1 / k, mu), Segment(n_fast, n, slow_mode, 1 / k, mu)]
        sgd.multirate_sgd_torch(got_th, grads[i], got_p, segs, lr=h)
    _close(got_th, th, TOL[torch.float32], "θ")
    _close(got_p, p, TOL[torch.float32], "p")
    if k == 1:  # k = 1 is plain SGD-momentum exactly
        plain_th, plain_p = theta.clone(), buf.clone()
        sgd.sgd_torch(plain_th, grads[0], plain_p, lr=h, momentum=mu)
        assert torch.equal(plain_th, got_th) and torch.equal(plain_p, got_p)


def test_multirate_torch_without_drift_skips_the_slow_partition() -> None:
    n_fast, n_slow, mu, h, k = 64, 960, 0.9, 0.1, 4
    n, theta, buf = _two_partitions(n_fast, n_slow, torch.float32)
    g = _randn(n, 30)
    slow_step = [Segment(0, n_fast, Mode.UPDATE, 1 / k, mu), Segment(n_fast, n, Mode.UPDATE, 1.0, mu)]
    fast_step = [Segment(0, n_fast, Mode.UPDATE, 1 / k, mu), Segment(n_fast, n, Mode.SKIP)]
    th, p = theta.clone(), buf.clone()
    sgd.multirate_sgd_torch(th, g, p, slow_step, lr=h)
    want_slow = theta[n_fast:] - h * (mu * buf[n_fast:] + g[n_fast:])
    _close(th[n_fast:], want_slow, TOL[torch.float32], "slow θ after the slow step")
    before_th, before_p = th.clone(), p.clone()
    sgd.multirate_sgd_torch(th, g, p, fast_step, lr=h)
    assert torch.equal(th[n_fast:], before_th[n_fast:]) and torch.equal(p[n_fast:], before_p[n_fast:])
    assert not torch.equal(th[:n_fast], before_th[:n_fast])


MULTIRATE_LAYOUTS = {
    # FlatGroup-like layout, every bound a multiple of 16 (vector accesses on the GPU); the
    # ragged rest of the buffer is in no segment
    "aligned": lambda n: [Segment(0, 48, Mode.UPDATE, 0.25, 0.9, 1e-2),
                          Segment(48, 1024, Mode.DRIFT, 0.25, 0.9),
                          Segment(1024, 1040, Mode.SKIP),
                          Segment(1040, n // 16 * 16, Mode.FIRST, 1.0, 0.5, 5e-4)],
    # ragged bounds and a gap (elements in no segment stay untouched), μ = 0 segment
    "ragged": lambda n: [Segment(3, 40, Mode.UPDATE, 0.5, 0.0, 1e-2),
                         Segment(41, 700, Mode.DRIFT, 0.5, 0.9),
                         Segment(700, n - 5, Mode.UPDATE, 1.0, 0.9)],
}


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy", "nesterov"])
@pytest.mark.parametrize("layout", list(MULTIRATE_LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_multirate_triton_matches_torch(device: str, dtype: torch.dtype, layout: str,
                                        nesterov: bool) -> None:
    n = 1823 if device == "cpu" else 2**20 + 3
    segs = MULTIRATE_LAYOUTS[layout](n)
    theta = _randn(n, 0, dtype, device)
    buf = _randn(n, 1, torch.float32, device)
    grads = [_randn(n, 2 + s, dtype, device) for s in range(2)]
    results = []
    dampening = 0.0 if nesterov else 0.1
    for fn in (sgd.multirate_sgd_triton, sgd.multirate_sgd_torch):
        th, p = theta.clone(), buf.clone()
        for g in grads:
            fn(th, g, p, segs, lr=0.1, nesterov=nesterov, dampening=dampening)
        results.append((th, p))
    (got, got_p), (want, want_p) = results
    _close(got, want, _tol(dtype), "θ", scale=theta)
    _close(got_p, want_p, _state_tol(dtype), "p")
    covered = torch.zeros(n, dtype=torch.bool, device=device)
    for s in segs:
        if s.mode != Mode.SKIP:
            covered[s.start:s.stop] = True
    assert torch.equal(got[~covered], theta[~covered]), "elements outside live segments moved"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_flat_group_update_matches_torch_optim_per_tensor(device: str, dtype: torch.dtype) -> None:
    """End to end: a model's parameters in a FlatGroup, backward into the flat gradient, one
    sgd_triton launch per step, against torch.optim.SGD on an identical per-tensor model."""
    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(13, 33), nn.Tanh(), nn.Linear(33, 7)).to(device, dtype)

    flat_model, ref_model = model(), model()
    group = FlatGroup(list(flat_model.parameters()))
    ref_params = list(ref_model.parameters())
    # the reference: torch.optim on float32 masters, stored back in `dtype` after each step
    masters = [p.detach().float().clone().requires_grad_() for p in ref_params]
    master_opt = torch.optim.SGD(masters, lr=LR, momentum=0.9, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        x = torch.randn(16, 13, generator=gen).to(device, dtype)
        flat_model(x).square().mean().backward()
        ref_model(x).square().mean().backward()
        sgd.sgd_triton(group.data, group.grad(), group.state("momentum"), lr=LR, momentum=0.9,
                       weight_decay=1e-2, first_step=step == 0)
        group.zero_grad()
        for m, p in zip(masters, ref_params, strict=True):
            m.grad = p.grad.float()
            p.grad = None
        master_opt.step()
        with torch.no_grad():
            for m, p in zip(masters, ref_params, strict=True):
                m.copy_(m.to(dtype).float())
                p.copy_(m)
    assert group.is_intact() and group.grads_are_views()
    for (name, a), m in zip(flat_model.named_parameters(), masters, strict=True):
        _close(a, m, _tol(dtype), name, scale=m)


def test_multirate_rejects_overlapping_segments() -> None:
    theta, g, p = torch.zeros(10), torch.zeros(10), torch.zeros(10)
    with pytest.raises(ValueError, match="overlaps"):
        sgd.multirate_sgd_torch(theta, g, p, [Segment(0, 6, Mode.UPDATE),
                                              Segment(5, 10, Mode.UPDATE)], lr=0.1)
    with pytest.raises(ValueError, match="outside"):
        sgd.multirate_sgd_torch(theta, g, p, [Segment(0, 11, Mode.UPDATE)], lr=0.1)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multirate_masked_segments_move_only_their_elements(dtype: torch.dtype) -> None:
    """Two partitions holding disjoint elements of one span (element-level partitions): one
    call with overlapping masked segments equals each partition's own masked SGD step, and a
    masked DRIFT moves only its elements along the frozen momentum."""
    gen = torch.Generator().manual_seed(3)
    n = 48
    slow = torch.rand(n, generator=gen) < 0.5
    theta = torch.randn(n, generator=gen, dtype=dtype)
    g = torch.randn(n, generator=gen, dtype=dtype)
    buf = torch.randn(n, generator=gen, dtype=dtype)
    want_t, want_p = theta.clone(), buf.clone()
    sgd.sgd_torch(want_t, g, want_p, lr=0.1, momentum=0.9, weight_decay=1e-2, mask=~slow)
    drifted = want_t - 0.3 * want_p
    want_t = torch.where(slow, drifted, want_t)
    got_t, got_p = theta.clone(), buf.clone()
    sgd.multirate_sgd_torch(got_t, g, got_p, [Segment(0, n, Mode.UPDATE, 1.0, 0.9, 1e-2, mask=0),
                                              Segment(0, n, Mode.DRIFT, 3.0, 0.9, 1e-2, mask=1)],
                            lr=0.1, masks=[~slow, slow])
    torch.testing.assert_close(got_t, want_t, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-15)
    assert torch.equal(got_p[slow], buf[slow])  # the drifting partition's momentum stays
    with pytest.raises(ValueError, match="overlaps an unmasked"):
        sgd.multirate_sgd_torch(got_t, g, got_p, [Segment(0, n, Mode.UPDATE),
                                                  Segment(0, 8, Mode.UPDATE, mask=0)],
                                lr=0.1, masks=[slow[:8]])


# ============================================================================ Adam

ADAM_CONFIGS = {
    "adam": ({"weight_decay": 0.0}, False),
    "adam-l2": ({"weight_decay": 1e-2}, False),
    "adamw": ({"weight_decay": 1e-2}, True),
    "adam-maximize": ({"weight_decay": 0.0, "maximize": True}, False),
}
ADAM_LR = 1e-2


def _run_adam(fn, theta: torch.Tensor, grads: list[torch.Tensor], cfg: str):
    kw, decoupled = ADAM_CONFIGS[cfg]
    theta = theta.clone()
    m = torch.zeros(theta.shape, device=theta.device)
    v = torch.zeros(theta.shape, device=theta.device)
    for t, g in enumerate(grads, start=1):
        fn(theta, g, m, v, step=t, lr=ADAM_LR, decoupled_weight_decay=decoupled, **kw)
    return theta, m, v


def _optim_adam(theta: torch.Tensor, grads: list[torch.Tensor], cfg: str):
    kw, decoupled = ADAM_CONFIGS[cfg]
    p = torch.nn.Parameter(theta.float().cpu().clone())
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([p], lr=ADAM_LR, foreach=False, **kw)
    for g in grads:
        p.grad = g.float().cpu().clone()
        opt.step()
        _round_like(p, theta.dtype)
    return p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]


@pytest.mark.parametrize("cfg", list(ADAM_CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("n", TORCH_SIZES)
def test_adam_torch_matches_torch_optim(n: int, dtype: torch.dtype, cfg: str) -> None:
    theta = _randn(n, 0, dtype)
    grads = [_randn(n, 1 + s, dtype) for s in range(STEPS)]
    got, m, v = _run_adam(adam.adam_torch, theta, grads, cfg)
    want, want_m, want_v = _optim_adam(theta, grads, cfg)
    if dtype == torch.float32:
        _close(got, want, TOL[dtype], "θ")
        _close(m, want_m, TOL[dtype], "m")
        _close(v, want_v, TOL[dtype], "v")
    else:
        _close(got, want, TOL[dtype], "θ (bf16 storage)", scale=theta)
        _close(m, want_m, STATE_TOL_BF16, "m")
        _close(v, want_v, STATE_TOL_BF16, "v")


def test_adamw_wrappers_use_torch_defaults() -> None:
    n = 100
    theta, g = _randn(n, 0), _randn(n, 1)
    a, m, v = theta.clone(), torch.zeros(n), torch.zeros(n)
    adam.adamw_torch(a, g, m, v, step=1)
    p = torch.nn.Parameter(theta.clone())
    p.grad = g.clone()
    torch.optim.AdamW([p]).step()
    _close(a, p.detach(), TOL[torch.float32], "θ")


@pytest.mark.parametrize("cfg", list(ADAM_CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize(("device", "n"), TRITON_CASES)
def test_adam_triton_matches_torch(device: str, n: int, dtype: torch.dtype, cfg: str) -> None:
    theta = _randn(n, 0, dtype, device)
    grads = [_randn(n, 1 + s, dtype, device) for s in range(STEPS)]
    got, m, v = _run_adam(adam.adam_triton, theta, grads, cfg)
    want, want_m, want_v = _run_adam(adam.adam_torch, theta, grads, cfg)
    _close(got, want, _tol(dtype), "θ", scale=theta)
    _close(m, want_m, _state_tol(dtype), "m")
    _close(v, want_v, _state_tol(dtype), "v")


# Segments of one flat buffer at different step counts: ragged bounds, a gap, a run of three
# adjacent segments (one vectorised pass on the torch path) and a lone one.
ADAM_SEGMENT_LAYOUT = [(5, 300, 7), (300, 301, 1), (301, 1200, 3), (1210, 1818, 12)]


def _adam_segments(n_steps_offset: int, lrs: tuple[float, ...] = (1e-2, 3e-3, 2e-2, 5e-3)):
    return [adam.AdamSegment(a, b, t + n_steps_offset, lr)
            for (a, b, t), lr in zip(ADAM_SEGMENT_LAYOUT, lrs, strict=True)]


@pytest.mark.parametrize("cfg", list(ADAM_CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("impl", [
    pytest.param("torch", id="torch"),
    pytest.param("cpu", marks=_SKIP_INTERP, id="interp"),
    pytest.param("cuda", marks=[pytest.mark.gpu, _SKIP_GPU], id="cuda"),
])
def test_multirate_adam_matches_adam_per_segment(impl: str, dtype: torch.dtype, cfg: str) -> None:
    """One multirate_adam call over segments at different steps and lrs = adam_torch on each
    segment alone (today's per-partition path); elements outside the segments stay put."""
    n, device = 1823, ("cpu" if impl == "torch" else impl)
    fn = adam.multirate_adam_torch if impl == "torch" else adam.multirate_adam_triton
    kw, decoupled = ADAM_CONFIGS[cfg]
    theta = _randn(n, 0, dtype, device)
    m0, v0 = _randn(n, 1, device=device) * 0.1, _randn(n, 2, device=device).square() * 0.01
    grads = [_randn(n, 3 + s, dtype, device) for s in range(2)]
    got, m, v = theta.clone(), m0.clone(), v0.clone()
    want, wm, wv = theta.clone(), m0.clone(), v0.clone()
    for step, g in enumerate(grads):
        segs = _adam_segments(step)
        fn(got, g, m, v, segs, decoupled_weight_decay=decoupled, **kw)
        for s in segs:
            sl = slice(s.start, s.stop)
            adam.adam_torch(want[sl], g[sl], wm[sl], wv[sl], step=s.step, lr=s.lr,
                            decoupled_weight_decay=decoupled, **kw)
    _close(got, want, _tol(dtype), "θ", scale=theta)
    _close(m, wm, _state_tol(dtype), "m")
    _close(v, wv, _state_tol(dtype), "v")
    outside = torch.ones(n, dtype=torch.bool, device=device)
    for a, b, _ in ADAM_SEGMENT_LAYOUT:
        outside[a:b] = False
    assert torch.equal(got[outside], theta[outside]) and torch.equal(m[outside], m0[outside])
    assert torch.equal(v[outside], v0[outside])


def test_multirate_adam_rejects_bad_segments() -> None:
    z = torch.zeros(10)
    with pytest.raises(ValueError, match="overlaps"):
        adam.multirate_adam_torch(z, z, z.clone(), z.clone(), [adam.AdamSegment(0, 6, 1, 0.1),
                                                              adam.AdamSegment(5, 10, 1, 0.1)])
    with pytest.raises(ValueError, match="step counts from 1"):
        adam.multirate_adam_torch(z, z, z.clone(), z.clone(), [adam.AdamSegment(0, 6, 0, 0.1)])


def _three_partitions(device: str = "cpu") -> tuple[nn.Module, dict[str, list[torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(13, 33), nn.Tanh(), nn.Linear(33, 17), nn.Tanh(),
                          nn.Linear(17, 5)).to(device)
    layers = [model[0], model[2], model[4]]
    return model, {name: list(layer.parameters()) for name, layer in zip("abc", layers, strict=True)}


def _loss_of(model: nn.Module, step: int, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 13, generator=gen).to(device)
    return model(x).square().mean()


# partition → its rate: a every step, b every 2nd, c every 3rd (so different step counts)
ADAM_RATES = {"a": 1, "b": 2, "c": 3}


@pytest.mark.parametrize("rule", ["adam", "adamw"])
@pytest.mark.parametrize("kernel", [
    pytest.param("torch", id="torch"),
    pytest.param("triton", marks=_SKIP_INTERP, id="interp"),
])
def test_fused_adam_one_call_matches_torch_optim_per_partition(kernel: str, rule: str) -> None:
    """FusedAdam over three partitions at rates 1, 2, 3 (their step counts differ), one
    multirate_adam call per step, against one torch.optim.Adam/AdamW per partition."""
    from mrc.runtime.fused import FusedAdam

    wd, lrs = 1e-2, {"a": 1e-2, "b": 2e-2, "c": 3e-2}
    fused_model, fused_parts = _three_partitions()
    ref_model, ref_parts = _three_partitions()
    opt = FusedAdam({n: (ps, lrs[n]) for n, ps in fused_parts.items()}, betas=(0.9, 0.99),
                    eps=1e-8, weight_decay=wd, decoupled=rule == "adamw", kernel=kernel)
    cls = torch.optim.AdamW if rule == "adamw" else torch.optim.Adam
    refs = {n: cls(ps, lr=lrs[n], betas=(0.9, 0.99), eps=1e-8, weight_decay=wd, foreach=False)
            for n, ps in ref_parts.items()}
    calls = []
    run = opt._run
    opt._run = lambda *a, **k: (calls.append(len(a[4])), run(*a, **k))[1]
    for step in range(6):
        updating = tuple(n for n, k in ADAM_RATES.items() if step % k == 0)
        opt.zero_spans(updating)
        _loss_of(fused_model, step, "cpu").backward()
        opt.step_partitions(updating, ())
        ref_model.zero_grad()
        _loss_of(ref_model, step, "cpu").backward()
        for n in updating:
            refs[n].step()
    assert calls == [3, 1, 2, 2, 2, 1], "one call per step, one segment per updating partition"
    assert opt.steps == {"a": 6, "b": 3, "c": 2}
    for (name, a), b in zip(fused_model.named_parameters(), ref_model.parameters(), strict=True):
        _close(a, b, TOL[torch.float32], name)


def _fused_sgd(parts: dict[str, list[torch.Tensor]], kernel: str):
    from mrc.runtime.fused import FusedSGD

    return FusedSGD({n: (ps, 0.1) for n, ps in parts.items()}, momentum=0.9, dampening=0.1,
                    weight_decay=1e-2, nesterov=False, kernel=kernel)


def _fused_adam(parts: dict[str, list[torch.Tensor]], kernel: str):
    from mrc.runtime.fused import FusedAdam

    return FusedAdam({n: (ps, 1e-2) for n, ps in parts.items()}, betas=(0.9, 0.99), eps=1e-8,
                     weight_decay=1e-2, decoupled=True, kernel=kernel)


@pytest.mark.parametrize("make", [_fused_sgd, _fused_adam], ids=["sgd", "adam"])
def test_fused_reset_state_forgets_everything(make) -> None:
    """After reset_state() a fused rule continues exactly as a freshly built one from the same
    parameters (momentum / moments zero, FIRST updates, step counts from 1)."""
    model, parts = _three_partitions()
    opt = make(parts, "torch")
    for step in range(3):
        updating = tuple(n for n, k in ADAM_RATES.items() if step % k == 0)
        opt.zero_spans(updating)
        _loss_of(model, step, "cpu").backward()
        opt.step_partitions(updating, ())
    opt.reset_state()
    assert not any(v.any() for k, v in opt.state_dict().items() if torch.is_tensor(v))
    fresh_model, fresh_parts = _three_partitions()
    fresh_model.load_state_dict(model.state_dict())
    fresh = make(fresh_parts, "torch")
    assert opt.state_dict().keys() == fresh.state_dict().keys()
    for k in opt.state_dict():
        a, b = opt.state_dict()[k], fresh.state_dict()[k]
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b, k
    for step in range(3, 6):
        updating = tuple(n for n, k in ADAM_RATES.items() if step % k == 0)
        for o, mdl in ((opt, model), (fresh, fresh_model)):
            o.zero_spans(updating)
            _loss_of(mdl, step, "cpu").backward()
            o.step_partitions(updating, ())
    for a, b in zip(model.parameters(), fresh_model.parameters(), strict=True):
        assert torch.equal(a, b)


# ============================================================================ random subset


def test_subset_mask_is_reproducible_and_exact() -> None:
    segments = [(0, 100), (112, 7), (128, 1823)]
    numel = 1952
    a = random_subset_mask(numel, 0.25, seed=7, segments=segments)
    b = random_subset_mask(numel, 0.25, seed=7, segments=segments)
    c = random_subset_mask(numel, 0.25, seed=8, segments=segments)
    assert a.dtype == torch.bool and a.shape == (numel,)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for off, size in segments:
        assert int(a[off:off + size].sum()) == round(0.25 * size)
    assert not a[100:112].any() and not a[119:128].any(), "padding must never be chosen"
    g = random_subset_mask(numel, 0.25, seed=7, segments=segments, per_tensor=False)
    assert int(g.sum()) == round(0.25 * (100 + 7 + 1823))
    assert not g[100:112].any() and not g[119:128].any()
    assert int(random_subset_mask(10, 0.0, seed=1).sum()) == 0
    assert bool(random_subset_mask(10, 1.0, seed=1).all())
    with pytest.raises(ValueError, match="fraction"):
        random_subset_mask(10, 1.5, seed=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
def test_subset_zero_restore_round_trip_torch(dtype: torch.dtype) -> None:
    n = 1823
    theta = _randn(n, 0, dtype)
    mask = random_subset_mask(n, 0.4, seed=1)
    work, saved = theta.clone(), torch.empty_like(theta)
    subset.subset_zero_torch(work, mask, saved)
    assert torch.all(work[mask] == 0) and torch.equal(work[~mask], theta[~mask])
    assert torch.equal(saved, theta)
    work[~mask] += 1  # the fast steps move the rest
    subset.subset_restore_torch(work, mask, saved)
    assert torch.equal(work[mask], theta[mask])
    assert torch.equal(work[~mask], theta[~mask] + 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize(("device", "n"), TRITON_CASES)
def test_subset_triton_matches_torch_exactly(device: str, n: int, dtype: torch.dtype) -> None:
    theta = _randn(n, 0, dtype, device)
    mask = random_subset_mask(n, 0.3, seed=5, device=device)
    outs = []
    for zero, restore in ((subset.subset_zero_triton, subset.subset_restore_triton),
                          (subset.subset_zero_torch, subset.subset_restore_torch)):
        work = theta.clone()
        saved = torch.full_like(theta, float("nan"))  # poisoned: the zero pass must fill it
        zero(work, mask, saved)
        zeroed = work.clone()
        work.mul_(2)  # stand-in for the fast steps
        restore(work, mask, saved)
        outs.append((zeroed, saved, work))
    for got, want in zip(outs[0], outs[1], strict=True):
        assert torch.equal(got, want)  # pure data movement: exact


def test_subset_masks_keep_the_runtime_draw() -> None:
    """`random_subset_mask` is the runtime's draw (`draw_masks`): one randperm per tensor, drawn
    even where the count rounds to 0, so the later tensors' subsets do not shift."""
    from mrc.techniques.random_subsets.integrator import draw_masks

    shapes = [torch.Size([2]), torch.Size([4, 3]), torch.Size([50]), torch.Size([2, 1]),
              torch.Size([0]), torch.Size([31])]
    segments, off = [], 0
    for s in shapes:
        segments.append((off, s.numel()))
        off += s.numel()
    for per in ("tensor", "global"):
        masks = draw_masks(shapes, 0.2, per, 123, torch.device("cpu"))
        assert [m.shape for m in masks] == shapes
        flat = random_subset_mask(off, 0.2, 123, segments=segments,
                                         per_tensor=per == "tensor")
        assert torch.equal(torch.cat([m.reshape(-1) for m in masks]), flat)
    # the stream itself, written out: one randperm per tensor in order
    gen = torch.Generator().manual_seed(123)
    want = []
    for s in shapes:
        m = torch.zeros(s.numel(), dtype=torch.bool)
        m[torch.randperm(s.numel(), generator=gen)[:round(0.2 * s.numel())]] = True
        want.append(m)
    got = draw_masks(shapes, 0.2, "tensor", 123, torch.device("cpu"))
    assert all(torch.equal(g.reshape(-1), w) for g, w in zip(got, want, strict=True))
    assert not got[0].any() and int(got[2].sum()) == 10  # 2 → 0 chosen, yet 50 → 10 follows


SUBSET_SHAPES = [(33, 13), (33,), (7, 33), (7,), (5, 3, 3, 3), (1,)]  # a small model, 836 values
SUBSET_CONFIGS = {
    "heavy-ball": {"momentum": 0.9, "weight_decay": 1e-2},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "dampening-global": {"momentum": 0.8, "dampening": 0.1, "per": "global"},
    "plain": {"momentum": 0.0, "weight_decay": 1e-2},
}


def _subset_run(kernel: str, cfg: dict, device: str, *, steps: int = 8,
                resume_from: dict | None = None, reset_at: int | None = None):
    """Drive a RandomSubsetSGD as the plan does: at an interval's start restore, take the
    gradient at the full weights, step, then draw the next subset and hold it at zero."""
    from mrc.techniques.random_subsets.integrator import RandomSubsetSGD

    cfg = dict(cfg)
    per = cfg.pop("per", "tensor")
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(device) for s in SUBSET_SHAPES]
    targets = [torch.randn(s, generator=gen).to(device) for s in SUBSET_SHAPES]
    every = 3
    opt = RandomSubsetSGD(params, lr=0.05, seed=4, salt="subset", kernel=kernel, **cfg)
    start_t = 0
    if resume_from is not None:
        with torch.no_grad():
            for p, saved in zip(params, resume_from["params"], strict=True):
                p.copy_(saved)
        opt.load_state_dict(resume_from["opt"])
        start_t = resume_from["t"]
    snapshot = None
    for t in range(start_t, steps):
        if t == reset_at:
            opt.reset_state()
        if t % every == 0:
            opt.start()
        for p, target in zip(params, targets, strict=True):
            p.grad = 2 * (p - target) + 0.1 * torch.sin(3 * p)  # a smooth, non-linear gradient
        opt.step()
        if t % every == 0:
            opt.resample(0.3, per, every)
        if t == 4:  # mid-interval checkpoint
            snapshot = {"params": [p.detach().clone() for p in params], "opt": opt.state_dict(), "t": t + 1}
    return params, opt, snapshot


@pytest.mark.parametrize("cfg", list(SUBSET_CONFIGS))
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_random_subset_sgd_triton_matches_torch(device: str, cfg: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """RandomSubsetSGD(kernel="triton") against kernel="torch" on a small model's tensors:
    the same θ, momentum, started elements, subsets and held-out values, through intervals,
    a mid-interval checkpoint loaded across kernels, and `restored()` / `finish()`."""
    conf = SUBSET_CONFIGS[cfg]
    want, want_opt, snap = _subset_run("torch", conf, device)
    calls = {"sgd": 0, "zero": 0, "restore": 0}

    def counted(name: str, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(sgd, "sgd_triton", counted("sgd", sgd.sgd_triton))
    monkeypatch.setattr(subset, "subset_zero_triton", counted("zero", subset.subset_zero_triton))
    monkeypatch.setattr(subset, "subset_restore_triton",
                        counted("restore", subset.subset_restore_triton))
    got, got_opt, got_snap = _subset_run("triton", conf, device)
    n = len(SUBSET_SHAPES)
    # 8 steps: one launch per tensor, two on the starts at t = 3 and 6 (t = 0 has no subset)
    assert calls == {"sgd": n * (8 + 2), "zero": n * 3, "restore": n * 2}, calls
    tol = TOL[torch.float32]
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        _close(a, b, tol, f"θ[{i}]")
        _close(got_opt.bufs[i], want_opt.bufs[i], tol, f"momentum[{i}]")
        assert torch.equal(got_opt.seen[i], want_opt.seen[i])
        assert torch.equal(got_opt.masks[i], want_opt.masks[i])
        assert torch.all(a[got_opt.masks[i]] == 0), "the subset is held at zero"
    a_state, b_state = got_opt.state_dict(), want_opt.state_dict()
    assert a_state.keys() == b_state.keys()
    for x, y in zip(a_state["stash"], b_state["stash"], strict=True):
        _close(x, y, tol, "held-out values")
    with got_opt.restored(), want_opt.restored():
        for a, b in zip(got, want, strict=True):
            _close(a, b, tol, "restored θ")
    assert all(torch.all(a[m] == 0) for a, m in zip(got, got_opt.masks, strict=True))
    # a checkpoint of the torch run resumes on the Triton path (and the other way round)
    resumed, _, _ = _subset_run("triton", conf, device, resume_from=snap)
    back, _, _ = _subset_run("torch", conf, device, resume_from=got_snap)
    for a, b, c in zip(resumed, back, want, strict=True):
        _close(a, c, tol, "resumed on triton")
        _close(b, c, tol, "resumed on torch")
    got_opt.finish()
    want_opt.finish()
    for a, b in zip(got, want, strict=True):
        _close(a, b, tol, "θ after finish")


@pytest.mark.parametrize("kernel", [
    pytest.param("torch", id="torch"),
    pytest.param("triton", marks=_SKIP_INTERP, id="interp"),
])
def test_random_subset_sgd_reset_state(kernel: str) -> None:
    """`reset_state()` forgets the momentum and which elements started it, but keeps the
    subset, its held-out values and the step count; a reset mid-interval followed by a
    resample (started elements = an old complement) still agrees across kernels."""
    # with dampening, so a first update (p = d) differs from a later one from p = 0
    conf = {"momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2}
    params, opt, _ = _subset_run(kernel, conf, "cpu", steps=5)
    masks = [m.clone() for m in opt.masks]
    stash = opt.state_dict()["stash"]
    opt.reset_state()
    assert all(torch.all(b == 0) for b in opt.bufs) and not any(s.any() for s in opt.seen)
    assert opt.drawn == 2 and all(torch.equal(a, b) for a, b in zip(opt.masks, masks, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(opt.state_dict()["stash"], stash, strict=True))
    # after a reset, the first update of an element takes p = d again (torch.optim's first step)
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    opt.step()  # t = 5: mid-interval, the complement moves
    for b, buf, m in zip(before, opt.bufs, opt.masks, strict=True):
        d = 1 + 1e-2 * b[~m]
        _close(buf[~m], d, TOL[torch.float32], "fresh momentum")
        assert torch.all(buf[m] == 0)
    # a reset before a mid-interval step, then a resample: both kernels still agree
    want, want_opt, _ = _subset_run("torch", conf, "cpu", steps=11, reset_at=4)
    got, got_opt, _ = _subset_run(kernel, conf, "cpu", steps=11, reset_at=4)
    for a, b in zip(got, want, strict=True):
        _close(a, b, TOL[torch.float32], "θ after a reset")
    for a, b in zip(got_opt.seen, want_opt.seen, strict=True):
        assert torch.equal(a, b)
    # started elements that are none of none / all / the complement (the Triton path falls
    # back to the torch update for those tensors): still the same numbers
    state = want_opt.state_dict()
    gen = torch.Generator().manual_seed(9)
    state["seen"] = [torch.rand(s.shape, generator=gen) < 0.5 for s in state["seen"]]
    base = [q.detach().clone() for q in want]
    for o, ps in ((want_opt, want), (got_opt, got)):
        o.load_state_dict(state)
        with torch.no_grad():
            for p, q in zip(ps, base, strict=True):
                p.copy_(q)
            for p in ps:
                p.grad = torch.cos(p)
        o.step()
        o.step()
    for a, b in zip(got, want, strict=True):
        _close(a, b, TOL[torch.float32], "θ from mixed started elements")


# ============================================================================ Langevin


def test_philox_randn_is_a_counter_based_standard_normal() -> None:
    offsets = torch.arange(2**20, dtype=torch.int64)
    r = langevin.philox_randn(1234, offsets)
    assert r.dtype == torch.float32
    # N(0, 1): the sample mean and variance of 2**20 draws lie within ~5 standard errors
    assert abs(float(r.mean())) < 5 / math.sqrt(r.numel())
    assert abs(float(r.var()) - 1.0) < 5 * math.sqrt(2 / r.numel())
    assert abs(float((r**4).mean()) - 3.0) < 0.05  # normal kurtosis, not just two moments
    # counter-based: element i of offset o is element i + 1 of offset o − 1
    shifted = langevin.philox_randn(1234, offsets[:100] + 1)
    assert torch.equal(shifted, r[1:101])
    assert not torch.equal(langevin.philox_randn(1235, offsets[:100]), r[:100])
    # 64-bit counters: the high word changes the stream
    high = langevin.philox_randn(1234, offsets[:100] + 2**32)
    assert not torch.equal(high, r[:100])


def test_philox_product_paths_agree() -> None:
    """The fast (wrapping int64) and safe (16-bit halves) 32×32-bit products are identical."""
    words = torch.randint(0, 2**32, (4096,), dtype=torch.int64,
                          generator=torch.Generator().manual_seed(0))
    words[:3] = torch.tensor([0, 1, 2**32 - 1])
    for a in (langevin._ROUND_A, langevin._ROUND_B):
        fast, safe = langevin._mulhilo_wrap(a, words), langevin._mulhilo_split(a, words)
        assert torch.equal(fast[0], safe[0]) and torch.equal(fast[1], safe[1])
        exact = [a * int(w) for w in words[:50]]
        assert [int(h) << 32 | int(lo) for h, lo in zip(safe[0][:50], safe[1][:50],
                                                         strict=True)] == exact


def test_langevin_o_torch_reproducible_and_variance() -> None:
    n, gamma, h, tau = 2**16, 2.0, 0.1, 0.5
    p0 = _randn(n, 0) * math.sqrt(tau)  # the stationary distribution N(0, τ)
    a, b, c = p0.clone(), p0.clone(), p0.clone()
    langevin.langevin_o_torch(a, gamma=gamma, h=h, tau=tau, seed=9, offset=100)
    langevin.langevin_o_torch(b, gamma=gamma, h=h, tau=tau, seed=9, offset=100)
    langevin.langevin_o_torch(c, gamma=gamma, h=h, tau=tau, seed=9, offset=101)
    assert torch.equal(a, b) and not torch.equal(a, c)
    decay, noise = langevin.o_step_coefficients(gamma, h, tau)
    assert noise**2 == pytest.approx((1 - math.exp(-2 * gamma * h)) * tau)
    # the O-step leaves N(0, τ) invariant: variance stays τ, correlation with p0 is e^{−γh}
    assert float(a.var()) == pytest.approx(tau, rel=5 * math.sqrt(2 / n))
    corr = float((a * p0).mean() / tau)
    assert corr == pytest.approx(decay, abs=5 / math.sqrt(n))
    # τ = 0: pure friction, exact
    d = p0.clone()
    langevin.langevin_o_torch(d, gamma=gamma, h=h, tau=0.0, seed=9)
    assert torch.equal(d, p0 * decay)


@pytest.mark.parametrize(("device", "n"), TRITON_CASES)
def test_langevin_o_triton_draws_the_same_numbers(device: str, n: int) -> None:
    tol = RANDN_TOL_CPU if device == "cpu" else RANDN_TOL_GPU
    p0 = _randn(n, 0, device=device)
    for seed, offset in ((0, 0), (2**40 + 17, 3), (5, 2**32 - 2)):
        got, want = p0.clone(), p0.clone()
        langevin.langevin_o_triton(got, gamma=1.0, h=0.5, tau=1.0, seed=seed, offset=offset)
        langevin.langevin_o_torch(want, gamma=1.0, h=0.5, tau=1.0, seed=seed, offset=offset)
        _close(got, want, tol, f"O-step, seed={seed} offset={offset}")
        again = p0.clone()
        langevin.langevin_o_triton(again, gamma=1.0, h=0.5, tau=1.0, seed=seed, offset=offset)
        assert torch.equal(again, got), "same seed and offset must give the same output"
    # τ = 0: no noise, both sides one float32 multiply: exact
    got, want = p0.clone(), p0.clone()
    langevin.langevin_o_triton(got, gamma=1.0, h=0.5, tau=0.0, seed=1)
    langevin.langevin_o_torch(want, gamma=1.0, h=0.5, tau=0.0, seed=1)
    assert torch.equal(got, want)


def test_baoab_samples_the_harmonic_oscillator() -> None:
    """BAOAB on L = ½|θ|² from θ = p = 0: after ~20 time units θ ~ N(0, τ) (BAOAB samples the
    harmonic configurational distribution exactly) and p ~ N(0, τ) up to O(h²)."""
    n, h, gamma, tau = 8192, 0.2, 1.0, 0.7
    theta, mom = torch.zeros(n), torch.zeros(n)
    grad = theta.clone()
    for step in range(100):
        grad = langevin.baoab_step_torch(theta, mom, grad, lambda: theta.clone(), h=h,
                                         gamma=gamma, tau=tau, seed=42, offset=step * n)
    se = math.sqrt(2 / n)
    assert float(theta.var()) == pytest.approx(tau, rel=6 * se)
    assert float(mom.var()) == pytest.approx(tau, rel=6 * se + h**2)
    assert abs(float(theta.mean())) < 6 * math.sqrt(tau / n)


def test_baoab_without_noise_is_the_deterministic_splitting() -> None:
    h, gamma = 0.1, 0.5
    theta, mom = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.0])
    th, p = theta.double().clone(), mom.double().clone()
    grad = langevin.baoab_step_torch(theta, mom, theta.clone(), lambda: 3 * theta, h=h,
                                     gamma=gamma, tau=0.0, seed=0)  # L = 1.5 θ² at the end
    p = p - h / 2 * th
    th = th + h / 2 * p
    p = p * math.exp(-gamma * h)
    th = th + h / 2 * p
    p = p - h / 2 * (3 * th)
    _close(theta, th, TOL[torch.float32], "θ")
    _close(mom, p, TOL[torch.float32], "p")
    _close(grad, 3 * th, TOL[torch.float32], "returned gradient")


def _langevin_params(device: str = "cpu") -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(device))
            for s in ((33, 13), (33,), (7, 33), (1,))]


def _langevin_steps(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                    steps: range) -> None:
    for _ in steps:
        for p in params:
            p.grad = 2 * p.detach() + 0.1 * torch.sin(3 * p.detach())  # a smooth gradient
        opt.step()


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_langevin_triton_at_zero_temperature_is_the_torch_path(device: str) -> None:
    """τ = 0: no random numbers, so both kernels take the same deterministic BAOAB steps."""
    from mrc.optim.langevin import Langevin

    results = []
    for kernel in ("torch", "triton"):
        params = _langevin_params(device)
        opt = Langevin(params, lr=0.1, gamma=1.5, tau=0.0, weight_decay=1e-2, kernel=kernel)
        _langevin_steps(opt, params, range(4))
        results.append((params, [opt.state[p]["momentum"] for p in params]))
    (got, got_m), (want, want_m) = results
    for a, b, ma, mb in zip(got, want, got_m, want_m, strict=True):
        _close(a, b, TOL[torch.float32], "θ")
        _close(ma, mb, TOL[torch.float32], "momentum")


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_langevin_triton_o_step_mean_and_variance(device: str) -> None:
    """With zero gradient the step's O part is all that moves p: from p ~ N(0, τ) it must keep
    mean 0 and variance τ, with correlation e^{−γh} to the old p, and fresh noise every step."""
    from mrc.optim.langevin import Langevin

    n, h, gamma, tau = 2**14, 0.2, 2.0, 0.5
    p = torch.nn.Parameter(torch.zeros(n, device=device))
    opt = Langevin([p], lr=h, gamma=gamma, tau=tau, kernel="triton", seed=11)
    p0 = _randn(n, 1, device=device) * math.sqrt(tau)  # the stationary distribution N(0, τ)
    opt.state[p]["momentum"] = p0.clone()
    p.grad = torch.zeros_like(p)
    opt.step()
    m1 = opt.state[p]["momentum"].clone()
    se = 5 / math.sqrt(n)
    assert abs(float(m1.mean())) < se * math.sqrt(tau)
    assert float(m1.var()) == pytest.approx(tau, rel=5 * math.sqrt(2 / n))
    assert float((m1 * p0).mean() / tau) == pytest.approx(math.exp(-gamma * h), abs=se)
    assert opt.noise_offset == n
    opt.step()  # the next step draws new numbers: its noise is uncorrelated with the first's
    m2 = opt.state[p]["momentum"]
    decay = math.exp(-gamma * h)
    r1, r2 = m1 - decay * p0, m2 - decay * m1
    assert abs(float((r1 * r2).mean() / r1.var())) < se
    # from p = 0 one step gives p ~ N(0, (1 − e^{−2γh})τ)
    q = torch.nn.Parameter(torch.zeros(n, device=device))
    fresh = Langevin([q], lr=h, gamma=gamma, tau=tau, kernel="triton", seed=12)
    q.grad = torch.zeros_like(q)
    fresh.step()
    want = (1 - math.exp(-2 * gamma * h)) * tau
    assert float(fresh.state[q]["momentum"].var()) == pytest.approx(want, rel=5 * math.sqrt(2 / n))


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_langevin_triton_resumes_exactly(device: str) -> None:
    """Six steps in one go = three steps, a state_dict through torch.save, three more on a
    fresh integrator (the noise counter travels in the state_dict); the torch generator is
    neither used nor needed."""
    import io

    from mrc.optim.langevin import Langevin

    kw = {"lr": 0.1, "gamma": 1.0, "tau": 0.3, "kernel": "triton", "seed": 5}
    whole = _langevin_params(device)
    opt = Langevin(whole, **kw)
    _langevin_steps(opt, whole, range(6))

    first = _langevin_params(device)
    opt_a = Langevin(first, **kw)
    _langevin_steps(opt_a, first, range(3))
    blob = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "opt": opt_a.state_dict()}, blob)
    assert opt_a.state_dict()["noise"] == {"seed": 5, "offset": 3 * sum(p.numel() for p in first)}
    blob.seek(0)
    saved = torch.load(blob)
    torch.manual_seed(1234)  # a different torch generator state must not matter
    second = _langevin_params(device)
    with torch.no_grad():
        for p, q in zip(second, saved["params"], strict=True):
            p.copy_(q)
    opt_b = Langevin(second, **{**kw, "seed": 0})  # the seed comes back from the state
    opt_b.load_state_dict(saved["opt"])
    _langevin_steps(opt_b, second, range(3, 6))
    for a, b in zip(whole, second, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["momentum"], opt_b.state[b]["momentum"])
    # two tensors of one step draw different numbers (distinct counters)
    assert opt.noise_offset == 6 * sum(p.numel() for p in whole)


@pytest.mark.parametrize("kernel", [
    pytest.param("torch", id="torch"),
    pytest.param("triton", marks=_SKIP_INTERP, id="interp"),
])
def test_langevin_reset_state(kernel: str) -> None:
    """reset_state() forgets the momentum: the next step is a first step (p from 0, half kick)
    as on a fresh integrator; the Triton path's noise counter goes on."""
    from mrc.optim.langevin import Langevin

    params = _langevin_params()
    opt = Langevin(params, lr=0.1, gamma=1.0, tau=0.0, kernel=kernel)
    _langevin_steps(opt, params, range(3))
    offset = opt.noise_offset
    opt.reset_state()
    assert not opt.state
    fresh_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fresh = Langevin(fresh_params, lr=0.1, gamma=1.0, tau=0.0, kernel=kernel)
    _langevin_steps(opt, params, range(2))
    _langevin_steps(fresh, fresh_params, range(2))
    for a, b in zip(params, fresh_params, strict=True):
        assert torch.equal(a, b)
    assert opt.noise_offset == offset + fresh.noise_offset


def test_langevin_rejects_bad_kernel() -> None:
    from mrc.optim.langevin import Langevin

    with pytest.raises(ValueError, match="kernel"):
        Langevin([torch.nn.Parameter(torch.zeros(3))], lr=0.1, kernel="cuda")
    with pytest.raises(TypeError, match="float32"):
        Langevin([torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))], lr=0.1,
                 kernel="triton")


# ============================================================================ configs


def test_interpreter_configs_are_single() -> None:
    if not configs.HAS_TRITON:
        pytest.skip("triton not installed")
    assert len(sgd._sgd_kernel.configs) == (1 if INTERPRETED else len(configs.GPU_ELEMENTWISE))


def _run_python(code: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, timeout=timeout,
                          capture_output=True, text=True)


def test_kernel_modules_import_without_triton() -> None:
    """Off Linux there is no Triton: the torch paths still work, the Triton ones say why."""
    code = """
        import sys
        sys.modules["triton"] = None  # make `import triton` fail
        import torch
        from mrc.kernels import sgd, adam, subset, langevin
        from mrc.kernels.configs import TritonUnavailable
        theta, g, p = torch.ones(5), torch.ones(5), torch.zeros(5)
        sgd.sgd_torch(theta, g, p, lr=0.5, momentum=0.9, first_step=True)
        assert torch.allclose(theta, torch.full((5,), 0.5)), theta
        try:
            sgd.sgd_triton(theta, g, p, lr=0.5, momentum=0.9)
        except TritonUnavailable:
            print("ok")
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = _run_python(code, env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


_AOT = """
    import re
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from mrc.kernels import adam, langevin, sgd, subset

    def compile_sm90(kernel, sig, consts, aligned):
        names = kernel.fn.arg_names
        attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in aligned}
        sig = {a: sig.get(a, "constexpr") for a in names}
        src = ASTSource(fn=kernel.fn, signature=sig, constexprs=consts, attrs=attrs)
        ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                             options={"num_warps": 8}).asm["ptx"]
        return set(re.findall(r"(?:ld|st)\\.global\\.v4", ptx))

    f32, B = "*fp32", 2048
    for dt in ("*fp32", "*bf16"):
        sig = {"param_ptr": dt, "grad_ptr": dt, "buf_ptr": f32, "mask_ptr": "*u8", "n": "i32",
               "lr": "fp32", "momentum": "fp32", "dampening": "fp32", "weight_decay": "fp32"}
        for mask in (False, True):
            consts = {"HAS_MOMENTUM": True, "FIRST": False, "NESTEROV": True, "MAXIMIZE": False,
                      "HAS_WD": True, "HAS_MASK": mask, "BLOCK": B}
            if not mask:
                consts["mask_ptr"] = None
            v = compile_sm90(sgd._sgd_kernel, sig, consts,
                             ["param_ptr", "grad_ptr", "buf_ptr", "n"] + ["mask_ptr"] * mask)
            assert v == {"ld.global.v4", "st.global.v4"}, ("sgd", dt, mask, v)
        sig = {"param_ptr": dt, "grad_ptr": dt, "buf_ptr": f32, "seg_int_ptr": "*i64",
               "seg_f32_ptr": "*fp32", "n": "i32", "lr": "fp32", "dampening": "fp32"}
        for nesterov in (False, True):
            v = compile_sm90(sgd._multirate_sgd_kernel, sig,
                             {"NSEG": 3, "NESTEROV": nesterov, "ALIGNED": True, "BLOCK": B},
                             ["param_ptr", "grad_ptr", "buf_ptr", "seg_int_ptr", "seg_f32_ptr", "n"])
            assert v == {"ld.global.v4", "st.global.v4"}, ("multirate", dt, v)
        sig = {"param_ptr": dt, "grad_ptr": dt, "m_ptr": f32, "v_ptr": f32, "n": "i32",
               **{k: "fp32" for k in ("lr", "beta1", "beta2", "eps", "weight_decay",
                                      "step_size", "bc2_sqrt")}}
        v = compile_sm90(adam._adam_kernel, sig,
                         {"DECOUPLED": True, "HAS_WD": True, "MAXIMIZE": False, "BLOCK": B},
                         ["param_ptr", "grad_ptr", "m_ptr", "v_ptr", "n"])
        assert v == {"ld.global.v4", "st.global.v4"}, ("adam", dt, v)
        sig = {"param_ptr": dt, "grad_ptr": dt, "m_ptr": f32, "v_ptr": f32,
               "seg_int_ptr": "*i64", "seg_f32_ptr": "*fp32", "n": "i32",
               **{k: "fp32" for k in ("beta1", "beta2", "eps", "weight_decay")}}
        v = compile_sm90(adam._multirate_adam_kernel, sig,
                         {"NSEG": 3, "DECOUPLED": True, "HAS_WD": True, "MAXIMIZE": False,
                          "ALIGNED": True, "BLOCK": B},
                         ["param_ptr", "grad_ptr", "m_ptr", "v_ptr", "seg_int_ptr", "seg_f32_ptr",
                          "n"])
        assert v == {"ld.global.v4", "st.global.v4"}, ("multirate adam", dt, v)
        for restore in (False, True):
            v = compile_sm90(subset._subset_kernel,
                             {"param_ptr": dt, "mask_ptr": "*u8", "saved_ptr": dt, "n": "i32"},
                             {"RESTORE": restore, "BLOCK": B},
                             ["param_ptr", "mask_ptr", "saved_ptr", "n"])
            assert v == {"ld.global.v4", "st.global.v4"}, ("subset", dt, v)
    v = compile_sm90(langevin._langevin_o_kernel,
                     {"mom_ptr": f32, "n": "i32", "decay": "fp32", "noise": "fp32",
                      "seed": "i64", "offset": "i64"}, {"BLOCK": B}, ["mom_ptr", "n"])
    assert v == {"ld.global.v4", "st.global.v4"}, ("langevin", v)
    print("ok")
"""


@pytest.mark.skipif(not configs.HAS_TRITON, reason="triton not installed")
def test_kernels_compile_for_sm90_with_vector_accesses(tmp_path) -> None:
    """Compile every kernel ahead of time for the H100 (sm_90) — no GPU needed — and check the
    PTX uses 16-byte vector loads and stores (the interpreter cannot catch compile errors)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    out = _run_python(_AOT, env, timeout=300)
    if out.returncode != 0 and "ptxas" in out.stderr and "not found" in out.stderr:
        pytest.skip("this triton build has no ptxas")
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-4000:]


@pytest.mark.skipif(INTERPRETED or _CUDA or not configs.HAS_TRITON,
                    reason="the interpreter tests run in this process")
def test_interpreter_tests_in_a_subprocess() -> None:
    """triton was imported before this module could set TRITON_INTERPRET: run the interpreter
    cases of this file in a fresh process where it is set first."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          __file__, "-k", "interp"], env=env, timeout=600,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
