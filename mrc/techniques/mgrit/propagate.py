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

* `StackPropagator(stack)` is the fast path for mrc's `ResidualStack` of `DenseStep`s or
  `ConvStep`s: the layers' weights are stacked into one tensor, so a call over m intervals is a
  gathered batched matrix product (dense) or one grouped convolution (conv), whatever m is.
* `GenericPropagator(layers, h)` takes any step modules F_n: it loops over the intervals and
  differentiates with autograd; slow (m module calls and m backward passes per call) but exact,
  the reference the fast path is tested against and the fallback for other stacks.
* `propagator_for(stack)` picks the first when it applies and the second otherwise.

Both work on detached tensors and never build an autograd graph of their own results (the
solver runs outside autograd); parameter gradients are accumulated into `.grad` directly.

Weights: a `StackPropagator` copies the current parameter values into its stacks at
construction and at each `refresh()`. The parameters change at every optimizer step, so the
integration calls `refresh()` once at the start of each forward and each backward solve (the
cost is one copy of the stack's weights; `is_stale()` says whether they moved since).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F

from mrc.models.ode_resnet import ConvStep, DenseStep

__all__ = ["GenericPropagator", "Propagator", "StackPropagator", "propagator_for"]

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


def _act(name: str, z: torch.Tensor) -> torch.Tensor:
    return torch.tanh(z) if name == "tanh" else torch.relu(z)


def _act_grad(name: str, z: torch.Tensor) -> torch.Tensor:
    """σ'(z): 1 − tanh² z, or the relu step with σ'(0) = 0 (as autograd's threshold_backward)."""
    if name == "tanh":
        t = torch.tanh(z)
        return 1.0 - t * t
    return (z > 0).to(z.dtype)


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


class StackPropagator:
    """Batched propagator for a `ResidualStack` of `DenseStep`s or of `ConvStep`s.

    Dense: the weights are stacked as W [N, w, w], b [N, w]; `step` over m intervals gathers
    W[start], b[start] and does one `baddbmm` (u [m, batch, w]). Conv: the weights are stacked
    as K [N, C, C, 3, 3], b [N, C]; the m intervals become the groups of one grouped convolution
    (u [m, B, C, H, W] → [B, m·C, H, W], weights [m·C, C, 3, 3], groups = m), and the adjoint is
    the matching grouped transposed convolution.

    `kernel="triton"` runs the dense `step` as the fused Triton kernel (`kernels/mgrit.py`) for
    float32 CUDA tensors; everything else (CPU, float64, conv, `vjp`, `param_grads`) takes the
    torch path. The weights are a copy made at construction and by `refresh()` (module
    docstring): call it once per solve.
    """

    def __init__(self, stack: nn.Module, kernel: Kernel = "torch") -> None:
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
        self.weight = torch.empty(0)
        self.bias = torch.empty(0)
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
        the stacks, not the modules)."""
        with torch.no_grad():
            self.weight = torch.stack([layer.weight.detach() for layer in self.layers])
            self.bias = torch.stack([layer.bias.detach() for layer in self.layers])
        self._versions = tuple(p._version for p in self._params())

    def is_stale(self) -> bool:
        """True when a parameter changed in place since the last `refresh()` (its version
        counter moved): a check for tests and debugging, O(N) in Python."""
        return tuple(p._version for p in self._params()) != self._versions

    # ------------------------------------------------------------------ dense

    def _dense_z(self, idx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z[i] = y[i] @ W[idx[i]]ᵀ + b[idx[i]] for y [m, batch, w]."""
        return torch.baddbmm(self.bias[idx].unsqueeze(1), y, self.weight[idx].transpose(1, 2))

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
        scale = span * self.h
        with torch.no_grad():
            y, lam = y.detach(), lam.detach()
            if self.kind == "dense":
                g = _act_grad(self.activation, self._dense_z(idx, y)) * lam
                return torch.baddbmm(lam, g, self.weight[idx], alpha=scale)
            m = y.shape[0]
            z, k = self._conv_z(idx, self._to_groups(y), m)
            g = _act_grad(self.activation, z) * self._to_groups(lam)
            back = F.conv_transpose2d(g, k, padding=1, groups=m)
            return lam + scale * self._from_groups(back, m)

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
        with torch.no_grad():
            y, lam = states[:-1].detach(), lambdas[1:].detach()
            if self.kind == "dense":
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
            # unbind: one call for all n views (each already the parameter's shape and owned by
            # nobody else, so a missing .grad takes the view itself, not a clone)
            layers = self.layers[first:first + n_layers]
            for layer, dw, db in zip(layers, d_weight.unbind(0), d_bias.unbind(0), strict=True):
                _accumulate(layer.weight, dw, fresh=True)
                _accumulate(layer.bias, db, fresh=True)


class GenericPropagator:
    """Propagator for any step modules F_n (Φ_n(u) = u + h·F_n(u)): slow but exact.

    Loops over the m intervals calling `layers[start[i]]` and differentiates with
    `torch.autograd.grad`, so it costs m module calls (and m backward passes for `vjp`) per
    call. It reads the modules' parameters directly; it is the reference for `StackPropagator`
    and the fallback for stacks it does not take.

    Dropout: a solve calls each layer many times (relaxation sweeps, residuals, the adjoint, the
    parameter gradients), and each call of a dropout layer would draw a new mask, so the solve
    would not be of one network. Where a layer holds a dropout module in training mode,
    `refresh()` (once per training step) draws one seed from the global generator, and every
    call of layer n runs with the generator forked and seeded seed + n: layer n's masks are drawn
    once per step and shared by all its calls (states of one shape draw the same mask).
    """

    def __init__(self, layers: Sequence[nn.Module], h: float) -> None:
        self.layers: list[nn.Module] = list(layers)
        self.h = float(h)
        self.seed: int | None = None
        """This step's dropout seed (None: no layer drops out, the layers are called as they are)."""

    def __len__(self) -> int:
        return len(self.layers)

    def refresh(self) -> None:
        """Draw this step's dropout seed where a layer drops out (the parameters need nothing:
        every call reads the modules' current ones)."""
        drops = any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
                    for layer in self.layers for m in layer.modules())
        self.seed = int(torch.randint(0, 2**62, ())) if drops else None

    def _call(self, n: int, x: torch.Tensor) -> torch.Tensor:
        """layers[n](x), with layer n's frozen dropout masks of this step (see the class docstring)."""
        if self.seed is None:
            return self.layers[n](x)
        devices = [x.device.index or 0] if x.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + n)
            return self.layers[n](x)

    def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        """u[i] + span·h·layers[start[i]](u[i]) for each interval, one module call each."""
        span = _check_span(span)
        _check_start(start, u.shape[0], len(self.layers))
        scale = span * self.h
        with torch.no_grad():
            return torch.stack([u[i] + scale * self._call(int(n), u[i])
                                for i, n in enumerate(start.tolist())]) if len(start) else u.clone()

    def vjp(self, start: torch.Tensor, span: int, y: torch.Tensor,
            lam: torch.Tensor) -> torch.Tensor:
        """lam[i] + span·h·(∂F_{start[i]}/∂u at y[i])ᵀ lam[i], one autograd pass per interval."""
        span = _check_span(span)
        _check_start(start, y.shape[0], len(self.layers))
        scale = span * self.h
        out = []
        for i, n in enumerate(start.tolist()):
            with torch.enable_grad():
                yi = y[i].detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self._call(n, yi), yi, lam[i].detach())
            out.append(lam[i] + scale * g)
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
        for n, layer in enumerate(self.layers[first:first + n_layers]):
            params = [p for p in layer.parameters() if p.requires_grad]
            if not params:
                continue
            with torch.enable_grad():
                f = self._call(first + n, states[n].detach())
                grads = torch.autograd.grad(f, params, self.h * lambdas[n + 1].detach(),
                                            allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    _accumulate(p, g)


def propagator_for(stack: nn.Module, kernel: Kernel = "torch") -> StackPropagator | GenericPropagator:
    """The batched `StackPropagator` when `stack` is a ResidualStack it takes (all DenseStep or
    all ConvStep, one activation), else a `GenericPropagator` over `stack.layers` and `stack.h`."""
    try:
        return StackPropagator(stack, kernel)
    except TypeError:
        return GenericPropagator(list(stack.layers), float(stack.h))
