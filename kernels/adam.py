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
"""

from __future__ import annotations

import math

import torch

from .configs import elementwise_autotune, require_triton, tl, triton
from .sgd import PARAM_DTYPES, _check_flat, _round_to_element


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
