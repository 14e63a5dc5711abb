"""MGRIT kernels: the batched dense Euler step of a residual stack, and the FAS correction.

Two functions, each as a plain-torch reference (`*_torch`, also the CPU path) and a Triton
kernel (`*_triton`) of the same semantics.

`dense_step_*` applies one explicit-Euler step to m intervals at once, each with the weights of
its own layer (the MGRIT relaxation and coarse sweeps step many intervals in parallel):

    out[i] = u[i] + scale · σ(u[i] @ W[idx[i]]ᵀ + b[idx[i]])        i = 0..m-1, σ = tanh | relu

with u [m, batch, w], W [N, w, w], b [N, w], idx [m] (long); the Triton kernel also takes the
layers as a progression idx[i] = first + i·stride, and strided u and out (the solver's views).
The Triton kernel fuses the matrix product, the bias, the activation and the update in one
launch: each program computes one [BLOCK_B, BLOCK_J] tile of out[i], so z never goes to memory
(the torch path writes z, then σ(z), then the sum).

`fas_correct_*` is the FAS correction at the C-points, one pass over the coarse values:

    u[c_index[j]] += v[j] − u_c[j]                                   j = 0..M-1

with u [P, *state] (the fine iterate, updated in place), v and u_c [M, *state] (the coarse
solution and the injected fine values it started from) and c_index [M] (long, distinct: the
C-points are). The torch path reads v − u_c into a temporary, then index-adds it.

The Triton kernels take float32 contiguous CUDA tensors (or CPU tensors under
TRITON_INTERPRET=1, for the tests); arithmetic is float32 with an IEEE (not TF32) product, so
they agree with the float32 torch path to a few ulp per reduction term.
"""

from __future__ import annotations

import torch

from .configs import require_triton, tl, triton

ACTIVATIONS = ("tanh", "relu")

# --------------------------------------------------------------------------- checks


def _check_dense(u: torch.Tensor, W: torch.Tensor, b: torch.Tensor, idx: torch.Tensor | None,
                 activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
    if u.dim() != 3:
        raise ValueError(f"u must be [m, batch, width], got shape {tuple(u.shape)}")
    m, _, w = u.shape
    if W.dim() != 3 or W.shape[1:] != (w, w):
        raise ValueError(f"W must be [N, {w}, {w}], got shape {tuple(W.shape)}")
    if b.shape != (W.shape[0], w):
        raise ValueError(f"b must be [{W.shape[0]}, {w}], got shape {tuple(b.shape)}")
    if idx is not None and (idx.shape != (m,) or idx.dtype != torch.long):
        raise ValueError(f"idx must be a long tensor of shape [{m}], got "
                         f"{idx.dtype} {tuple(idx.shape)}")
    if not (u.dtype == W.dtype == b.dtype):
        raise TypeError(f"u, W and b must share a dtype, got {u.dtype}, {W.dtype}, {b.dtype}")


def _check_fas(u: torch.Tensor, v: torch.Tensor, u_c: torch.Tensor,
               c_index: torch.Tensor) -> None:
    if v.shape != u_c.shape or v.dim() < 1 or u.shape[1:] != v.shape[1:]:
        raise ValueError(f"u [P, *state], v and u_c [M, *state] expected, got "
                         f"{tuple(u.shape)}, {tuple(v.shape)}, {tuple(u_c.shape)}")
    if c_index.shape != (v.shape[0],) or c_index.dtype != torch.long:
        raise ValueError(f"c_index must be a long tensor of shape [{v.shape[0]}], got "
                         f"{c_index.dtype} {tuple(c_index.shape)}")
    if not (u.dtype == v.dtype == u_c.dtype):
        raise TypeError(f"u, v and u_c must share a dtype, got {u.dtype}, {v.dtype}, {u_c.dtype}")


# --------------------------------------------------------------------------- torch path


def dense_step_torch(u: torch.Tensor, W: torch.Tensor, b: torch.Tensor, idx: torch.Tensor,
                     scale: float, activation: str) -> torch.Tensor:
    """out[i] = u[i] + scale·σ(u[i] @ W[idx[i]]ᵀ + b[idx[i]]) for m intervals (reference and CPU
    path): one gathered `baddbmm` for all intervals, so its cost does not grow with Python calls.
    """
    _check_dense(u, W, b, idx, activation)
    with torch.no_grad():
        idx = idx.to(W.device)
        z = torch.baddbmm(b[idx].unsqueeze(1), u, W[idx].transpose(1, 2))
        f = torch.tanh(z) if activation == "tanh" else torch.relu(z)
        return u + scale * f


def fas_correct_torch(u: torch.Tensor, v: torch.Tensor, u_c: torch.Tensor,
                      c_index: torch.Tensor) -> None:
    """u[c_index] += v − u_c in place (reference and CPU path); an index-add, so the result is
    defined even for repeated indices (the Triton kernel needs them distinct)."""
    _check_fas(u, v, u_c, c_index)
    with torch.no_grad():
        u.index_add_(0, c_index.to(u.device), v - u_c)


# --------------------------------------------------------------------------- Triton kernels


@triton.jit
def _tanh(x):
    """tanh from one exp, stable for any |x| (Triton has no tanh of its own): with t = e^{-2|x|}
    in (0, 1], tanh|x| = (1 − t)/(1 + t); the absolute error is a few ulp of 1."""
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0.0, -y, y)


@triton.jit
def _dense_step_kernel(
    u_ptr,  # *u [m, B, D] float32, each u[i] contiguous
    w_ptr,  # *W [N, D, D] float32, contiguous (row j: the weights of output j)
    b_ptr,  # *b [N, D] float32
    idx_ptr,  # *idx [m] int64: the layer of each interval (read only with HAS_IDX)
    out_ptr,  # *out [m, B, D] float32, each out[i] contiguous
    B,  # batch rows per interval
    D,  # width
    su,  # elements from u[i] to u[i + 1] (B·D when u is contiguous; more for a strided view)
    so,  # elements from out[i] to out[i + 1]
    first,  # without HAS_IDX: interval i's layer is first + i·stride
    stride,
    scale,  # the step, span·h
    RELU: tl.constexpr,  # σ = relu, else tanh
    HAS_IDX: tl.constexpr,  # the layers are idx, else the progression first, first + stride, …
    BLOCK_B: tl.constexpr,  # batch rows per program
    BLOCK_J: tl.constexpr,  # output features per program
    BLOCK_K: tl.constexpr,  # reduction chunk
):
    i = tl.program_id(0).to(tl.int64)  # the interval
    pb = tl.program_id(1)  # tile of batch rows
    pj = tl.program_id(2)  # tile of output features
    if HAS_IDX:
        n = tl.load(idx_ptr + i)  # this interval's layer
    else:
        n = first + i * stride
    rows = pb * BLOCK_B + tl.arange(0, BLOCK_B)  # batch rows of the tile
    cols = pj * BLOCK_J + tl.arange(0, BLOCK_J)  # output features of the tile
    ks = tl.arange(0, BLOCK_K)  # reduction offsets within a chunk
    row_ok = rows < B  # ragged batch
    col_ok = cols < D  # ragged width
    u_base = u_ptr + i * su  # u[i]
    w_base = w_ptr + n * D * D  # W[n]
    acc = tl.zeros((BLOCK_B, BLOCK_J), dtype=tl.float32)  # z tile without the bias
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + ks  # this chunk's reduction indices
        k_ok = kk < D  # ragged last chunk
        a = tl.load(u_base + rows[:, None] * D + kk[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # u[i, rows, kk]
        wt = tl.load(w_base + cols[None, :] * D + kk[:, None],
                     mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # W[n, cols, kk]ᵀ
        acc = tl.dot(a, wt, acc, input_precision="ieee")  # z += u·Wᵀ, no TF32 rounding
    bias = tl.load(b_ptr + n * D + cols, mask=col_ok, other=0.0)  # b[n, cols]
    z = acc + bias[None, :]  # pre-activation
    if RELU:
        f = tl.maximum(z, 0.0)
    else:
        f = _tanh(z)
    tile = rows[:, None] * D + cols[None, :]  # offsets of the tile within u[i] / out[i]
    ok = row_ok[:, None] & col_ok[None, :]
    res = tl.load(u_base + tile, mask=ok, other=0.0)  # the residual u[i, rows, cols]
    tl.store(out_ptr + i * so + tile, res + scale * f, mask=ok)  # y + h·F(y)


@triton.jit
def _fas_correct_kernel(
    u_ptr,  # *u [P, S] float32, updated in place at the C-points
    v_ptr,  # *v [M, S] float32: the coarse solution
    uc_ptr,  # *u_c [M, S] float32: the injected fine values the coarse solve started from
    c_ptr,  # *c_index [M] int64, distinct
    S,  # elements of one state
    BLOCK: tl.constexpr,  # elements per program
):
    j = tl.program_id(0).to(tl.int64)  # the coarse point
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # elements of its state
    live = offs < S  # ragged last block
    c = tl.load(c_ptr + j)  # its fine index
    dv = (tl.load(v_ptr + j * S + offs, mask=live, other=0.0)
          - tl.load(uc_ptr + j * S + offs, mask=live, other=0.0))  # the coarse error
    target = u_ptr + c * S + offs
    tl.store(target, tl.load(target, mask=live, other=0.0) + dv, mask=live)


# --------------------------------------------------------------------------- wrappers


def _require_float32(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.dtype != torch.float32:
            raise TypeError(f"the Triton kernel takes float32, {name} is {t.dtype} "
                            "(use the *_torch path)")


def _tile(n: int, cap: int) -> int:
    """A power-of-two block ≥ 16 (tl.dot's minimum) covering `n` up to `cap`."""
    return max(16, min(cap, triton.next_power_of_2(max(n, 1))))


def _rows_contiguous(t: torch.Tensor) -> bool:
    """t [m, B, D] with each t[i] contiguous (a strided view along the intervals is fine)."""
    return t.stride(2) == 1 and (t.shape[1] <= 1 or t.stride(1) == t.shape[2])


def dense_step_triton(u: torch.Tensor, W: torch.Tensor, b: torch.Tensor, idx: torch.Tensor | None,
                      scale: float, activation: str, *, first: int = 0, stride: int = 1,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """`dense_step_torch` as one fused Triton launch (float32): grid m × batch tiles × width
    tiles, each program a [BLOCK_B, BLOCK_J] tile of z = u·Wᵀ + b, σ and the update.

    idx None: interval i's layer is first + i·stride (the MGRIT solver's progressions: no index
    tensor). u and `out` (written in place when given, else made) may be strided views along the
    intervals, as the solver's point sets are; each interval's [B, D] block must be contiguous."""
    require_triton()
    _check_dense(u, W, b, idx, activation)
    m, batch, width = u.shape
    last = first + stride * (m - 1)
    if idx is None and m and not (0 <= first < W.shape[0] and 0 <= last < W.shape[0]):
        raise ValueError(f"the layers {first}, {first + stride}, … {last} are not all in [0, {W.shape[0]})")
    _require_float32(u=u, W=W, b=b)
    u = u if _rows_contiguous(u) else u.contiguous()
    W, b = W.contiguous(), b.contiguous()
    if out is None:
        out = torch.empty_like(u, memory_format=torch.contiguous_format)
    elif out.shape != u.shape or out.dtype != u.dtype or not _rows_contiguous(out):
        raise ValueError(f"out must be a float32 [m, B, D] {tuple(u.shape)} with contiguous rows")
    if u.numel() == 0:
        return out
    idx_arg = u if idx is None else idx.to(u.device).contiguous()  # unread without HAS_IDX
    block_b, block_j, block_k = _tile(batch, 64), _tile(width, 64), _tile(width, 32)
    grid = (m, triton.cdiv(batch, block_b), triton.cdiv(width, block_j))
    _dense_step_kernel[grid](
        u, W, b, idx_arg, out, batch, width, u.stride(0), out.stride(0), first, stride, float(scale),
        RELU=activation == "relu", HAS_IDX=idx is not None,
        BLOCK_B=block_b, BLOCK_J=block_j, BLOCK_K=block_k,
    )
    return out


def fas_correct_triton(u: torch.Tensor, v: torch.Tensor, u_c: torch.Tensor,
                       c_index: torch.Tensor) -> None:
    """`fas_correct_torch` as one Triton launch (float32, contiguous u; c_index distinct, else
    programs of the same C-point race)."""
    require_triton()
    _check_fas(u, v, u_c, c_index)
    _require_float32(u=u, v=v, u_c=u_c)
    if not u.is_contiguous():
        raise ValueError("u must be contiguous (it is updated in place)")
    count = v.shape[0]
    size = v[0].numel() if count else 0
    if count == 0 or size == 0:
        return
    v, u_c, c_index = v.contiguous(), u_c.contiguous(), c_index.to(u.device).contiguous()
    block = min(1024, triton.next_power_of_2(size))
    _fas_correct_kernel[(count, triton.cdiv(size, block))](u, v, u_c, c_index, size, BLOCK=block)
