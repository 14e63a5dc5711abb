"""An unbatched MGRIT reference for an ODE-ResNet stack, written from the algorithm alone.

Nothing here calls mrc: the steps are written from the network's weights (dense
y + s·h·σ(W_k y + b_k), conv y + s·h·σ(K_k ∗ y + b_k)), the hierarchy from the settings, and the
V-cycle point by point with Python loops (seeds/layer-parallel-mgrit.md, DESIGN.md "Layer-parallel
training by MGRIT"):

    level l has the points of level l − 1 at its C-points (every cf_{l−1}-th), so a level-l step
    spans s_l = cf_0·…·cf_{l−1} fine steps; Φ^l into level-l point n + 1 is ONE Euler step of
    size s_l·h with the weights of fine layer n·s_l (the layer at the start of the interval);
    A_l(u)_0 = u_0, A_l(u)_n = u_n − Φ^l(u_{n−1}); A_0(y) = (y_0, 0, …, 0).

    V(l, u, g):  coarsest → serial sweep u_n = Φ^l(u_{n−1}) + g_n;
                 else F-relax (all points that are not multiples of cf_l, in order), with FCF then
                 C-relax and F-relax again; r = g − A_l(u) at the C-points ≥ 1; u_c = u at the
                 C-points (injection); g_c = A_{l+1}(u_c) + r (g_c[0] = g_0); v = V(l+1, u_c, g_c);
                 u[C] += v − u_c; F-relax.

The adjoint λ_N = ḡ, λ_n = (∂Φ_n/∂y at y_n)ᵀ λ_{n+1} is the same V-cycle in reversed time m = N − n:
the level-l step out of reversed point m covers forward [N − (m+1)·s_l, N − m·s_l), and is the
transpose of the coarse forward step over it, linearised about the fine forward state at its start,
y_{N−(m+1)·s_l}; its vector-Jacobian product is taken by autograd through the step written above.
Parameter gradients are fine-level: ∂θ_n = (∂Φ_n/∂θ_n at y_n)ᵀ λ_{n+1}.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

# (level, level point index n, state u) → the level's step from point n to n + 1
Step = Callable[[int, int, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Hierarchy:
    """The settings of a solve: levels, one coarsening factor and one relaxation per transition."""

    cfs: tuple[int, ...]
    relax: tuple[str, ...]

    @staticmethod
    def of(levels: int, cf: int | Sequence[int], relax: str | Sequence[str]) -> Hierarchy:
        cfs = (cf,) * (levels - 1) if isinstance(cf, int) else tuple(cf)
        rel = (relax,) * (levels - 1) if isinstance(relax, str) else tuple(relax)
        assert len(cfs) == len(rel) == levels - 1
        return Hierarchy(cfs, rel)

    def span(self, level: int) -> int:
        """Fine steps per level-`level` step: the product of the factors below it."""
        return math.prod(self.cfs[:level])


@dataclass
class Layer:
    """One fine layer's parameters: dense W [w, w], b [w], or conv K [C, C, 3, 3], b [C]."""

    weight: torch.Tensor
    bias: torch.Tensor

    def f(self, y: torch.Tensor, activation: str) -> torch.Tensor:
        """F(y) = σ(W y + b) (dense, y [B, w]) or σ(K ∗ y + b) (conv, y [B, C, H, W])."""
        if self.weight.dim() == 2:
            z = y @ self.weight.T + self.bias
        else:
            z = F.conv2d(y, self.weight, self.bias, padding=1)
        return torch.tanh(z) if activation == "tanh" else torch.relu(z)


def euler(layer: Layer, size: float, activation: str, y: torch.Tensor) -> torch.Tensor:
    """One explicit Euler step y + size·F(y)."""
    return y + size * layer.f(y, activation)


def forward_step(layers: Sequence[Layer], h: float, activation: str, hier: Hierarchy) -> Step:
    """Φ^l into level-l point n + 1: size s_l·h, the weights of fine layer n·s_l."""
    def step(level: int, n: int, u: torch.Tensor) -> torch.Tensor:
        s = hier.span(level)
        return euler(layers[n * s], s * h, activation, u)
    return step


def adjoint_step(layers: Sequence[Layer], h: float, activation: str, hier: Hierarchy,
                 states: Sequence[torch.Tensor]) -> Step:
    """Ψ^l out of reversed level-l point m: the transposed Jacobian of the coarse forward step over
    forward [k, k + s_l), k = N − (m+1)·s_l, at the fine forward state y_k (autograd's vjp)."""
    n_steps = len(states) - 1

    def step(level: int, m: int, lam: torch.Tensor) -> torch.Tensor:
        s = hier.span(level)
        k = n_steps - (m + 1) * s
        with torch.enable_grad():
            y = states[k].detach().clone().requires_grad_(True)
            (out,) = torch.autograd.grad(euler(layers[k], s * h, activation, y), y, lam.detach())
        return out.detach()
    return step


def vcycle(step: Step, u: list[torch.Tensor], g: list[torch.Tensor], hier: Hierarchy,
           level: int = 0) -> float | None:
    """One FAS V-cycle in place on the point lists u, g of `level`; the level's C-point residual norm."""
    n = len(u) - 1
    if level == len(hier.cfs):  # the coarsest level: the serial sweep
        for k in range(1, n + 1):
            u[k] = step(level, k - 1, u[k - 1]) + g[k]
        return None
    cf = hier.cfs[level]

    def f_relax() -> None:
        for k in range(1, n + 1):
            if k % cf:
                u[k] = step(level, k - 1, u[k - 1]) + g[k]

    f_relax()
    if hier.relax[level] == "FCF":
        for k in range(cf, n + 1, cf):
            u[k] = step(level, k - 1, u[k - 1]) + g[k]
        f_relax()
    nc = n // cf
    r = [g[j * cf] - (u[j * cf] - step(level, j * cf - 1, u[j * cf - 1])) for j in range(1, nc + 1)]
    uc = [u[j * cf].clone() for j in range(nc + 1)]
    gc = [g[0].clone()] + [uc[j] - step(level + 1, j - 1, uc[j - 1]) + r[j - 1] for j in range(1, nc + 1)]
    v = [x.clone() for x in uc]
    vcycle(step, v, gc, hier, level + 1)
    for j in range(1, nc + 1):
        u[j * cf] = u[j * cf] + (v[j] - uc[j])
    f_relax()
    return math.sqrt(sum(float((x.double() ** 2).sum()) for x in r))


def solve(step: Step, first: torch.Tensor, n_steps: int, hier: Hierarchy, iters: int,
          warm: Sequence[torch.Tensor] | None = None) -> tuple[list[list[torch.Tensor]], list[float]]:
    """`iters` V-cycles of u_0 = first, u_n = step(u_{n−1}), from `warm` (point 0 replaced by `first`) or the
    constant guess u_n = first. Returns every iterate (the point list after each cycle) and the residual norms."""
    u = [first.clone()] + [(first if warm is None else warm[k]).clone() for k in range(1, n_steps + 1)]
    g = [first.clone()] + [torch.zeros_like(first) for _ in range(n_steps)]
    iterates, residuals = [], []
    for _ in range(iters):
        res = vcycle(step, u, g, hier)
        iterates.append([x.clone() for x in u])
        residuals.append(0.0 if res is None else res)
    return iterates, residuals


def param_grads(layers: Sequence[Layer], h: float, activation: str, states: Sequence[torch.Tensor],
                lams: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(∂Φ_n/∂θ_n at y_n)ᵀ λ_{n+1} for every fine layer n, by autograd through its step (λ in forward order)."""
    out = []
    for n, layer in enumerate(layers):
        with torch.enable_grad():
            w = layer.weight.detach().clone().requires_grad_(True)
            b = layer.bias.detach().clone().requires_grad_(True)
            y = euler(Layer(w, b), h, activation, states[n].detach())
            dw, db = torch.autograd.grad(y, (w, b), lams[n + 1].detach())
        out.append((dw, db))
    return out
