"""Underdamped Langevin dynamics for a partition: the O-step kernel and a BAOAB step.

The seed's partitioned Langevin integrator (multirate-training.md) evolves a partition by

    dθ = p dt,    dp = −∇L(θ) dt − γ p dt + √(2γτ) dW,

with friction γ and temperature τ (τ = 0: pure optimization, τ = 1: sampling). BAOAB splits a
step of size h into B (half kick), A (half drift), O (exact Ornstein–Uhlenbeck solve), A, B:

    B:  p ← p − (h/2) ∇L(θ)
    A:  θ ← θ + (h/2) p
    O:  p ← e^{−γh} p + √((1 − e^{−2γh}) τ) R,      R ~ N(0, I)
    A:  θ ← θ + (h/2) p
    B:  p ← p − (h/2) ∇L(θ)        (the gradient at the new θ, reused by the next step's B)

The O-step is the only part that is not a plain axpy, so it is the kernel here (`langevin_o_*`);
`baoab_step_torch` strings the five parts together over flat buffers.

Random numbers are counter-based: element i of a call with (seed, offset) uses the normal
variate of Triton's `tl.randn(seed, offset + i)` (Philox-4x32-10 keyed by the 64-bit seed,
counter = the 64-bit offset, Box–Muller). `philox_randn` re-implements that generator in torch
integer arithmetic, so the torch path draws the SAME numbers as the Triton kernel (up to the
last bits of log/cos/sqrt), on any device: a run is reproducible from (seed, offset) alone,
and a CPU run and a GPU run see the same noise. Advance `offset` by the buffer length after
each step (or derive the seed from the step) so steps draw fresh numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from .configs import elementwise_autotune, require_triton, tl, triton
from .sgd import _check_flat

_M32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85  # Philox-4x32 key increments (Weyl constants)
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57  # Philox-4x32 round multipliers
_ROUNDS = 10  # Triton's default number of Philox rounds
_INT_TO_UNIT = 4.6566127342e-10  # Triton's uint → [0, 1) scale, (2**23 − 1)/2**23 · 2**−31
_MAX_SEED = 2**63  # seeds and counters are non-negative 64-bit integers


def o_step_coefficients(gamma: float, h: float, tau: float) -> tuple[float, float]:
    """(e^{−γh}, √((1 − e^{−2γh}) τ)): the O-step's decay and noise scale."""
    if gamma < 0.0 or h < 0.0 or tau < 0.0:
        raise ValueError(f"gamma, h and tau must be >= 0 (got {gamma}, {h}, {tau})")
    decay = math.exp(-gamma * h)
    return decay, math.sqrt(-math.expm1(-2.0 * gamma * h) * tau)


def _mulhilo_split(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of a·b for a 32-bit constant a and 32-bit values b (in int64).

    b is split into 16-bit halves so no product exceeds 2**49 and int64 never overflows.
    """
    prod_hi = a * (b >> 16)  # a·b_hi < 2**48
    prod_lo = a * (b & 0xFFFF)  # a·b_lo < 2**48
    lo = (((prod_hi & 0xFFFF) << 16) + prod_lo) & _M32
    hi = (prod_hi + (prod_lo >> 16)) >> 16
    return hi, lo


def _mulhilo_wrap(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As `_mulhilo_split` with one 64-bit product, where int64 multiplication wraps mod 2**64
    (then the product's two 32-bit halves are exact): about 4 times fewer operations."""
    prod = b * a
    return (prod >> 32) & _M32, prod & _M32


@functools.cache
def _int64_wraps(device_type: str) -> bool:
    """Whether int64 multiplication on this device type wraps mod 2**64 (checked once)."""
    b = torch.tensor([0xFFFFFFFF, 0x87654321], dtype=torch.int64, device=device_type)
    want = [_mulhilo_split(_ROUND_A, b[i:i + 1]) for i in range(2)]
    got = _mulhilo_wrap(_ROUND_A, b)
    return all(int(got[0][i]) == int(want[i][0]) and int(got[1][i]) == int(want[i][1])
               for i in range(2))


def philox_randn(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """Standard normals equal to Triton's `tl.randn(seed, offsets)` (float32, offsets' shape).

    `offsets` are non-negative int64 counters. Integer arithmetic is exact (32×32-bit products
    through wrapping int64 products where the device wraps, else through 16-bit halves); the
    Box–Muller transform uses torch's float32 log/sqrt/cos, so values agree with a kernel to a
    few ulp.
    """
    if not 0 <= seed < _MAX_SEED:
        raise ValueError(f"seed must lie in [0, 2**63), not {seed}")
    offsets = offsets.to(torch.int64)
    c0, c1 = offsets & _M32, (offsets >> 32) & _M32  # the counter, low and high words
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _M32, (seed >> 32) & _M32  # the key
    mulhilo = _mulhilo_wrap if _int64_wraps(offsets.device.type) else _mulhilo_split
    for _ in range(_ROUNDS):
        hi_b, lo_b = mulhilo(_ROUND_B, c2)
        hi_a, lo_a = mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    u1, u2 = _uniform(c0), _uniform(c1)
    u1 = torch.clamp_min(u1, 1.0e-7)
    theta = torch.tensor(6.283185307179586, dtype=torch.float32) * u2
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(theta)


def _uniform(x: torch.Tensor) -> torch.Tensor:
    """Triton's uint_to_uniform_float for 32-bit words held in int64."""
    signed = torch.where(x >= 2**31, x - 2**32, x)  # bitcast to int32
    folded = torch.where(signed < 0, -signed - 1, signed)  # ~x for negatives
    return folded.to(torch.float32) * torch.tensor(_INT_TO_UNIT, dtype=torch.float32)


def _check(mom: torch.Tensor, seed: int, offset: int) -> None:
    _check_flat("momentum", mom, mom.numel(), mom.device)
    if mom.dtype != torch.float32:
        raise TypeError(f"the Langevin momentum must be float32, not {mom.dtype}")
    if not 0 <= seed < _MAX_SEED:
        raise ValueError(f"seed must lie in [0, 2**63), not {seed}")
    if not 0 <= offset or offset + mom.numel() >= _MAX_SEED:
        raise ValueError(f"offset {offset} leaves the 64-bit counter range")


def langevin_o_torch(mom: torch.Tensor, *, gamma: float, h: float, tau: float, seed: int,
                     offset: int = 0, chunk: int = 1 << 16) -> None:
    """O-step in place: p ← e^{−γh} p + √((1 − e^{−2γh}) τ) R, R_i = randn(seed, offset + i).

    The normals are drawn in chunks of `chunk` elements, so the ~300 integer operations per
    element of Philox run on cache-sized temporaries (about 50 ns per element on one CPU core).
    """
    _check(mom, seed, offset)
    decay, noise = o_step_coefficients(gamma, h, tau)
    with torch.no_grad():
        mom.mul_(decay)
        if noise == 0.0:
            return
        for start in range(0, mom.numel(), chunk):
            part = mom[start:start + chunk]
            counters = torch.arange(offset + start, offset + start + part.numel(),
                                    dtype=torch.int64, device=mom.device)
            part.add_(philox_randn(seed, counters), alpha=noise)


@elementwise_autotune(restore=["mom_ptr"])
@triton.jit(do_not_specialize=["seed", "offset"])
def _langevin_o_kernel(
    mom_ptr,  # *p, float32 momentum, updated in place
    n,  # number of elements
    decay,  # e^{−γh}
    noise,  # √((1 − e^{−2γh}) τ)
    seed,  # 64-bit Philox key
    offset,  # counter of element 0
    BLOCK: tl.constexpr,  # elements per program
):
    pid = tl.program_id(0).to(tl.int64)  # 64-bit so buffers over 2**31 elements index right
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # this program's elements
    live = offs < n  # the last block is ragged
    p = tl.load(mom_ptr + offs, mask=live, other=0.0)  # momentum
    r = tl.randn(seed, offset.to(tl.int64) + offs)  # N(0, 1), counter = offset + i
    p = decay * p + noise * r  # exact Ornstein–Uhlenbeck step
    tl.store(mom_ptr + offs, p, mask=live)  # write back


def langevin_o_triton(mom: torch.Tensor, *, gamma: float, h: float, tau: float, seed: int,
                      offset: int = 0) -> None:
    """`langevin_o_torch` as one Triton launch (same random numbers)."""
    require_triton()
    _check(mom, seed, offset)
    n = mom.numel()
    if n == 0:
        return
    decay, noise = o_step_coefficients(gamma, h, tau)
    grid = lambda META: (triton.cdiv(n, META["BLOCK"]),)  # noqa: E731
    _langevin_o_kernel[grid](mom, n, float(decay), float(noise), int(seed), int(offset))


def baoab_step_torch(theta: torch.Tensor, mom: torch.Tensor, grad: torch.Tensor,
                     grad_fn: Callable[[], torch.Tensor], *, h: float, gamma: float,
                     tau: float, seed: int, offset: int = 0,
                     o_step: Callable[..., None] = langevin_o_torch) -> torch.Tensor:
    """One BAOAB step over flat buffers, in place; returns ∇L at the new θ.

    `grad` is ∇L at the current θ (the previous step's return value, or a fresh backward on
    the first step); `grad_fn()` must compute ∇L at the updated θ (one forward/backward) and
    return it as a flat tensor. `theta` may be bfloat16 (rounded after each drift); `mom` is
    float32. `o_step` can be `langevin_o_triton` on a GPU.
    """
    with torch.no_grad():
        mom.add_(grad.float(), alpha=-h / 2)  # B
        _drift(theta, mom, h / 2)  # A
        o_step(mom, gamma=gamma, h=h, tau=tau, seed=seed, offset=offset)  # O
        _drift(theta, mom, h / 2)  # A
    new_grad = grad_fn()
    with torch.no_grad():
        mom.add_(new_grad.float(), alpha=-h / 2)  # B
    return new_grad


def _drift(theta: torch.Tensor, mom: torch.Tensor, step: float) -> None:
    if theta.dtype == torch.float32:
        theta.add_(mom, alpha=step)
    else:
        theta.copy_(theta.float().add_(mom, alpha=step))
