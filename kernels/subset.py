"""Random-subset regularization: zero a random subset of the weights, restore it later.

The seed's regularizer (multirate-training.md): every k steps pick a random subset θ_S of the
weights and hold it at zero while the rest take k fast steps of size h_F; then re-activate θ_S
(restore its values), update it with step k·h_F, and draw a new subset. This module gives the
three pieces the runtime strings together over a flat parameter buffer:

* `random_subset_mask(numel, fraction, seed, …)`: the subset as a bool mask, reproducible
  from the seed on any device (drawn by a CPU generator, then moved), with an exact count of
  round(fraction·size) elements per tensor or over the whole group; padding is never chosen;
  `random_subset_masks(shapes, …)` is the same draw as one mask per tensor (the runtime's
  random-subset integrator holds its parameters as separate tensors);
* `subset_zero_*(param, mask, saved)`: saved ← θ; θ[mask] ← 0;
* `subset_restore_*(param, mask, saved)`: θ[mask] ← saved[mask].

Between the two, the fast steps update only the complement (`sgd_*(…, mask=~mask)` keeps the
subset and its momentum untouched), and the slow update of the subset uses `mask=mask` with
step k·h_F. Both operations are pure data movement, so the torch and Triton paths agree
exactly. The mask is dense (one byte per element) rather than an index list: the Triton pass
then reads coalesced memory whatever the fraction, and `~mask` is the complement for free.
`saved` has θ's dtype and length and receives all of θ (a plain copy is as cheap as a
selective one and leaves nothing unspecified).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .configs import elementwise_autotune, require_triton, tl, triton
from .sgd import _check_flat


def random_subset_mask(numel: int, fraction: float, seed: int, *,
                       segments: Sequence[tuple[int, int]] | None = None,
                       per_tensor: bool = True,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """A bool mask of `numel` elements selecting a random subset, reproducible from `seed`.

    `segments` lists the `(offset, numel)` of each tensor in the flat buffer (a FlatGroup's
    `segments`; default: one segment over everything). With `per_tensor`, exactly
    round(fraction·numel_i) elements of each tensor are chosen; otherwise exactly
    round(fraction·total) over the union of the segments. Elements outside every segment (the
    padding) are never chosen. The draw uses a CPU generator seeded with `seed`, so the same
    seed gives the same mask on every device and machine.

    The stream of draws is fixed (resumed runs and the determinism tests rely on it): per
    tensor, one `randperm(numel_i)` per segment in order, drawn even when its count rounds to 0;
    globally, one `randperm` over all segment elements in order. A segment's first
    round(fraction·numel_i) permuted positions are the chosen ones.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], not {fraction}")
    segs = list(segments) if segments is not None else [(0, numel)]
    for off, size in segs:
        if off < 0 or size < 0 or off + size > numel:
            raise ValueError(f"segment ({off}, {size}) lies outside [0, {numel})")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    mask = torch.zeros(numel, dtype=torch.bool)
    if per_tensor:
        for off, size in segs:
            # always draw, so a tensor whose count rounds to 0 still advances the stream
            chosen = torch.randperm(size, generator=gen)[:round(fraction * size)]
            mask[off + chosen] = True
    else:
        positions = torch.cat([torch.arange(off, off + size) for off, size in segs])
        chosen = torch.randperm(positions.numel(), generator=gen)[:round(fraction * positions.numel())]
        mask[positions[chosen]] = True
    return mask.to(device) if device is not None else mask


def random_subset_masks(shapes: Sequence[Sequence[int]], fraction: float, seed: int, *,
                        per_tensor: bool = True,
                        device: torch.device | str | None = None) -> list[torch.Tensor]:
    """`random_subset_mask` over tensors of `shapes` laid end to end (no padding), returned as
    one mask per tensor in its shape: views of one flat mask, so `torch.cat` of their
    flattenings is the flat mask itself."""
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    segments, offset = [], 0
    for size in sizes:
        segments.append((offset, size))
        offset += size
    flat = random_subset_mask(offset, fraction, seed, segments=segments,
                              per_tensor=per_tensor, device=device)
    return [m.view(tuple(s)) for m, s in zip(flat.split(sizes), shapes, strict=True)]


def _check(param: torch.Tensor, mask: torch.Tensor, saved: torch.Tensor) -> None:
    n = param.numel()
    _check_flat("param", param, n, param.device)
    _check_flat("mask", mask, n, param.device)
    _check_flat("saved", saved, n, param.device)
    if mask.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"mask must be bool or uint8, not {mask.dtype}")
    if saved.dtype != param.dtype:
        raise TypeError(f"saved is {saved.dtype}, param {param.dtype}: keep θ's dtype so the "
                        "restore is exact")


def subset_zero_torch(param: torch.Tensor, mask: torch.Tensor, saved: torch.Tensor) -> None:
    """saved ← θ; θ[mask] ← 0 (in place)."""
    _check(param, mask, saved)
    with torch.no_grad():
        saved.copy_(param)
        param.masked_fill_(mask.bool(), 0)


def subset_restore_torch(param: torch.Tensor, mask: torch.Tensor, saved: torch.Tensor) -> None:
    """θ[mask] ← saved[mask] (in place)."""
    _check(param, mask, saved)
    with torch.no_grad():
        torch.where(mask.bool(), saved, param, out=param)


@elementwise_autotune(restore=["param_ptr", "saved_ptr"])
@triton.jit
def _subset_kernel(
    param_ptr,  # *θ, any float dtype, updated in place
    mask_ptr,  # *uint8, nonzero = in the subset
    saved_ptr,  # *saved, θ's dtype
    n,  # number of elements
    RESTORE: tl.constexpr,  # False: save and zero; True: restore
    BLOCK: tl.constexpr,  # elements per program
):
    # Whole-block loads and stores with a select, not loads masked by the subset: a random
    # subset touches almost every 32-byte sector anyway, and a data-dependent mask would
    # stop the compiler from using 16-byte vector accesses.
    pid = tl.program_id(0).to(tl.int64)  # 64-bit so buffers over 2**31 elements index right
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # this program's elements
    live = offs < n  # the last block is ragged
    chosen = tl.load(mask_ptr + offs, mask=live, other=0) != 0  # in the subset
    theta = tl.load(param_ptr + offs, mask=live)  # current θ
    if RESTORE:
        kept = tl.load(saved_ptr + offs, mask=live)  # θ as it was when zeroed
        theta = tl.where(chosen, kept, theta)  # put the subset back
    else:
        tl.store(saved_ptr + offs, theta, mask=live)  # saved ← θ
        theta = tl.where(chosen, tl.zeros_like(theta), theta)  # hold θ_S at zero
    tl.store(param_ptr + offs, theta, mask=live)  # write θ back


def _launch(param: torch.Tensor, mask: torch.Tensor, saved: torch.Tensor, restore: bool) -> None:
    require_triton()
    _check(param, mask, saved)
    n = param.numel()
    if n == 0:
        return
    mask = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    grid = lambda META: (triton.cdiv(n, META["BLOCK"]),)  # noqa: E731
    _subset_kernel[grid](param, mask, saved, n, RESTORE=restore)


def subset_zero_triton(param: torch.Tensor, mask: torch.Tensor, saved: torch.Tensor) -> None:
    """`subset_zero_torch` as one Triton launch."""
    _launch(param, mask, saved, restore=False)


def subset_restore_triton(param: torch.Tensor, mask: torch.Tensor, saved: torch.Tensor) -> None:
    """`subset_restore_torch` as one Triton launch."""
    _launch(param, mask, saved, restore=True)
