"""SGD with momentum over flat buffers, and the fused multirate (fast/slow, linear drift) update.

Two functions, each as a plain-torch reference (`*_torch`, also the CPU path) and a Triton
kernel (`*_triton`), with the same semantics.

`sgd_*` is torch.optim.SGD on one flat buffer, step for step:

    d  = ±g + wd·θ                                  (− when maximize)
    p  = d                      on the first step   (torch's `buf = clone(d)`)
    p  = μ·p + (1 − dampening)·d  afterwards
    θ ← θ − lr·(d + μ·p)        with Nesterov, else  θ ← θ − lr·p
    (μ = 0: no buffer, θ ← θ − lr·d)

`multirate_sgd_*` is one pass over a flat buffer that holds several partitions (segments),
each with its own mode and step size. It is the multirate integrator of the seed
(multirate-training.md) with SGD-momentum as base method; with h the slow step and k the rate
ratio, one step of the fast time-scale is

    fast partition F (every step):   p_F ← μ p_F + ∇_F L;   θ_F ← θ_F − (h/k) p_F     UPDATE
    slow partition S, linear drift:
        on the slow step:            p_S ← μ p_S + ∇_S L;   θ_S ← θ_S − (h/k) p_S     UPDATE
        on the k − 1 other steps:                           θ_S ← θ_S − (h/k) p_S     DRIFT
    slow partition S, no drift:
        on the slow step:            p_S ← μ p_S + ∇_S L;   θ_S ← θ_S − h p_S         UPDATE
        on the k − 1 other steps:    nothing                                           SKIP

so the segment table says, for this step, each partition's mode and `lr_scale` (the step is
`lr · lr_scale`: with lr = h, scale 1/k for the fast part and for the drift, 1 for a no-drift
slow step), plus its own momentum and weight decay. `FIRST` is `UPDATE` on a partition's first
ever update (p ← d, as torch). A DRIFT segment never reads the gradient and never writes p,
and a SKIP segment is not launched at all, so the slow partition costs 12 bytes per element on
a drift step (θ read and written, p read) instead of 20.

Element-level partitions hold parts of tensors: a segment may name a boolean mask over its
elements (`mask`, an index into the call's `masks`); only the selected elements then move and
only their momentum changes. Masked segments may overlap each other (their masks are disjoint:
each element belongs to one partition), so one call still updates a whole rule group. The
Triton kernel takes unmasked segments only; `multirate_sgd_torch` takes both.

Memory: the parameter may be float32, bfloat16 or float16, its gradient has the parameter's
dtype, and the momentum buffer is float32; arithmetic is float32 and only θ is rounded back.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .configs import elementwise_autotune, interpreting, require_triton, tl, triton

PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Mode(enum.IntEnum):
    """What a segment of the flat buffer does in one multirate step."""

    SKIP = 0  # untouched: θ and p stay, g is not read
    DRIFT = 1  # θ ← θ − lr·scale·p; p fixed, g not read (the slow part between its updates)
    UPDATE = 2  # an SGD-momentum step with step size lr·scale
    FIRST = 3  # UPDATE on the segment's first step: p ← d (torch.optim.SGD's first step)


@dataclass(frozen=True, slots=True)
class Segment:
    """Elements `[start, stop)` of the flat buffers and what they do in this step."""

    start: int
    stop: int
    mode: Mode
    lr_scale: float = 1.0
    momentum: float = 0.0
    weight_decay: float = 0.0
    mask: int = -1
    """Index into the call's `masks` of the elements of `[start, stop)` that move (-1: all)."""


# --------------------------------------------------------------------------- checks


def _check_flat(name: str, t: torch.Tensor, n: int, device: torch.device) -> None:
    if t.dim() != 1 or not t.is_contiguous() or t.numel() != n:
        raise ValueError(f"{name} must be a contiguous flat tensor of {n} elements, "
                         f"got shape {tuple(t.shape)} (contiguous={t.is_contiguous()})")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, the parameter on {device}")


def _check_buffers(param: torch.Tensor, grad: torch.Tensor | None,
                   buf: torch.Tensor | None, *, torch_path: bool = False) -> None:
    """float64 parameters (with a float64 momentum buffer) are for the torch path only: the
    numerics tests run the fused update in double precision against the seed's equations."""
    n = param.numel()
    _check_flat("param", param, n, param.device)
    if torch_path and param.dtype == torch.float64:
        if grad is not None and grad.dtype != torch.float64:
            raise TypeError(f"grad is {grad.dtype}, param {param.dtype}")
        if buf is not None and buf.dtype != torch.float64:
            raise TypeError(f"a float64 parameter needs a float64 momentum buffer, not {buf.dtype}")
        return
    if param.dtype not in PARAM_DTYPES:
        raise TypeError(f"param dtype {param.dtype} not supported (use one of {PARAM_DTYPES})")
    if grad is not None:
        _check_flat("grad", grad, n, param.device)
        if grad.dtype != param.dtype:
            raise TypeError(f"grad is {grad.dtype}, param {param.dtype}")
    if buf is not None:
        _check_flat("momentum buffer", buf, n, param.device)
        if buf.dtype != torch.float32:
            raise TypeError(f"the momentum buffer must be float32, not {buf.dtype}")


def _check_hyper(lr: float, momentum: float, dampening: float, nesterov: bool,
                 buf: torch.Tensor | None) -> None:
    if lr < 0.0:
        raise ValueError(f"lr must be >= 0, not {lr}")
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    if momentum != 0.0 and buf is None:
        raise ValueError("momentum != 0 needs a momentum buffer")


def _check_segments(segments: Sequence[Segment], n: int) -> list[Segment]:
    """Segments in order of their starts; unmasked ones may not overlap any other segment
    (masked ones may overlap each other: their masks are disjoint)."""
    ordered = sorted(segments, key=lambda s: s.start)
    prev = 0
    for s in ordered:
        if not 0 <= s.start <= s.stop <= n:
            raise ValueError(f"segment [{s.start}, {s.stop}) lies outside [0, {n})")
        if s.mask < 0 and s.start < prev:
            raise ValueError(f"segment [{s.start}, {s.stop}) overlaps the one before it")
        if s.mask < 0:
            prev = s.stop
    plain = [s for s in ordered if s.mask < 0]
    for s in ordered:
        if s.mask >= 0 and any(p.start < s.stop and s.start < p.stop for p in plain):
            raise ValueError(f"masked segment [{s.start}, {s.stop}) overlaps an unmasked one")
    return ordered


# --------------------------------------------------------------------------- torch path


def sgd_torch(param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor | None, *,
              lr: float, momentum: float = 0.0, dampening: float = 0.0,
              weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
              first_step: bool = False, mask: torch.Tensor | None = None) -> None:
    """One torch.optim.SGD step over flat buffers, in place (reference and CPU path).

    `first_step` marks the first update of this buffer (torch's "no momentum buffer yet").
    `mask` (bool, optional) restricts the update to the selected elements; the others keep
    their θ and p (the random-subset regularization holds a subset still).
    """
    _check_buffers(param, grad, buf, torch_path=True)
    _check_hyper(lr, momentum, dampening, nesterov, buf)
    if mask is not None:
        _check_flat("mask", mask, param.numel(), param.device)
    sign = -1.0 if maximize else 1.0
    with torch.no_grad():
        if param.dtype in (torch.float32, torch.float64) and mask is None:
            _sgd_float32_inplace(param, grad, buf, lr, momentum, dampening, weight_decay,
                                 nesterov, sign, first_step)
            return
        # General path: float32 temporaries, then round θ back (bfloat16) and/or keep the
        # unselected elements (mask).
        work = torch.float64 if param.dtype == torch.float64 else torch.float32
        theta = param.to(work)
        d = grad.to(work) * sign
        if weight_decay != 0.0:
            d = d + weight_decay * theta
        p = None
        if momentum != 0.0:
            assert buf is not None
            p = d.clone() if first_step else buf * momentum + (1.0 - dampening) * d
            step = d + momentum * p if nesterov else p
        else:
            step = d
        new = theta - lr * step
        if mask is not None:
            new = torch.where(mask, new, theta)
            if p is not None:
                p = torch.where(mask, p, buf)
        param.copy_(new)
        if p is not None:
            buf.copy_(p)


def _sgd_float32_inplace(param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor | None,
                         lr: float, momentum: float, dampening: float, weight_decay: float,
                         nesterov: bool, sign: float, first_step: bool) -> None:
    """The float32 CPU fast path: whole-buffer in-place ops, no temporaries.

    Three passes over memory for the common heavy-ball case (p = g + μp; p += wd·θ;
    θ −= lr·p), where torch.optim's foreach path makes four and allocates a gradient copy.
    """
    if momentum == 0.0:
        if weight_decay != 0.0:
            param.mul_(1.0 - lr * weight_decay)  # θ − lr·wd·θ
        param.add_(grad, alpha=-lr * sign)
        return
    assert buf is not None
    if first_step:
        torch.mul(grad, sign, out=buf)  # p = ±g
        if weight_decay != 0.0:
            buf.add_(param, alpha=weight_decay)  # p = d
    else:
        keep = 1.0 - dampening
        if keep == 1.0:
            torch.add(grad if sign > 0 else -grad, buf, alpha=momentum, out=buf)  # p = ±g + μp
        else:
            buf.mul_(momentum).add_(grad, alpha=keep * sign)  # p = μp ± (1−damp)·g
        if weight_decay != 0.0:
            buf.add_(param, alpha=keep * weight_decay)  # … + (1−damp)·wd·θ
    if nesterov:
        # θ − lr·(d + μp) with d = ±g + wd·θ
        if weight_decay != 0.0:
            param.mul_(1.0 - lr * weight_decay)
        param.add_(grad, alpha=-lr * sign)
        param.add_(buf, alpha=-lr * momentum)
    else:
        param.add_(buf, alpha=-lr)


def multirate_sgd_torch(param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor,
                        segments: Sequence[Segment], *, lr: float, dampening: float = 0.0,
                        nesterov: bool = False, masks: Sequence[torch.Tensor] = ()) -> None:
    """One multirate step over a flat buffer of partitions (see the module docstring);
    `masks[i]` is the bool mask of a segment with `mask=i` (its length is the segment's)."""
    _check_buffers(param, grad, buf, torch_path=True)
    for s in _check_segments(segments, param.numel()):
        sl = slice(s.start, s.stop)
        if s.mode == Mode.SKIP or s.start == s.stop:
            continue
        if s.mask >= 0:
            m = masks[s.mask]
            if m.shape != (s.stop - s.start,) or m.dtype != torch.bool:
                raise ValueError(f"mask {s.mask} must be a bool vector of {s.stop - s.start} elements")
            with torch.no_grad():
                if s.mode == Mode.DRIFT:
                    moved = param[sl].to(buf.dtype) - (lr * s.lr_scale) * buf[sl]
                    param[sl].copy_(torch.where(m, moved.to(param.dtype), param[sl]))
                    continue
            sgd_torch(param[sl], grad[sl], buf[sl] if s.momentum != 0.0 else None,
                      lr=lr * s.lr_scale, momentum=s.momentum, dampening=dampening,
                      weight_decay=s.weight_decay, nesterov=nesterov and s.momentum != 0.0,
                      first_step=s.mode == Mode.FIRST, mask=m)
            continue
        if s.mode == Mode.DRIFT:
            with torch.no_grad():
                if param.dtype in (torch.float32, torch.float64):
                    param[sl].add_(buf[sl], alpha=-lr * s.lr_scale)
                else:
                    param[sl].copy_(param[sl].float() - (lr * s.lr_scale) * buf[sl])
            continue
        sgd_torch(param[sl], grad[sl], buf[sl] if s.momentum != 0.0 else None,
                  lr=lr * s.lr_scale, momentum=s.momentum, dampening=dampening,
                  weight_decay=s.weight_decay, nesterov=nesterov and s.momentum != 0.0,
                  first_step=s.mode == Mode.FIRST)


# --------------------------------------------------------------------------- Triton kernels


# Triton's interpreter casts float32 → bfloat16 by truncation where compiled code rounds to
# nearest-even; under the interpreter the kernels round with integer arithmetic instead, so
# both modes store the same bits (decided at import, like triton.jit itself).
_EMULATE_BF16_RTNE = tl.constexpr(interpreting())


@triton.jit
def _round_to_element(x, ptr):
    """float32 `x` in `ptr`'s element type, rounded to nearest-even."""
    if ptr.dtype.element_ty == tl.float32:
        return x  # nothing to round
    elif ptr.dtype.element_ty == tl.bfloat16 and _EMULATE_BF16_RTNE:
        bits = x.to(tl.uint32, bitcast=True)  # the float32 bits
        bits = bits + 0x7FFF + ((bits >> 16) & 1)  # add half an ulp of bf16, ties to even
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)  # keep the top half
    else:
        return x.to(ptr.dtype.element_ty)  # compiled: cvt.rn (round to nearest-even)


@elementwise_autotune(restore=["param_ptr", "buf_ptr"])
@triton.jit
def _sgd_kernel(
    param_ptr,  # *θ, float32/bfloat16/float16, updated in place
    grad_ptr,  # *g, the parameter's dtype
    buf_ptr,  # *p, float32 momentum buffer (None when HAS_MOMENTUM is false)
    mask_ptr,  # *uint8 selection (None when HAS_MASK is false)
    n,  # number of elements
    lr,  # step size
    momentum,  # μ
    dampening,  # damping of the gradient in the momentum average
    weight_decay,  # L2 coefficient folded into the gradient
    HAS_MOMENTUM: tl.constexpr,  # μ != 0: keep a momentum buffer
    FIRST: tl.constexpr,  # first step: p = d (no history yet)
    NESTEROV: tl.constexpr,  # step along d + μp instead of p
    MAXIMIZE: tl.constexpr,  # ascend instead of descend
    HAS_WD: tl.constexpr,  # weight_decay != 0 (skip the term entirely otherwise, as torch)
    HAS_MASK: tl.constexpr,  # update only the selected elements
    BLOCK: tl.constexpr,  # elements per program
):
    pid = tl.program_id(0).to(tl.int64)  # 64-bit so buffers over 2**31 elements index right
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # this program's elements
    live = offs < n  # the last block is ragged
    theta = tl.load(param_ptr + offs, mask=live, other=0.0).to(tl.float32)  # θ in float32
    g = tl.load(grad_ptr + offs, mask=live, other=0.0).to(tl.float32)  # g in float32
    if MAXIMIZE:
        g = -g  # gradient ascent
    d = g  # the effective gradient
    if HAS_WD:
        d = g + weight_decay * theta  # L2 penalty
    if HAS_MASK:
        # Select rather than mask the memory accesses: a random selection touches nearly
        # every 32-byte sector anyway, and whole-block accesses stay 16-byte vectors.
        chosen = tl.load(mask_ptr + offs, mask=live, other=0) != 0  # elements to update
    if HAS_MOMENTUM:
        if FIRST and not HAS_MASK:
            p = d  # torch: buf = clone(d) on the first step, no dampening
        else:
            p_old = tl.load(buf_ptr + offs, mask=live, other=0.0)  # previous momentum
            if FIRST:
                p = d  # first step: no history
            else:
                p = momentum * p_old + (1.0 - dampening) * d  # heavy-ball average
            if HAS_MASK:
                p = tl.where(chosen, p, p_old)  # unselected elements keep their momentum
        tl.store(buf_ptr + offs, p, mask=live)  # momentum stays float32
        if NESTEROV:
            step = d + momentum * p  # look-ahead direction
        else:
            step = p  # heavy-ball direction
    else:
        step = d  # plain SGD
    new_theta = theta - lr * step  # the update, in float32
    if HAS_MASK:
        new_theta = tl.where(chosen, new_theta, theta)  # unselected elements keep θ
    tl.store(param_ptr + offs, _round_to_element(new_theta, param_ptr), mask=live)  # round


@triton.jit
def _segment_tile(seg_int_ptr, NSEG: tl.constexpr, BLOCK: tl.constexpr):
    """(start, stop, segment) of this program's tile in a segment table: programs are numbered
    segment after segment, cdiv(len, BLOCK) per segment (the table holds NSEG starts, then NSEG
    stops). Shared by the segment kernels of sgd.py and adam.py."""
    pid = tl.program_id(0).to(tl.int64)  # this program's tile number
    zero = pid * 0  # a 64-bit scalar zero
    tiles_before = zero  # tiles of the segments before s
    start = zero  # first element of this program's tile
    stop = zero  # end of this program's segment
    seg = zero  # this program's segment
    for s in tl.static_range(NSEG):
        lo = tl.load(seg_int_ptr + s)  # segment s starts here
        hi = tl.load(seg_int_ptr + NSEG + s)  # and ends here
        tiles = (hi - lo + BLOCK - 1) // BLOCK  # its number of tiles
        mine = (pid >= tiles_before) & (pid < tiles_before + tiles)  # does pid fall in s?
        start = tl.where(mine, lo + (pid - tiles_before) * BLOCK, start)  # then start here
        stop = tl.where(mine, hi, stop)  # and stop at the segment's end
        seg = tl.where(mine, s, seg)  # remember which segment
        tiles_before += tiles  # next segment's tiles follow
    return start, stop, seg


@elementwise_autotune(restore=["param_ptr", "buf_ptr"])
@triton.jit
def _multirate_sgd_kernel(
    param_ptr,  # *θ, float32/bfloat16/float16, updated in place
    grad_ptr,  # *g, the parameter's dtype
    buf_ptr,  # *p, float32 momentum buffer
    seg_int_ptr,  # *int64 [3, NSEG]: start, stop, mode of each launched segment
    seg_f32_ptr,  # *float32 [3, NSEG]: lr scale, momentum, weight decay of each segment
    n,  # elements covered by the launched segments (the autotune key)
    lr,  # base step size (h); a segment steps lr·scale
    dampening,  # damping of the gradient in the momentum average
    NSEG: tl.constexpr,  # number of launched segments
    NESTEROV: tl.constexpr,  # Nesterov steps for UPDATE segments
    ALIGNED: tl.constexpr,  # every start and stop is a multiple of 16 (FlatGroup layout)
    BLOCK: tl.constexpr,  # elements per program
):
    # Programs are numbered segment after segment, cdiv(len, BLOCK) per segment, so each
    # program lies inside one segment and reads its mode and hyper-parameters as scalars.
    start, stop, seg = _segment_tile(seg_int_ptr, NSEG, BLOCK)  # this program's tile of its segment
    # Per-segment scalars, splatted over the block: the predicates below are then block-wide
    # tensors (the interpreter mishandles `tensor & scalar-bool`; compiled, a splat is free).
    mode = tl.zeros((BLOCK,), tl.int64) + tl.load(seg_int_ptr + 2 * NSEG + seg)  # 1/2/3
    step_size = lr * tl.load(seg_f32_ptr + seg)  # lr · lr_scale
    momentum = tl.zeros((BLOCK,), tl.float32) + tl.load(seg_f32_ptr + NSEG + seg)  # μ
    weight_decay = tl.load(seg_f32_ptr + 2 * NSEG + seg)  # wd of this partition
    if ALIGNED:
        start = tl.multiple_of(start, 16)  # lets the accesses below be 16-byte vectors
        stop = tl.multiple_of(stop, 16)  # so is the ragged end of the segment
    offs = start + tl.arange(0, BLOCK)  # this program's elements
    live = offs < stop  # ragged last tile of the segment
    update = live & (mode >= 2)  # UPDATE or FIRST: read g, write p; DRIFT: neither
    first = mode == 3  # FIRST: p = d, the old p is not read
    has_momentum = momentum != 0.0  # μ = 0: plain SGD, no momentum buffer (as torch)
    theta = tl.load(param_ptr + offs, mask=live, other=0.0).to(tl.float32)  # θ in float32
    p = tl.load(buf_ptr + offs, mask=live & (mode != 3), other=0.0)  # p (unused on FIRST)
    g = tl.load(grad_ptr + offs, mask=update, other=0.0).to(tl.float32)  # g where UPDATE
    d = g + weight_decay * theta  # effective gradient with the L2 penalty
    fresh = first | (momentum == 0.0)  # no history: p = d
    p_upd = tl.where(fresh, d, momentum * p + (1.0 - dampening) * d)  # momentum average
    p_new = tl.where(update, p_upd, p)  # DRIFT keeps p
    if NESTEROV:
        direction = tl.where(update & has_momentum, d + momentum * p_new, p_new)  # look-ahead
    else:
        direction = p_new  # heavy ball, or the drift along the frozen p
    theta = theta - step_size * direction  # the update, in float32
    tl.store(param_ptr + offs, _round_to_element(theta, param_ptr), mask=live)  # round back
    tl.store(buf_ptr + offs, p_new, mask=update & has_momentum)  # new momentum, float32


# --------------------------------------------------------------------------- wrappers


def sgd_triton(param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor | None, *,
               lr: float, momentum: float = 0.0, dampening: float = 0.0,
               weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
               first_step: bool = False, mask: torch.Tensor | None = None) -> None:
    """`sgd_torch` as one Triton launch over the flat buffers."""
    require_triton()
    _check_buffers(param, grad, buf)
    _check_hyper(lr, momentum, dampening, nesterov, buf)
    if mask is not None:
        _check_flat("mask", mask, param.numel(), param.device)
        mask = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    n = param.numel()
    if n == 0:
        return
    has_momentum = momentum != 0.0
    grid = lambda META: (triton.cdiv(n, META["BLOCK"]),)  # noqa: E731
    # Without momentum the kernel never touches the buffer, but the autotuner saves and
    # restores every `restore` argument, so it gets a one-element stand-in rather than None.
    _sgd_kernel[grid](
        param, grad, buf if has_momentum else _placeholder(param.device), mask, n,
        float(lr), float(momentum), float(dampening), float(weight_decay),
        HAS_MOMENTUM=has_momentum, FIRST=bool(first_step), NESTEROV=bool(nesterov),
        MAXIMIZE=bool(maximize), HAS_WD=weight_decay != 0.0, HAS_MASK=mask is not None,
    )


@functools.lru_cache(maxsize=16)
def _placeholder(device: torch.device) -> torch.Tensor:
    """A float32 stand-in for an absent momentum buffer (never read or written)."""
    return torch.zeros(1, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=256)
def _segment_table(segments: tuple[Segment, ...],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The device-side table of the launched segments, built once per (step kind, device)."""
    ints = torch.tensor([[s.start for s in segments], [s.stop for s in segments],
                         [int(s.mode) for s in segments]], dtype=torch.int64)
    floats = torch.tensor([[s.lr_scale for s in segments], [s.momentum for s in segments],
                           [s.weight_decay for s in segments]], dtype=torch.float32)
    return ints.reshape(-1).to(device), floats.reshape(-1).to(device)


def multirate_sgd_triton(param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor,
                         segments: Sequence[Segment], *, lr: float, dampening: float = 0.0,
                         nesterov: bool = False) -> None:
    """`multirate_sgd_torch` as ONE Triton launch over every non-SKIP segment.

    The segment table is cached per distinct `segments` tuple and device, so a runtime that
    builds one tuple per kind of step (slow step, fast step) once pays no host-to-device
    copy per step; only `lr` changes from call to call.
    """
    require_triton()
    _check_buffers(param, grad, buf)
    if nesterov and dampening != 0.0:
        raise ValueError("Nesterov momentum requires zero dampening")
    live = tuple(s for s in _check_segments(segments, param.numel())
                 if s.mode != Mode.SKIP and s.stop > s.start)
    if any(s.mask >= 0 for s in live):
        raise ValueError("the Triton multirate kernel takes unmasked segments only "
                         "(run masked ones through multirate_sgd_torch)")
    if not live:
        return
    ints, floats = _segment_table(live, param.device)
    lengths = [s.stop - s.start for s in live]
    aligned = all(s.start % 16 == 0 and s.stop % 16 == 0 for s in live)
    grid = lambda META: (sum(triton.cdiv(m, META["BLOCK"]) for m in lengths),)  # noqa: E731
    _multirate_sgd_kernel[grid](
        param, grad, buf, ints, floats, sum(lengths), float(lr), float(dampening),
        NSEG=len(live), NESTEROV=bool(nesterov), ALIGNED=aligned,
    )
