"""Propagators for MGRIT: the Euler steps of a residual stack, many intervals per call.

The MGRIT solver (layer-parallel training, seeds/layer-parallel-mgrit.md) never touches the
model: it calls a *propagator* that steps many time intervals at once. On level l an interval
starting at fine layer n with coarsening span s is ONE Euler step of size s·h with the weights
of fine layer n:

    Φ(n, s)(u) = u + s·h·F_n(u),         F_n(u) = σ(W_n u + b_n)   (dense)
                                                   σ(K_n * u + b_n) (3×3 same-padded conv)

(s = 1 is the network's own layer). The backward solve needs the transposed Jacobian of the same
steps, (∂Φ(n, s)/∂u at y)ᵀ λ, and the parameter gradients are taken on the fine level only:
∂θ_n = (∂Φ_n/∂θ_n at y_n)ᵀ λ_{n+1}.

Two entries. The public `step(start, span, u)` / `vjp(start, span, y, lam)` take any start
tensor and check it (for outside callers and tests). The MGRIT solver's calls always cover an
arithmetic progression of intervals — fine starts first, first + stride, … — so it calls
`step_at(first, stride, span, u, out, add)` (out = Φ(u) + add, written into `out`, a strided
view of the solver's states), `sweep_at` (the coarsest level's serial sweep, in place) and, for
the adjoint, the same two on `linearized(states)`: no checks, no index tensors, no host syncs;
the weights are strided views of the stacks.

* `StackPropagator(stack)` is the fast path for mrc's `ResidualStack` of `DenseStep`s or
  `ConvStep`s: the layers' weights are stacked into one tensor, so a call over m intervals is one
  batched matrix product (dense) or one grouped convolution (conv), whatever m is. Its adjoint
  (`StackAdjoint`) is analytic: σ'(z_n) of every layer is made once per backward solve (z_n does
  not depend on the span), and each call is σ'(z) ⊙ λ and one transposed product.
* `GenericPropagator(layers, h)` takes any step modules F_n. The public calls loop over the
  intervals (the reference the fast path is tested against); the solver's calls run all
  intervals as one `torch.func.vmap` of `functional_call` over the layers' parameters, stacked
  by `refresh()` (once per solve, as a `StackPropagator`'s), and differentiate it with
  `torch.func.vjp` — or loop, where the layers differ or do not vmap.
* `propagator_for(stack)` picks the first when it applies and the second otherwise.

Both work on detached tensors and never build an autograd graph of their own results (the
solver runs outside autograd); parameter gradients are accumulated into `.grad` directly.

Weights: a `StackPropagator` copies the current parameter values into its stacks at
construction and at each `refresh()`. The parameters change at every optimizer step, so the
integration calls `refresh()` once at the start of each forward and each backward solve (the
cost is one copy of the stack's weights; `is_stale()` says whether they moved since). Over a
stack whose parameters are stacked (`storage`, mrc/lower/stacked.py) it reads the storage
itself: nothing is copied, `refresh()` does nothing, and `param_grads` writes one gradient per
stacked tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F

from mrc.models.ode_resnet import ConvStep, DenseStep
from mrc.techniques.mgrit.solver import sweep_by_steps

__all__ = ["GenericAdjoint", "GenericPropagator", "Propagator", "StackAdjoint", "StackPropagator",
           "propagator_for"]

Kernel = Literal["torch", "triton"]


@runtime_checkable
class Propagator(Protocol):
    """What the MGRIT solver calls: batched coarse/fine Euler steps and their adjoints."""

    def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        """u[i] + span·h·F_{start[i]}(u[i]) for the m intervals: u [m, *state], start long [m]."""
        ...

    def vjp(self, start: torch.Tensor, span: int, y: torch.Tensor,
            lam: torch.Tensor) -> torch.Tensor:
        """(∂Φ(start[i], span)/∂u at y[i])ᵀ lam[i] for the m intervals, [m, *state]."""
        ...


def _tanh_(z: torch.Tensor) -> torch.Tensor:
    """tanh z in place. In float32, as 2·sigmoid(2z) − 1: four elementwise ops that run ≈ 6× faster
    than the CPU's `tanh` kernel (≈ 2 ns an element in torch 2.13's CPU build, sigmoid ≈ 0.2 ns;
    bench/RESULTS.md), which was a third of a solve's time; the two agree to ≈ 2e-7 absolute, an
    ulp of 1 (the rounding of the Euler step's add), and the serial network keeps torch's tanh, so
    a converged solve equals serial propagation to rounding. The vectorised sigmoid rounds a
    vector's tail differently from its body, so the last bits depend on how intervals are batched:
    float64, where solves are checked bit for bit against other batchings (across ranks, the
    unbatched reference), keeps torch's tanh, whose result does not depend on it."""
    if z.dtype != torch.float32:
        return z.tanh_()
    return z.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


def _act(name: str, z: torch.Tensor) -> torch.Tensor:
    return _tanh_(z.clone()) if name == "tanh" else torch.relu(z)


def _act_grad(name: str, z: torch.Tensor) -> torch.Tensor:
    """σ'(z): 1 − tanh² z, or the relu step with σ'(0) = 0 (as autograd's threshold_backward)."""
    if name == "tanh":
        t = _tanh_(z.clone())
        return 1.0 - t * t
    return (z > 0).to(z.dtype)


def _act_(name: str, z: torch.Tensor) -> torch.Tensor:
    """σ(z) in place (z is a temporary)."""
    return _tanh_(z) if name == "tanh" else torch.relu_(z)


def _saved(name: str, z: torch.Tensor) -> torch.Tensor:
    """What σ'(z) is computed from (`_act_vjp`): tanh z (in place), or z itself for relu."""
    return _tanh_(z) if name == "tanh" else z


def _act_vjp(name: str, lam: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
    """σ'(z) ⊙ lam in one op, as autograd computes it: from t = tanh z (tanh_backward) or from z
    itself (threshold_backward: σ'(0) = 0 for relu)."""
    if name == "tanh":
        return torch.ops.aten.tanh_backward(lam, saved)
    return torch.ops.aten.threshold_backward(lam, saved, 0)


def _dense_zt(b_col: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """z = u Wᵀ + b for u [m, batch, w] as (b + W uᵀ)ᵀ: one batched product [w, w] × [w, batch]
    (b_col [m, w, 1]), returned as a [m, batch, w] view of its [m, w, batch] result."""
    return torch.baddbmm(b_col, w, u.transpose(1, 2)).transpose(1, 2)


def _dense_euler(u: torch.Tensor, w: torch.Tensor, b_col: torch.Tensor, scale: float, activation: str,
                 out: torch.Tensor | None, add: torch.Tensor | None = None) -> torch.Tensor:
    """u + scale·σ(u Wᵀ + b) (+ add) for u [m, batch, w] (into `out` when given), `_dense_zt`'s
    product. A float32 tanh step folds `_tanh_`'s form into the product and the adds, two ops
    fewer: u + s·tanh z = (u + 2s·σ(2z)) + (add − s), with 2z = 2·(W uᵀ) + 2·b made by the product
    itself (scaling by 2 is exact); `StackPropagator.sweep_at` makes the same numbers."""
    if _fused_tanh(activation, u):
        f = torch.baddbmm(b_col, w, u.transpose(1, 2), beta=2.0, alpha=2.0).sigmoid_().transpose(1, 2)
        got = torch.add(u, f, alpha=2.0 * scale) if out is None else torch.add(u, f, alpha=2.0 * scale, out=out)
        return got.sub_(scale) if add is None else got.add_(add.sub(scale))
    f = _act_(activation, _dense_zt(b_col, w, u))
    got = torch.add(u, f, alpha=scale) if out is None else torch.add(u, f, alpha=scale, out=out)
    return got if add is None else got.add_(add)


def _fused_tanh(activation: str, u: torch.Tensor) -> bool:
    """Whether a dense step takes `_dense_euler`'s folded float32 tanh (`_tanh_`'s form)."""
    return activation == "tanh" and u.dtype == torch.float32


def _dense_vjp(lam: torch.Tensor, g: torch.Tensor, w: torch.Tensor, scale: float) -> torch.Tensor:
    """lam + scale·g W for lam, g [m, batch, w], as (lamᵀ + scale·Wᵀ gᵀ)ᵀ (`_dense_zt`'s form);
    a [m, batch, w] view of a fresh [m, w, batch] tensor."""
    return torch.baddbmm(lam.transpose(1, 2), w.transpose(1, 2), g.transpose(1, 2), alpha=scale).transpose(1, 2)


def _check_span(span: int) -> int:
    if isinstance(span, bool) or int(span) != span or span < 1:
        raise ValueError(f"span must be a positive integer, not {span!r}")
    return int(span)


def _check_start(start: torch.Tensor, m: int, depth: int) -> None:
    if start.dim() != 1 or start.shape[0] != m or start.dtype != torch.long:
        raise ValueError(f"start must be a long tensor of shape [{m}] (one per interval), got "
                         f"{start.dtype} {tuple(start.shape)}")
    # Range check on the CPU only: on a GPU it would synchronise every call (the gather then
    # raises a device-side assert instead).
    if start.device.type == "cpu" and m and not (0 <= int(start.min()) and int(start.max()) < depth):
        raise IndexError(f"start indices must lie in [0, {depth}), got {start.tolist()}")


def _accumulate(param: nn.Parameter, grad: torch.Tensor, fresh: bool = False) -> None:
    """param.grad += grad, creating it when absent (as autograd accumulates). `fresh`: grad is
    a new tensor of the parameter's shape that nothing else holds, so it becomes .grad as is."""
    if not param.requires_grad:
        return
    if param.grad is None:
        param.grad = grad if fresh else grad.detach().clone().reshape(param.shape)
    else:
        param.grad.add_(grad if fresh else grad.reshape(param.shape))


def _tensor_key(t: torch.Tensor) -> tuple[Any, ...]:
    """The memory, layout and version of a tensor: equal for the same view of unchanged memory."""
    return (t.data_ptr(), t.shape, t.stride(), t.dtype, t.device, t._version)


class StackPropagator:
    """Batched propagator for a `ResidualStack` of `DenseStep`s or of `ConvStep`s.

    Dense: the weights are stacked as W [N, w, w], b [N, w]; `step` over m intervals gathers
    W[start], b[start] and does one `baddbmm` (u [m, batch, w]), as W uᵀ + b: the solver's states
    are kept features first (`new_states`), so the product reads and writes [w, batch] matrices.
    Conv: the weights are stacked as K [N, C, C, 3, 3], b [N, C]; the m intervals become the
    groups of one grouped convolution (u [m, B, C, H, W] → [B, m·C, H, W], weights [m·C, C, 3, 3],
    groups = m), and the adjoint is the matching grouped transposed convolution.

    `kernel="triton"` runs the dense `step` as the fused Triton kernel (`kernels/mgrit.py`) for
    float32 CUDA tensors; everything else (CPU, float64, conv, `vjp`, `param_grads`) takes the
    torch path. Over stacked storage (`storage`, mrc/lower/stacked.py) the weights are the
    storage itself, read in place; otherwise a copy made at construction and by `refresh()`
    (module docstring): call it once per solve.
    """

    _view_key: tuple[int, ...] = ()  # the stacks (ids, versions) `_view_cache` was made from
    _linearized: StackAdjoint | None = None  # the last `linearized` (until `param_grads` reads it)
    _view_cache: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]]

    def __init__(self, stack: nn.Module, kernel: Kernel = "torch", storage: Any = None) -> None:
        if kernel not in ("torch", "triton"):
            raise ValueError(f"kernel must be 'torch' or 'triton', not {kernel!r}")
        layers = list(getattr(stack, "layers", ()))
        if not layers or not hasattr(stack, "h"):
            raise TypeError("StackPropagator needs a ResidualStack (`layers` and `h`); "
                            "use GenericPropagator for other step functions")
        kinds = {type(layer) for layer in layers}
        if kinds == {DenseStep}:
            self.kind: Literal["dense", "conv"] = "dense"
        elif kinds == {ConvStep}:
            self.kind = "conv"
            for layer in layers:
                if (tuple(layer.stride) != (1, 1) or tuple(layer.dilation) != (1, 1)
                        or layer.groups != 1 or layer.padding_mode != "zeros"
                        or tuple(layer.kernel_size) != (3, 3)
                        or tuple(layer.padding) != (1, 1) or layer.bias is None):
                    raise TypeError("StackPropagator takes 3×3, stride-1, zero-padded (1) "
                                    "ConvSteps with bias; use GenericPropagator")
        else:
            names = ", ".join(sorted(k.__name__ for k in kinds))
            raise TypeError(f"StackPropagator takes layers that are all DenseStep or all "
                            f"ConvStep, not {names}; use GenericPropagator")
        activations = {layer.activation for layer in layers}
        if len(activations) != 1 or not activations <= {"tanh", "relu"}:
            raise TypeError(f"StackPropagator needs one activation (tanh or relu) for all "
                            f"layers, got {sorted(activations)}; use GenericPropagator")
        self.layers: list[nn.Module] = layers
        self.h = float(stack.h)
        self.activation: str = activations.pop()
        self.kernel: Kernel = kernel
        self.storage = storage
        """The stack's stacked parameters (mrc.lower.stacked.StackStorage: `weight`, `bias` and
        the group Parameters over them), read in place; None: copies made by `refresh()`."""
        self.weight = torch.empty(0) if storage is None else storage.weight
        self.bias = torch.empty(0) if storage is None else storage.bias
        self._versions: tuple[int, ...] = ()
        self.refresh()

    def __len__(self) -> int:
        return len(self.layers)

    # ------------------------------------------------------------------ weights

    def _params(self) -> list[torch.Tensor]:
        return [p for layer in self.layers for p in (layer.weight, layer.bias)]

    def refresh(self) -> None:
        """Re-stack the layers' current weights (call at the start of each forward/backward
        solve: the optimizer moves them between solves, and `step`/`vjp`/`param_grads` read
        the stacks, not the modules). Over stacked storage nothing is copied: the stacks are the
        storage's (read again, as a fused kernel's flat buffer may have taken them over)."""
        if self.storage is not None:
            self.weight, self.bias = self.storage.weight, self.storage.bias
            return
        with torch.no_grad():
            self.weight = torch.stack([layer.weight.detach() for layer in self.layers])
            self.bias = torch.stack([layer.bias.detach() for layer in self.layers])
        self._versions = tuple(p._version for p in self._params())

    def is_stale(self) -> bool:
        """True when a parameter changed in place since the last `refresh()` (its version
        counter moved): a check for tests and debugging, O(N) in Python. Stacked storage is
        never stale."""
        if self.storage is not None:
            return False
        return tuple(p._version for p in self._params()) != self._versions

    # ------------------------------------------------------------------ dense

    def _dense_z(self, idx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z[i] = y[i] @ W[idx[i]]ᵀ + b[idx[i]] for y [m, batch, w], computed as (W yᵀ + b)ᵀ
        (`_dense_zt`: see `new_states`); a [m, batch, w] view of a [m, w, batch] tensor."""
        return _dense_zt(self.bias[idx].unsqueeze(2), self.weight[idx], y)

    def new_states(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised states tensor `shape` = [n, batch, w] for the solver (`new_states_of`):
        dense on the torch kernel, a [n, batch, w] view of a [n, w, batch] tensor (features first),
        so that each step's product W uᵀ reads its operand and writes its result contiguously. The
        CPU's batched matmul runs [w, w] × [w, batch] ≈ 2.5× faster than [batch, w] × [w, w] at
        w = 8, batch 64 (and the same at w = 32; bench/RESULTS.md), and every elementwise op of a
        step then reads and writes matching strides. Conv and the Triton kernel (which takes
        contiguous rows): `like`'s own layout."""
        if self.kind == "dense" and self.kernel == "torch" and len(shape) == 3:
            n, batch, w = shape
            return torch.empty(n, w, batch, dtype=like.dtype, device=like.device).transpose(1, 2)
        return like.new_empty(shape)

    # ------------------------------------------------------------------ conv

    @staticmethod
    def _to_groups(u: torch.Tensor) -> torch.Tensor:
        """[m, B, C, H, W] → [B, m·C, H, W]: interval i's channels are group i."""
        m, batch, c, hh, ww = u.shape
        return u.transpose(0, 1).reshape(batch, m * c, hh, ww)

    @staticmethod
    def _from_groups(x: torch.Tensor, m: int) -> torch.Tensor:
        """[B, m·C, H, W] → [m, B, C, H, W] (contiguous)."""
        batch, mc, hh, ww = x.shape
        return x.reshape(batch, m, mc // m, hh, ww).transpose(0, 1).contiguous()

    def _conv_z(self, idx: torch.Tensor, x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, K) with z = K * x + b grouped over the m intervals, x [B, m·C, H, W]."""
        k = self.weight[idx].reshape(-1, *self.weight.shape[2:])  # [m·C, C, 3, 3]
        return F.conv2d(x, k, self.bias[idx].reshape(-1), padding=1, groups=m), k

    # ------------------------------------------------------------------ protocol

    def _check(self, start: torch.Tensor, span: int, u: torch.Tensor) -> tuple[torch.Tensor, int]:
        span = _check_span(span)
        want = 3 if self.kind == "dense" else 5
        if u.dim() != want:
            state = "[batch, width]" if self.kind == "dense" else "[batch, C, H, W]"
            raise ValueError(f"u must be [m, *state] with state {state}, got {tuple(u.shape)}")
        _check_start(start, u.shape[0], len(self.layers))
        return start.to(self.weight.device), span

    def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        """u[i] + span·h·F_{start[i]}(u[i]) for m intervals in one batched call, [m, *state]."""
        idx, span = self._check(start, span, u)
        scale = span * self.h
        with torch.no_grad():
            u = u.detach()
            if self.kind == "dense":
                if self.kernel == "triton" and u.is_cuda and u.dtype == torch.float32:
                    # Imported here: importing mrc.kernels.mgrit imports Triton (house style).
                    from mrc.kernels.mgrit import dense_step_triton

                    return dense_step_triton(u, self.weight, self.bias, idx, scale,
                                             self.activation)
                return u + scale * _act(self.activation, self._dense_z(idx, u))
            m = u.shape[0]
            z, _ = self._conv_z(idx, self._to_groups(u), m)
            return u + scale * self._from_groups(_act(self.activation, z), m)

    def vjp(self, start: torch.Tensor, span: int, y: torch.Tensor,
            lam: torch.Tensor) -> torch.Tensor:
        """(∂Φ(start[i], span)/∂u at y[i])ᵀ lam[i] = lam + span·h·J_Fᵀ lam, batched; z is
        recomputed from y (dense: (σ'(z) ⊙ lam) @ W; conv: grouped transposed convolution)."""
        idx, span = self._check(start, span, y)
        if lam.shape != y.shape:
            raise ValueError(f"lam must have y's shape {tuple(y.shape)}, got {tuple(lam.shape)}")
        return self.vjp_unchecked(idx, span, y, lam)

    def vjp_unchecked(self, idx: torch.Tensor, span: int, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """`vjp` without its checks (no host sync): for a caller whose starts `idx` (long, on the
        stacks' device, in range) and shapes are right by construction (the adjoint across ranks)."""
        scale = span * self.h
        with torch.no_grad():
            y, lam = y.detach(), lam.detach()
            if self.kind == "dense":
                g = _act_vjp(self.activation, lam, _saved(self.activation, self._dense_z(idx, y)))
                return _dense_vjp(lam, g, self.weight[idx], scale)
            m = y.shape[0]
            z, k = self._conv_z(idx, self._to_groups(y), m)
            g = _act_vjp(self.activation, self._to_groups(lam), _saved(self.activation, z))
            back = F.conv_transpose2d(g, k, padding=1, groups=m)
            return lam + scale * self._from_groups(back, m)

    # ------------------------------------------------------------------ the solver's entry

    def _views(self, first: int, stride: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights of layers first, first + stride, … (m of them) as the step reads them —
        dense: W [m, w, w] and b [m, w, 1], strided views; conv: K [m·C, C, 3, 3] and b [m·C]
        — kept while the stacks are the same tensors, unchanged (a solve asks for the same few
        progressions every iteration)."""
        weight = self.weight
        if self._view_key != (id(weight), weight._version, id(self.bias), self.bias._version):
            self._view_cache = {}
            self._view_key = (id(weight), weight._version, id(self.bias), self.bias._version)
        got = self._view_cache.get((first, stride, m))
        if got is None:
            layers = slice(first, first + stride * (m - 1) + 1, stride)
            if self.kind == "dense":
                got = weight[layers], self.bias[layers].unsqueeze(2)
            else:
                got = weight[layers].reshape(-1, *weight.shape[2:]), self.bias[layers].reshape(-1)
            self._view_cache[(first, stride, m)] = got
        return got

    def step_at(self, first: int, stride: int, span: int, u: torch.Tensor, out: torch.Tensor | None = None,
                add: torch.Tensor | None = None) -> torch.Tensor:
        """out[i] = u[i] + span·h·F_{first+i·stride}(u[i]) (+ add[i]) for the m = u.shape[0] ≥ 1
        intervals starting at first, first + stride, …: the MGRIT solver's call. No checks and no
        gathers (the layers are a strided view of the stacks); `out` may be a strided view of the
        solver's states (not overlapping u), written in place. The stacks are those of the last
        `refresh()`."""
        m, scale = u.shape[0], span * self.h
        with torch.no_grad():
            if self.kind == "dense":
                if self.kernel == "triton" and u.is_cuda and u.dtype == torch.float32:
                    from mrc.kernels.mgrit import dense_step_triton

                    got = dense_step_triton(u, self.weight, self.bias, None, scale, self.activation,
                                            first=first, stride=stride, out=out)
                    return got if add is None else got.add_(add)
                w, b = self._views(first, stride, m)
                return _dense_euler(u, w, b, scale, self.activation, out, add)
            k, b = self._views(first, stride, m)
            z = F.conv2d(self._to_groups(u), k, b, padding=1, groups=m)
            f = _act_(self.activation, z).unflatten(1, (m, -1)).transpose(0, 1)  # [m, B, C, H, W] view
            out = torch.add(u, f, alpha=scale) if out is None else torch.add(u, f, alpha=scale, out=out)
            return out if add is None else out.add_(add)

    def sweep_at(self, first: int, stride: int, span: int, u: torch.Tensor, g: torch.Tensor | None) -> None:
        """The serial sweep u[k] = Φ(first + (k−1)·stride, span)(u[k−1]) (+ g[k]), k = 1 … n, in place on
        u [n + 1, *state] (the coarsest level's solve): dense, the n layers' weights and the states are
        split once, so a point costs `step_at`'s ops (`_dense_euler`: its arithmetic, so a sweep equals
        its steps bit for bit) and the add of g."""
        n = u.shape[0] - 1
        if self.kind != "dense" or n == 0 or (self.kernel == "triton" and u.is_cuda):
            sweep_by_steps(self.step_at, first, stride, span, u, g)
            return
        layers = slice(first, first + stride * (n - 1) + 1, stride)
        scale = span * self.h
        with torch.no_grad():
            ws, bs = self.weight[layers].split(1), self.bias[layers].unsqueeze(2).split(1)
            if not _fused_tanh(self.activation, u):
                us, gs = u.split(1), (g.split(1) if g is not None else None)
                for k in range(1, n + 1):
                    _dense_euler(us[k - 1], ws[k - 1], bs[k - 1], scale, self.activation, us[k],
                                 None if gs is None else gs[k])
                return
            # `_dense_euler`'s folded tanh on the states' transposes [w, batch] (no transposes per point),
            # with g − s made once for all the points
            uts = u.transpose(1, 2).split(1)
            gts = g.transpose(1, 2).sub(scale).split(1) if g is not None else None
            for k in range(1, n + 1):
                f = torch.baddbmm(bs[k - 1], ws[k - 1], uts[k - 1], beta=2.0, alpha=2.0).sigmoid_()
                torch.add(uts[k - 1], f, alpha=2.0 * scale, out=uts[k])
                if gts is None:
                    uts[k].sub_(scale)
                else:
                    uts[k].add_(gts[k])

    def linearized(self, states: torch.Tensor) -> StackAdjoint:
        """The adjoint steps about the fine states [N + 1, *state] of a forward solve, in reversed
        time: the propagator of the MGRIT adjoint (`mrc.techniques.mgrit.solver.Adjoint`)."""
        adjoint = StackAdjoint(self, states)
        self._linearized = adjoint  # its σ'(z) serves `param_grads` about the same states
        return adjoint

    def linearized_part(self, states: torch.Tensor, first: int,
                        extra: tuple[int, int, torch.Tensor]) -> StackAdjoint:
        """The adjoint steps of a part of the stack, in reversed time: layers first … first + n − 1 about
        `states` [n + 1, *state] (y_first … y_first+n) and the layers of `extra` (f, stride, ys) about ys —
        a rank's adjoint block and the coarsest level's points (mrc/techniques/mgrit/ranks.py). σ'(z) is
        made for those layers only; `param_grads(states, λ, first)` reuses the block's."""
        adjoint = StackAdjoint(self, states, first, extra)
        self._linearized = adjoint
        return adjoint

    def param_grads(self, states: torch.Tensor, lambdas: torch.Tensor, first: int = 0) -> None:
        """Accumulate into each layer's `.weight.grad` / `.bias.grad` the fine-level gradient
        (∂Φ_n/∂θ_n at y_n)ᵀ λ_{n+1}, all layers in one batched call.

        `states[i]` = y_{first+i} and `lambdas[i]` = λ_{first+i}, both [n+1, *state]: layer
        first+i reads y_{first+i} and λ_{first+i+1} (the last state and the first λ are unused);
        first = 0 and n = N is the whole stack, a block of it is one rank's share (ranks.py).
        Dense: with g_n = h·σ'(z_n) ⊙ λ_{n+1}, dW_n = g_nᵀ y_n and db_n = Σ_batch g_n; conv: dK_n
        is the grouped `conv2d_weight`. Existing gradients are added to (created where None), as
        autograd does.
        """
        n_layers = states.shape[0] - 1
        if states.shape != lambdas.shape or not 0 <= first or first + n_layers > len(self.layers):
            raise ValueError(f"states and lambdas must both be [n+1, *state] for layers first … first+n-1 of "
                             f"{len(self.layers)}, got {tuple(states.shape)} and {tuple(lambdas.shape)} "
                             f"from layer {first}")
        idx = torch.arange(first, first + n_layers, device=self.weight.device)
        linear, self._linearized = self._linearized, None
        with torch.no_grad():
            y, lam = states[:-1].detach(), lambdas[1:].detach()
            if self.kind == "dense":
                if linear is not None and linear.forward_saved is not None and linear.reads(states, first):
                    # the adjoint solve's σ'(z) about these very states: not made again
                    g = _act_vjp(self.activation, lam, linear.forward_saved).mul_(self.h)
                else:
                    g = self.h * _act_grad(self.activation, self._dense_z(idx, y)) * lam
                d_weight = torch.bmm(g.transpose(1, 2), y)  # [N, w, w]
                d_bias = g.sum(dim=1)  # [N, w]
            else:
                x = self._to_groups(y)
                z, k = self._conv_z(idx, x, n_layers)
                g = self.h * _act_grad(self.activation, z) * self._to_groups(lam)
                d_weight = torch.nn.grad.conv2d_weight(x, k.shape, g, padding=1,
                                                       groups=n_layers)
                d_weight = d_weight.reshape(n_layers, *self.weight.shape[1:])
                d_bias = g.sum(dim=(0, 2, 3)).reshape(n_layers, *self.bias.shape[1:])
            if self.storage is not None:  # one gradient per stacked tensor: its rows of the batch
                for groups, d in ((self.storage.weights, d_weight), (self.storage.biases, d_bias)):
                    for group, a, b in groups:
                        lo, hi = max(a, first), min(b, first + n_layers)
                        if (lo, hi) == (a, b):  # rows of d, owned by nobody else: .grad as they are
                            _accumulate(group, d[lo - first:hi - first], fresh=True)
                        elif lo < hi:  # a block of ranks that covers part of the group
                            _accumulate(group, torch.zeros_like(group), fresh=True)
                            group.grad[lo - a:hi - a].add_(d[lo - first:hi - first])
                return
            # unbind: one call for all n views (each already the parameter's shape and owned by
            # nobody else, so a missing .grad takes the view itself, not a clone)
            layers = self.layers[first:first + n_layers]
            for layer, dw, db in zip(layers, d_weight.unbind(0), d_bias.unbind(0), strict=True):
                _accumulate(layer.weight, dw, fresh=True)
                _accumulate(layer.bias, db, fresh=True)


class StackAdjoint:
    """The adjoint steps of a `StackPropagator` about fixed forward states, in reversed time.

    Ψ over reversed [m, m + span) is (∂Φ(N − m − span, span)/∂u at y_{N−m−span})ᵀ (see
    `mrc.techniques.mgrit.solver.Adjoint`). Φ(f, span) reads layer f's z_f = W_f y_f + b_f,
    whatever the span, so σ'(z_f) is made once here for all N layers (one batched product: the
    activations tanh z, or z for relu), in reversed order with the weights, and each call is
    two ops: σ'(z) ⊙ λ (as autograd's tanh/threshold backward) and one `baddbmm` (dense) or
    grouped transposed convolution (conv), on strided views — no gathers, no recomputed z.
    """

    def __init__(self, prop: StackPropagator, states: torch.Tensor, first: int = 0,
                 extra: tuple[int, int, torch.Tensor] | None = None) -> None:
        """`states` [n + 1, *state] are y_first … y_first+n: the steps of layers first … first + n − 1 are
        linearised about them (`param_grads` reuses their σ'(z)); the whole stack is first = 0, n = N.
        A part of the stack (a rank's adjoint block, mrc/techniques/mgrit/ranks.py) also names `extra`
        = (f, stride, ys): further layers f, f + stride, … and their states ys [m, *state] (the coarsest
        level's points, which every rank sweeps). A step over a layer in neither reads a σ'(z) never
        made: only a solve whose calls stay inside the part's layers may leave layers out."""
        n, depth = states.shape[0] - 1, len(prop)
        if n < 1 or first < 0 or first + n > depth or (extra is None and (first, n) != (0, depth)):
            raise ValueError(f"states must be the {depth + 1} points of the stack, or a part's from layer "
                             f"{first} with its extra layers; got {n + 1} points")
        self.kind, self.activation, self.h = prop.kind, prop.activation, prop.h
        self.states, self.first = states, first
        self.forward_saved: torch.Tensor | None = None
        """Dense: what σ'(z_n) of layers first … first + n − 1 is made from, in forward order (`param_grads`
        reuses it)."""
        self._key = _tensor_key(states)
        dim = 0 if prop.kind == "dense" else 1  # the layer dimension of what σ'(z) is made from
        with torch.no_grad():
            block = self._made(prop, first, 1, states[:-1].detach())
            if prop.kind == "dense":
                self.forward_saved = block
            if extra is None:  # the whole stack
                # reversed (in features-first memory for dense, as the adjoint's states are: `new_states`)
                self.saved = (block.transpose(1, 2).flip(0).transpose(1, 2) if prop.kind == "dense"
                              else block.flip(1))
            else:  # a part: each piece's rows at their reversed layers N − 1 − f, the rest never read
                pieces = [(first, 1, block)]
                if extra[2].shape[0]:
                    pieces.append((extra[0], extra[1], self._made(prop, extra[0], extra[1], extra[2].detach())))
                if prop.kind == "dense":  # [N, B, w] in [N, w, B] memory
                    self.saved = block.new_empty(depth, block.shape[2], block.shape[1]).transpose(1, 2)
                else:  # [B, N, C, H, W]
                    self.saved = block.new_empty(block.shape[0], depth, *block.shape[2:])
                for f, stride, made in pieces:
                    m = made.shape[dim]
                    rows = slice(depth - 1 - f - stride * (m - 1), depth - f, stride)
                    self.saved[(slice(None),) * dim + (rows,)].copy_(made.flip(dim))
            self.weight = prop.weight.flip(0)
        # each progression's views of σ'(z)'s tensor and of the weights (the stacks are fixed for the solve)
        self._views: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def _made(prop: StackPropagator, first: int, stride: int, ys: torch.Tensor) -> torch.Tensor:
        """What σ'(z) is made from for layers first, first + stride, … about ys [m, *state], in forward
        order: dense [m, B, w] (features first), conv [B, m, C, H, W]."""
        m = ys.shape[0]
        layers = slice(first, first + stride * (m - 1) + 1, stride)
        if prop.kind == "dense":
            return _saved(prop.activation, _dense_zt(prop.bias[layers].unsqueeze(2), prop.weight[layers], ys))
        k = prop.weight[layers].reshape(-1, *prop.weight.shape[2:])
        z = F.conv2d(prop._to_groups(ys), k, prop.bias[layers].reshape(-1), padding=1, groups=m)
        return _saved(prop.activation, z.unflatten(1, (m, -1)))

    def reads(self, states: torch.Tensor, first: int) -> bool:
        """Whether `states` from layer `first` are the very states (same memory, unchanged) this adjoint
        linearised its own layers about: then their σ'(z) is `forward_saved`."""
        return first == self.first and _tensor_key(states) == self._key

    def step_at(self, first: int, stride: int, span: int, lam: torch.Tensor, out: torch.Tensor | None = None,
                add: torch.Tensor | None = None) -> torch.Tensor:
        """out[i] = Ψ over reversed [first + i·stride, … + span) of lam[i] (+ add[i]): lam + span·h·
        J_Fᵀ lam with the layer N − first − span − i·stride (`StackPropagator.step_at`'s contract)."""
        m, scale = lam.shape[0], span * self.h
        k0 = first + span - 1  # the reversed index of the interval's forward layer
        views = self._views.get((k0, stride, m))
        if views is None:
            layers = slice(k0, k0 + stride * (m - 1) + 1, stride)
            views = self._views[(k0, stride, m)] = (
                (self.saved[layers], self.weight[layers]) if self.kind == "dense"
                else (self.saved[:, layers], self.weight[layers].reshape(-1, *self.weight.shape[2:])))
        saved, weight = views
        with torch.no_grad():
            if self.kind == "dense":
                g = _act_vjp(self.activation, lam, saved)
                # into a fresh result, then copied: the CPU's batched matmul writes a strided `out`
                # one matrix at a time (2× slower at w = 8); same bits
                res = _dense_vjp(lam, g, weight, scale)
                out = res if out is None else out.copy_(res)
                return out if add is None else out.add_(add)
            g = _act_vjp(self.activation, lam.transpose(0, 1), saved)  # [B, m, C, H, W]
            back = F.conv_transpose2d(g.flatten(1, 2), weight, padding=1, groups=m)
            back = back.unflatten(1, (m, -1)).transpose(0, 1)
            out = torch.add(lam, back, alpha=scale) if out is None else torch.add(lam, back, alpha=scale, out=out)
            return out if add is None else out.add_(add)


    def sweep_at(self, first: int, stride: int, span: int, lam: torch.Tensor, g: torch.Tensor | None) -> None:
        """The serial sweep in reversed time, in place on lam [n + 1, *state] (`StackPropagator.sweep_at`)."""
        n = lam.shape[0] - 1
        if self.kind != "dense" or n == 0:
            sweep_by_steps(self.step_at, first, stride, span, lam, g)
            return
        k0 = first + span - 1
        layers = slice(k0, k0 + stride * (n - 1) + 1, stride)
        with torch.no_grad():  # on the transposes [w, batch] (`_dense_vjp`'s product, no transposes per point)
            ws, saved = self.weight[layers].transpose(1, 2).split(1), self.saved[layers].transpose(1, 2).split(1)
            ls, gs = lam.transpose(1, 2).split(1), (g.transpose(1, 2).split(1) if g is not None else None)
            for k in range(1, n + 1):
                d = _act_vjp(self.activation, ls[k - 1], saved[k - 1])
                torch.baddbmm(ls[k - 1], ws[k - 1], d, alpha=span * self.h, out=ls[k])
                if gs is not None:
                    ls[k].add_(gs[k])


def _stacking_problem(layers: Sequence[nn.Module]) -> str | None:
    """Why the layers cannot run as one module over stacked parameters (torch.func.vmap of
    `functional_call`), or None: they must share a class, parameter and buffer names, shapes and
    dtypes, and every other attribute of every submodule (one layer's code runs for all)."""
    if not layers:
        return "the stack has no layers"
    first = layers[0]
    if not any(True for _ in first.parameters()):
        return "the layers have no parameters"
    for n, layer in enumerate(layers[1:], 1):
        if type(layer) is not type(first):
            return f"layer {n} is a {type(layer).__name__}, layer 0 a {type(first).__name__}"
        mods, ref = dict(layer.named_modules()), dict(first.named_modules())
        if mods.keys() != ref.keys():
            return f"layer {n} has other submodules than layer 0"
        for name, mod in mods.items():
            other = ref[name]
            if type(mod) is not type(other):
                return f"layer {n}'s submodule `{name}` is a {type(mod).__name__}, layer 0's a {type(other).__name__}"
            for kind in ("_parameters", "_buffers"):
                a, b = getattr(mod, kind), getattr(other, kind)
                if a.keys() != b.keys() or any(
                        (a[k] is None) != (b[k] is None)
                        or (a[k] is not None and (a[k].shape != b[k].shape or a[k].dtype != b[k].dtype))
                        for k in a):
                    return f"layer {n}'s `{name or 'self'}` differs from layer 0's in its {kind[1:]}"
            skip = {"_parameters", "_buffers", "_modules"}
            plain = {k: v for k, v in vars(mod).items() if k not in skip}
            base = {k: v for k, v in vars(other).items() if k not in skip}
            try:
                same = plain.keys() == base.keys() and all(plain[k] is base[k] or bool(plain[k] == base[k])
                                                            for k in plain)
            except Exception:  # an attribute whose == is not a plain truth value: cannot tell
                same = False
            if not same:
                return f"layer {n}'s `{name or 'self'}` has attributes that differ from layer 0's"
    return None


class GenericPropagator:
    """Propagator for any step modules F_n (Φ_n(u) = u + h·F_n(u)).

    The public `step`/`vjp` loop over the intervals (one module call, and one `torch.func.vjp`,
    per interval): the reference for `StackPropagator`. The solver's entry `step_at` and the
    adjoint's (`linearized`) run all the intervals of a call as ONE call of `torch.func.vmap`
    over `functional_call` of layer 0 with the layers' parameters and buffers stacked [N, …]
    (made by `refresh()`, once per solve), and differentiate it with `torch.func.vjp` — no
    autograd graph, no loop — where the layers share one class, parameter shapes and attributes
    (`_stacking_problem`); `param_grads` is one torch.func.vjp of that call by the stacked
    parameters. Where they do not, or where vmap fails on the layer's code (the first call tries
    it), they loop as the public calls do (param_grads: one autograd pass per layer);
    `vmap_problem` says why.

    Dropout: a solve calls each layer many times (relaxation sweeps, residuals, the adjoint, the
    parameter gradients), and each call of a dropout layer would draw a new mask, so the solve
    would not be of one network. Where a layer holds a dropout module in training mode,
    `refresh()` (once per training step) draws one seed from the global generator, and every
    call of layer n runs with the generator forked and seeded seed + n (one call per interval:
    the vmapped paths are not taken that step): layer n's masks are drawn
    once per step and shared by all its calls (states of one shape draw the same mask).
    """

    def __init__(self, layers: Sequence[nn.Module], h: float) -> None:
        self.layers: list[nn.Module] = list(layers)
        self.h = float(h)
        self.vmap_problem: str | None = _stacking_problem(self.layers)
        """Why the solver's calls loop over the intervals instead of one vmap (None: they do not)."""
        self.stacked: dict[str, torch.Tensor] = {}
        self.seed: int | None = None
        """This step's dropout seed (None: no layer drops out, the layers are called as they are)."""
        self.refresh()

    def __len__(self) -> int:
        return len(self.layers)

    def refresh(self) -> None:
        """Stack the layers' current parameters and buffers for the solver's vmapped calls (call
        it once per solve: the optimizer moves them between solves); the public `step` and `vjp`
        read the modules themselves. Where a layer drops out, draw this step's dropout seed."""
        drops = any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
                    for layer in self.layers for m in layer.modules())
        self.seed = int(torch.randint(0, 2**62, ())) if drops else None
        if self.vmap_problem is not None:
            return
        with torch.no_grad():
            states = [dict(layer.named_parameters()) | dict(layer.named_buffers()) for layer in self.layers]
            self.stacked = {k: torch.stack([s[k].detach() for s in states]) for k in states[0]}

    def _batched(self, params: dict[str, torch.Tensor], u: torch.Tensor) -> torch.Tensor:
        base = self.layers[0]

        def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(base, p, (x,))

        return torch.func.vmap(one)(params, u)

    def _call(self, stacked: dict[str, torch.Tensor], layers: list[nn.Module], first: int, stride: int,
              u: torch.Tensor, lam: torch.Tensor | None) -> torch.Tensor:
        """F (lam None) or J_Fᵀ lam of the m intervals with layers first, first + stride, … of
        `layers` (whose stacked state is `stacked`): one vmap, else (vmap_problem) a loop."""
        m = u.shape[0]
        picked = slice(first, first + stride * (m - 1) + 1, stride)
        if self.vmap_problem is None and self.seed is None:
            params = {k: v[picked] for k, v in stacked.items()}
            try:
                if lam is None:
                    return self._batched(params, u)
                _, pull = torch.func.vjp(lambda x: self._batched(params, x), u)
                return pull(lam)[0]
            except Exception as err:  # the layer's code does not vmap: loop from now on
                self.vmap_problem = f"torch.func.vmap failed: {type(err).__name__}: {str(err).splitlines()[0]}"
        ids = range(first, first + stride * (m - 1) + 1, stride)
        if layers is not self.layers:  # the adjoint's reversed layers: each one's index in the stack
            ids = range(len(self.layers) - 1 - first, len(self.layers) - 1 - first - stride * m, -stride)
        if lam is None:
            return torch.stack([self._layer(n, u[i]) for i, n in enumerate(ids)])
        return torch.stack([torch.func.vjp(lambda x, n=n: self._layer(n, x), u[i])[1](lam[i])[0]
                            for i, n in enumerate(ids)])

    def _layer(self, n: int, x: torch.Tensor) -> torch.Tensor:
        """layers[n](x), with layer n's frozen dropout masks of this step (see the class docstring)."""
        if self.seed is None:
            return self.layers[n](x)
        devices = [x.device.index or 0] if x.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + n)
            return self.layers[n](x)

    def step_at(self, first: int, stride: int, span: int, u: torch.Tensor, out: torch.Tensor | None = None,
                add: torch.Tensor | None = None) -> torch.Tensor:
        """`StackPropagator.step_at`'s contract: u[i] + span·h·F_{first+i·stride}(u[i]) (+ add[i])."""
        with torch.no_grad():
            f = self._call(self.stacked, self.layers, first, stride, u, None)
            out = torch.add(u, f, alpha=span * self.h) if out is None else torch.add(u, f, alpha=span * self.h,
                                                                                       out=out)
            return out if add is None else out.add_(add)

    def linearized(self, states: torch.Tensor) -> GenericAdjoint:
        """The adjoint steps about the fine states [N + 1, *state], in reversed time (as
        `StackPropagator.linearized`)."""
        return GenericAdjoint(self, states)

    def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        """u[i] + span·h·layers[start[i]](u[i]) for each interval, one module call each."""
        span = _check_span(span)
        _check_start(start, u.shape[0], len(self.layers))
        scale = span * self.h
        with torch.no_grad():
            return torch.stack([u[i] + scale * self._layer(int(n), u[i])
                                for i, n in enumerate(start.tolist())]) if len(start) else u.clone()

    def vjp(self, start: torch.Tensor, span: int, y: torch.Tensor,
            lam: torch.Tensor) -> torch.Tensor:
        """lam[i] + span·h·(∂F_{start[i]}/∂u at y[i])ᵀ lam[i], one `torch.func.vjp` per interval."""
        _check_start(start, y.shape[0], len(self.layers))
        return self.vjp_unchecked(start, _check_span(span), y, lam)

    def vjp_unchecked(self, idx: torch.Tensor, span: int, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """`vjp` without its checks (as `StackPropagator.vjp_unchecked`)."""
        start = idx
        scale = span * self.h
        out = []
        with torch.no_grad():
            for i, n in enumerate(start.tolist()):
                _, pull = torch.func.vjp(lambda x, n=n: self._layer(n, x), y[i].detach())
                out.append(lam[i] + scale * pull(lam[i].detach())[0])
        return torch.stack(out) if out else lam.clone()

    def param_grads(self, states: torch.Tensor, lambdas: torch.Tensor, first: int = 0) -> None:
        """Accumulate (∂Φ_n/∂θ_n at y_n)ᵀ λ_{n+1} into the parameters' `.grad`, layer by layer
        (`states[i]` = y_{first+i}, `lambdas[i]` = λ_{first+i}, both [n+1, *state]; see
        `StackPropagator.param_grads`)."""
        n_layers = states.shape[0] - 1
        if states.shape != lambdas.shape or not 0 <= first or first + n_layers > len(self.layers):
            raise ValueError(f"states and lambdas must both be [n+1, *state] for layers first … first+n-1 of "
                             f"{len(self.layers)}, got {tuple(states.shape)} and {tuple(lambdas.shape)} "
                             f"from layer {first}")
        layers = self.layers[first:first + n_layers]
        if n_layers and self.vmap_problem is None and self.seed is None:
            try:
                grads = self._stacked_param_grads(states, lambdas, first, n_layers)
            except Exception as err:  # the layer's code does not vmap: per layer from now on
                self.vmap_problem = f"torch.func.vmap failed: {type(err).__name__}: {str(err).splitlines()[0]}"
            else:
                for layer, per in zip(layers, grads, strict=True):
                    for name, p in layer.named_parameters():
                        if p.requires_grad:
                            _accumulate(p, per[name], fresh=True)
                return
        for n, layer in enumerate(layers):
            params = [p for p in layer.parameters() if p.requires_grad]
            if not params:
                continue
            with torch.enable_grad():
                f = self._layer(first + n, states[n].detach())
                grads = torch.autograd.grad(f, params, self.h * lambdas[n + 1].detach(),
                                            allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    _accumulate(p, g)


    def _stacked_param_grads(self, states: torch.Tensor, lambdas: torch.Tensor, first: int,
                             n_layers: int) -> list[dict[str, torch.Tensor]]:
        """Each layer's (∂Φ_n/∂θ_n at y_n)ᵀ λ_{n+1} by one `torch.func.vjp` of the vmapped call over
        the stacked parameters (of the last `refresh()`): per layer, parameter name → gradient (views
        of one [n, …] tensor per name, owned by nobody else)."""
        names = {name for name, _ in self.layers[0].named_parameters()}
        picked = {k: v[first:first + n_layers] for k, v in self.stacked.items()}
        params = {k: v for k, v in picked.items() if k in names}
        buffers = {k: v for k, v in picked.items() if k not in names}
        with torch.no_grad():
            _, pull = torch.func.vjp(lambda p: self._batched(p | buffers, states[:-1].detach()), params)
            (grads,) = pull(self.h * lambdas[1:].detach())
        per = {k: g.unbind(0) for k, g in grads.items()}
        return [{k: per[k][n] for k in per} for n in range(n_layers)]


class GenericAdjoint:
    """The adjoint steps of a `GenericPropagator` about fixed forward states, in reversed time
    (as `StackAdjoint`): the layers, their stacked state and the states flipped once, so each
    call's intervals are a strided progression; one `torch.func.vjp` of the vmapped call."""

    def __init__(self, prop: GenericPropagator, states: torch.Tensor) -> None:
        n = states.shape[0] - 1
        if n != len(prop):
            raise ValueError(f"states must be the {len(prop) + 1} points of the stack, got {n + 1}")
        self.prop, self.h = prop, prop.h
        self.layers = prop.layers[::-1]
        with torch.no_grad():
            self.states = states.detach().flip(0)  # y_{N−k} at k
            self.stacked = {k: v.flip(0) for k, v in prop.stacked.items()}

    def step_at(self, first: int, stride: int, span: int, lam: torch.Tensor, out: torch.Tensor | None = None,
                add: torch.Tensor | None = None) -> torch.Tensor:
        """Ψ over reversed [first + i·stride, … + span) of lam[i] (+ add[i]), `StackAdjoint.step_at`'s
        contract: the forward layer N − first − span − i·stride about its state."""
        m = lam.shape[0]
        at = first + span  # the reversed index of the interval's forward state
        y = self.states[at:at + stride * (m - 1) + 1:stride]
        with torch.no_grad():
            back = self.prop._call(self.stacked, self.layers, at - 1, stride, y, lam)
            scale = span * self.h
            out = torch.add(lam, back, alpha=scale) if out is None else torch.add(lam, back, alpha=scale, out=out)
            return out if add is None else out.add_(add)


def propagator_for(stack: nn.Module, kernel: Kernel = "torch",
                   storage: Any = None) -> StackPropagator | GenericPropagator:
    """The batched `StackPropagator` when `stack` is a ResidualStack it takes (all DenseStep or
    all ConvStep, one activation; over `storage` where its parameters are stacked), else a
    `GenericPropagator` over `stack.layers` and `stack.h`."""
    try:
        return StackPropagator(stack, kernel, storage)
    except TypeError:
        return GenericPropagator(list(stack.layers), float(stack.h))
