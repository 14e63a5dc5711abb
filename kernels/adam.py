"""Adam and AdamW over flat buffers: a plain-torch reference (also the CPU path) and a Triton
kernel with the same semantics.

torch.optim.Adam / AdamW, for step t (counted from 1, passed in by the caller):

    g ← −g                                   when maximize
    Adam:  g ← g + wd·θ                      (L2 penalty in the gradient)
    AdamW: θ ← θ·(1 − lr·wd)                 (decoupled weight decay, before the step)
    m ← m + (1 − β₁)(g − m)                  (torch's lerp)
    v ← β₂ v + (1 − β₂) g²
    θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)

The bias corrections are host scalars computed from t, so the kernel is one pass: θ, g, m, v
read, θ, m, v written (24 bytes per float32 element). m and v are float32 for any parameter
dtype; only θ is rounded back. AMSGrad is not supported.

`multirate_adam_*` is the same update over several segments of one flat buffer, each with its
own step count t and learning rate (the partitions of one rule, which take different numbers
of steps when they run at different rates), as ONE pass: a segment table like
`kernels.sgd.Segment`'s gives each segment's bounds, and its bias corrections are computed on
the host per call, exactly as `adam_*` computes them for that segment alone. Elements outside
the listed segments are not touched.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .configs import elementwise_autotune, require_triton, tl, triton
from .sgd import PARAM_DTYPES, _check_flat, _round_to_element, _segment_tile


@dataclass(frozen=True, slots=True)
class AdamSegment:
    """Elements `[start, stop)` of the flat buffers, at Adam step `step` (from 1) with `lr`."""

    start: int
    stop: int
    step: int
    lr: float


def _check(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
           exp_avg_sq: torch.Tensor, step: int, lr: float, beta1: float, beta2: float,
           eps: float) -> None:
    n = param.numel()
    _check_flat("param", param, n, param.device)
    if param.dtype not in PARAM_DTYPES:
        raise TypeError(f"param dtype {param.dtype} not supported (use one of {PARAM_DTYPES})")
    _check_flat("grad", grad, n, param.device)
    if grad.dtype != param.dtype:
        raise TypeError(f"grad is {grad.dtype}, param {param.dtype}")
    for name, t in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        _check_flat(name, t, n, param.device)
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, not {t.dtype}")
    if step < 1:
        raise ValueError(f"step counts from 1, got {step}")
    if lr < 0.0 or eps < 0.0 or not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"bad hyper-parameters lr={lr}, betas=({beta1}, {beta2}), eps={eps}")


def _scalars(step: int, lr: float, beta1: float, beta2: float) -> tuple[float, float]:
    """(lr / (1 − β₁ᵗ), √(1 − β₂ᵗ)): the bias corrections as torch computes them."""
    return lr / (1.0 - beta1**step), math.sqrt(1.0 - beta2**step)


def adam_torch(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
               exp_avg_sq: torch.Tensor, *, step: int, lr: float = 1e-3, beta1: float = 0.9,
               beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
               decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
    """One torch.optim.Adam step (AdamW with `decoupled_weight_decay`) over flat buffers."""
    _check(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps)
    step_size, bc2_sqrt = _scalars(step, lr, beta1, beta2)
    with torch.no_grad():
        theta = param if param.dtype == torch.float32 else param.float()
        g = grad.float()
        if maximize:
            g = -g
        if weight_decay != 0.0:
            if decoupled_weight_decay:
                theta.mul_(1.0 - lr * weight_decay)
            else:
                g = g.add(theta, alpha=weight_decay)
        exp_avg.lerp_(g, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().div_(bc2_sqrt).add_(eps)
        theta.addcdiv_(exp_avg, denom, value=-step_size)
        if theta is not param:
            param.copy_(theta)


def adamw_torch(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                exp_avg_sq: torch.Tensor, *, step: int, lr: float = 1e-3, beta1: float = 0.9,
                beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-2,
                maximize: bool = False) -> None:
    """One torch.optim.AdamW step over flat buffers (torch's defaults, wd = 0.01)."""
    adam_torch(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2,
               eps=eps, weight_decay=weight_decay, decoupled_weight_decay=True,
               maximize=maximize)


@triton.jit
def _adam_elements(param_ptr, grad_ptr, m_ptr, v_ptr, offs, live, lr, step_size, bc2_sqrt, beta1, beta2, eps,
                   weight_decay, HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr, MAXIMIZE: tl.constexpr):
    """One Adam/AdamW step of the elements `offs` (masked by `live`): the body both kernels share."""
    theta = tl.load(param_ptr + offs, mask=live, other=0.0).to(tl.float32)  # θ in float32
    g = tl.load(grad_ptr + offs, mask=live, other=0.0).to(tl.float32)  # g in float32
    m = tl.load(m_ptr + offs, mask=live, other=0.0)  # first moment
    v = tl.load(v_ptr + offs, mask=live, other=0.0)  # second moment
    if MAXIMIZE:
        g = -g  # gradient ascent
    if HAS_WD:
        if DECOUPLED:
            theta = theta * (1.0 - lr * weight_decay)  # AdamW's decoupled decay
        else:
            g = g + weight_decay * theta  # Adam's L2 penalty
    m = m + (1.0 - beta1) * (g - m)  # m ← lerp(m, g, 1 − β₁)
    v = beta2 * v + (1.0 - beta2) * (g * g)  # v ← β₂v + (1 − β₂)g²
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps  # IEEE sqrt and divide, as torch
    theta = theta - step_size * tl.div_rn(m, denom)  # the bias-corrected step
    tl.store(m_ptr + offs, m, mask=live)  # moments stay float32
    tl.store(v_ptr + offs, v, mask=live)
    tl.store(param_ptr + offs, _round_to_element(theta, param_ptr), mask=live)  # round back


@elementwise_autotune(restore=["param_ptr", "m_ptr", "v_ptr"])
@triton.jit
def _adam_kernel(
    param_ptr,  # *θ, float32/bfloat16/float16, updated in place
    grad_ptr,  # *g, the parameter's dtype
    m_ptr,  # *m, float32 first moment
    v_ptr,  # *v, float32 second moment
    n,  # number of elements
    lr,  # learning rate (for the decoupled decay)
    beta1,  # β₁
    beta2,  # β₂
    eps,  # ε
    weight_decay,  # wd
    step_size,  # lr / (1 − β₁ᵗ)
    bc2_sqrt,  # √(1 − β₂ᵗ)
    DECOUPLED: tl.constexpr,  # AdamW: decay θ directly instead of adding wd·θ to g
    HAS_WD: tl.constexpr,  # weight_decay != 0
    MAXIMIZE: tl.constexpr,  # ascend instead of descend
    BLOCK: tl.constexpr,  # elements per program
):
    pid = tl.program_id(0).to(tl.int64)  # 64-bit so buffers over 2**31 elements index right
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # this program's elements
    live = offs < n  # the last block is ragged
    _adam_elements(param_ptr, grad_ptr, m_ptr, v_ptr, offs, live, lr, step_size, bc2_sqrt, beta1, beta2, eps,
                   weight_decay, HAS_WD, DECOUPLED, MAXIMIZE)


def adam_triton(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                exp_avg_sq: torch.Tensor, *, step: int, lr: float = 1e-3, beta1: float = 0.9,
                beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
    """`adam_torch` as one Triton launch over the flat buffers."""
    require_triton()
    _check(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps)
    n = param.numel()
    if n == 0:
        return
    step_size, bc2_sqrt = _scalars(step, lr, beta1, beta2)
    grid = lambda META: (triton.cdiv(n, META["BLOCK"]),)  # noqa: E731
    _adam_kernel[grid](
        param, grad, exp_avg, exp_avg_sq, n, float(lr), float(beta1), float(beta2),
        float(eps), float(weight_decay), float(step_size), float(bc2_sqrt),
        DECOUPLED=bool(decoupled_weight_decay), HAS_WD=weight_decay != 0.0,
        MAXIMIZE=bool(maximize),
    )


def adamw_triton(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                 exp_avg_sq: torch.Tensor, *, step: int, lr: float = 1e-3, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-2,
                 maximize: bool = False) -> None:
    """`adamw_torch` as one Triton launch over the flat buffers."""
    adam_triton(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2,
                eps=eps, weight_decay=weight_decay, decoupled_weight_decay=True,
                maximize=maximize)


# --------------------------------------------------------------------------- several segments


def _check_adam_segments(segments: Sequence[AdamSegment], n: int) -> list[AdamSegment]:
    ordered = sorted(segments, key=lambda s: s.start)
    prev = 0
    for s in ordered:
        if not 0 <= s.start <= s.stop <= n:
            raise ValueError(f"segment [{s.start}, {s.stop}) lies outside [0, {n})")
        if s.start < prev:
            raise ValueError(f"segment [{s.start}, {s.stop}) overlaps the one before it")
        if s.step < 1:
            raise ValueError(f"step counts from 1, got {s.step} for [{s.start}, {s.stop})")
        if s.lr < 0.0:
            raise ValueError(f"lr must be >= 0, not {s.lr}")
        prev = s.stop
    return [s for s in ordered if s.stop > s.start]


def _runs(segments: list[AdamSegment]) -> list[list[AdamSegment]]:
    """Maximal runs of segments that follow each other without a gap."""
    runs: list[list[AdamSegment]] = []
    for s in segments:
        if runs and runs[-1][-1].stop == s.start:
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def multirate_adam_torch(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                         exp_avg_sq: torch.Tensor, segments: Sequence[AdamSegment], *,
                         beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                         weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                         maximize: bool = False) -> None:
    """`adam_torch` on every segment with its own step and lr, as one vectorised pass per run of
    adjacent segments (per-element bias corrections); elements outside the segments stay."""
    _check(param, grad, exp_avg, exp_avg_sq, 1, 0.0, beta1, beta2, eps)
    live = _check_adam_segments(segments, param.numel())
    for run in _runs(live):
        sl = slice(run[0].start, run[-1].stop)
        if len(run) == 1:  # one segment: the scalar path, exactly `adam_torch`
            s = run[0]
            adam_torch(param[sl], grad[sl], exp_avg[sl], exp_avg_sq[sl], step=s.step, lr=s.lr,
                       beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                       decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
            continue
        _adam_run_torch(param[sl], grad[sl], exp_avg[sl], exp_avg_sq[sl], run, beta1, beta2, eps,
                        weight_decay, decoupled_weight_decay, maximize)


def _adam_run_torch(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                    exp_avg_sq: torch.Tensor, run: list[AdamSegment], beta1: float, beta2: float,
                    eps: float, weight_decay: float, decoupled: bool, maximize: bool) -> None:
    """`adam_torch`'s operations over adjacent segments, the per-segment scalars expanded to
    per-element float32 values (the same float32 numbers `adam_torch` uses as scalars)."""
    lengths = torch.tensor([s.stop - s.start for s in run], device=param.device)

    def per_element(values: list[float]) -> torch.Tensor:
        table = torch.tensor(values, dtype=torch.float32).to(param.device)
        return torch.repeat_interleave(table, lengths, output_size=param.numel())

    scalars = [_scalars(s.step, s.lr, beta1, beta2) for s in run]
    with torch.no_grad():
        theta = param if param.dtype == torch.float32 else param.float()
        g = grad.float()
        if maximize:
            g = -g
        if weight_decay != 0.0:
            if decoupled:
                theta.mul_(per_element([1.0 - s.lr * weight_decay for s in run]))
            else:
                g = g.add(theta, alpha=weight_decay)
        exp_avg.lerp_(g, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().div_(per_element([bc2 for _, bc2 in scalars])).add_(eps)
        # addcdiv(θ, m, denom, value=−step) computes θ + (−step·m)/denom
        theta.add_(per_element([-size for size, _ in scalars]).mul_(exp_avg).div_(denom))
        if theta is not param:
            param.copy_(theta)


@elementwise_autotune(restore=["param_ptr", "m_ptr", "v_ptr"])
@triton.jit
def _multirate_adam_kernel(
    param_ptr,  # *θ, float32/bfloat16/float16, updated in place
    grad_ptr,  # *g, the parameter's dtype
    m_ptr,  # *m, float32 first moment
    v_ptr,  # *v, float32 second moment
    seg_int_ptr,  # *int64 [2, NSEG]: start, stop of each segment
    seg_f32_ptr,  # *float32 [3, NSEG]: lr, lr / (1 − β₁ᵗ), √(1 − β₂ᵗ) of each segment
    n,  # elements covered by the segments (the autotune key)
    beta1,  # β₁
    beta2,  # β₂
    eps,  # ε
    weight_decay,  # wd
    NSEG: tl.constexpr,  # number of segments
    DECOUPLED: tl.constexpr,  # AdamW: decay θ directly instead of adding wd·θ to g
    HAS_WD: tl.constexpr,  # weight_decay != 0
    MAXIMIZE: tl.constexpr,  # ascend instead of descend
    ALIGNED: tl.constexpr,  # every start and stop is a multiple of 16 (FlatGroup layout)
    BLOCK: tl.constexpr,  # elements per program
):
    # Programs are numbered segment after segment, cdiv(len, BLOCK) per segment, so each
    # program lies inside one segment and reads its step's scalars once.
    start, stop, seg = _segment_tile(seg_int_ptr, NSEG, BLOCK)  # this program's tile of its segment
    lr = tl.load(seg_f32_ptr + seg)  # this segment's learning rate
    step_size = tl.load(seg_f32_ptr + NSEG + seg)  # lr / (1 − β₁ᵗ) at its step t
    bc2_sqrt = tl.load(seg_f32_ptr + 2 * NSEG + seg)  # √(1 − β₂ᵗ) at its step t
    if ALIGNED:
        start = tl.multiple_of(start, 16)  # lets the accesses below be 16-byte vectors
        stop = tl.multiple_of(stop, 16)  # so is the ragged end of the segment
    offs = start + tl.arange(0, BLOCK)  # this program's elements
    live = offs < stop  # ragged last tile of the segment
    _adam_elements(param_ptr, grad_ptr, m_ptr, v_ptr, offs, live, lr, step_size, bc2_sqrt, beta1, beta2, eps,
                   weight_decay, HAS_WD, DECOUPLED, MAXIMIZE)


@functools.lru_cache(maxsize=256)
def _bounds_table(bounds: tuple[tuple[int, int], ...], device: torch.device) -> torch.Tensor:
    """The device-side starts and stops of the segments, built once per layout and device."""
    ints = torch.tensor([[a for a, _ in bounds], [b for _, b in bounds]], dtype=torch.int64)
    return ints.reshape(-1).to(device)


def multirate_adam_triton(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                          exp_avg_sq: torch.Tensor, segments: Sequence[AdamSegment], *,
                          beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                          weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                          maximize: bool = False) -> None:
    """`multirate_adam_torch` as ONE Triton launch over every segment.

    The bounds table is cached per layout; the per-segment scalars (lr and the two bias
    corrections) change with the step counts and are copied to the device on every call
    (12 bytes per segment).
    """
    require_triton()
    _check(param, grad, exp_avg, exp_avg_sq, 1, 0.0, beta1, beta2, eps)
    live = _check_adam_segments(segments, param.numel())
    if not live:
        return
    ints = _bounds_table(tuple((s.start, s.stop) for s in live), param.device)
    scalars = [_scalars(s.step, s.lr, beta1, beta2) for s in live]
    floats = torch.tensor([[s.lr for s in live], [a for a, _ in scalars], [b for _, b in scalars]],
                          dtype=torch.float32).reshape(-1).to(param.device)
    lengths = [s.stop - s.start for s in live]
    aligned = all(s.start % 16 == 0 and s.stop % 16 == 0 for s in live)
    grid = lambda META: (sum(triton.cdiv(m, META["BLOCK"]) for m in lengths),)  # noqa: E731
    _multirate_adam_kernel[grid](
        param, grad, exp_avg, exp_avg_sq, ints, floats, sum(lengths), float(beta1),
        float(beta2), float(eps), float(weight_decay), NSEG=len(live),
        DECOUPLED=bool(decoupled_weight_decay), HAS_WD=weight_decay != 0.0,
        MAXIMIZE=bool(maximize), ALIGNED=aligned,
    )
