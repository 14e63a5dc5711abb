"""Random-subset regularization: zero a random subset of the weights, restore it later.

The seed's regularizer (multirate-training.md): every k steps pick a random subset θ_S of the
weights and hold it at zero while the rest take k fast steps of size h_F; then re-activate θ_S
(restore its values), update it with step k·h_F, and draw a new subset. The subset's mask is
drawn by `mrc.techniques.random_subsets.masks` (binding draws element partitions with it too);
this module gives the two operations the runtime strings together over a flat parameter buffer:

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

import torch

from .configs import elementwise_autotune, require_triton, tl, triton
from .sgd import _check_flat


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
