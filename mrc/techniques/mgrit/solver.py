"""A generic MGRIT solver (multigrid reduction in time, nonlinear FAS with injection) for any step function.

The problem is a forward recurrence on the fine grid of N steps (N + 1 points):

    u_0 = u0,   u_n = Φ_{n-1}(u_{n-1}),  n = 1..N,

written as A_0(u) = g_0 with A_l(u)_0 = u_0, A_l(u)_n = u_n − Φ^l_{n-1}(u_{n-1}) and g_0 = (u0, 0, …, 0).
A residual stack y_{n+1} = y_n + h·F_n(y_n) is exactly this (forward Euler); MGRIT solves for all states at once,
so the work of one iteration is spread over the steps rather than chained through them (layer parallelism).

Hierarchy. Level l has N_l steps and C-points every cf_l points; level l + 1's points are level l's C-points
(0, cf_l, 2·cf_l, …), N_{l+1} = ⌊N_l / cf_l⌋. A level-l step covers s_l = Π_{j<l} cf_j fine steps, and Φ^l at
level-l point n is ``prop.step(start = n·s_l, span = s_l, ·)`` — one step of size s_l·h with the weights of the
fine layer at the start of the interval. When cf_l does not divide N_l the points after the last C-point form an
incomplete interval (XBraid's uneven last interval): they are F-relaxed from the last C-point and never restricted.

One iteration is a V-cycle (the ``phases``):

    ("relax", l)        F-relaxation; with "FCF" then C-relaxation and F-relaxation again
    ("restrict", l)     r = g_l − A_l(u) at the C-points (zero at F-points after F-relaxation); u_c = inject(u);
                        g_{l+1} = A_{l+1}(u_c) + inject(r); level l + 1 starts from u_c
    ("coarse_solve", L-1)   the serial sweep u_n = Φ^{L-1}(u_{n-1}) + g_n, n = 1..N_{L-1}
    ("correct", l)      u[C] += v_c − u_c (v_c: level l + 1's states), then F-relaxation

Batching: an F-relaxation calls ``prop.step`` once per position j = 1..cf−1 within an interval, for all intervals
at once; a C-relaxation, a residual and a coarse A_{l+1} evaluation call it once each. Only the coarsest sweep
loops, over its few points. So one iteration makes O(cf·levels) + N_{L-1} calls, independent of N otherwise.

Residual norm. Each iteration records the level-0 residual at the C-points n ≥ 1, computed in ("restrict", 0)
— after that iteration's relaxation, before its coarse correction: ‖r‖ = sqrt(Σ_{C-points n ≥ 1} Σ r_n²) over all
elements (a global 2-norm). F-points carry no residual after F-relaxation and point 0 none by construction. With
levels == 1 the iteration is the exact serial sweep and its residual is recorded as 0.0.

Stopping. ``solve`` runs whole iterations until ``iters`` are done or, with tol > 0, until an iteration's residual
is < tol; that iteration is finished (its correction is applied), so the returned states are at least as good
as the residual says. Phases must be run in order; ``end_iteration`` requires all of them.

At convergence the states equal serial propagation (the FAS fixed point is the fine solution whatever the coarse
propagators are). The adjoint λ_N = g, λ_n = (∂Φ_n/∂u at y_n)ᵀ λ_{n+1} is solved by the same solver in reversed
time (``Adjoint``, ``adjoint_solve``, ``lambdas``).

Autograd: the solver runs under the caller's grad mode and updates its state tensors in place; callers that do not
differentiate through it should run it under ``torch.no_grad()`` (a propagator's ``vjp`` must then enable grad
itself if it uses autograd).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from mrc.techniques.mgrit.grid import Settings

__all__ = ["MGRIT", "Adjoint", "Propagator", "adjoint_solve", "lambdas"]

@runtime_checkable
class Propagator(Protocol):
    """The step function MGRIT solves for, batched over intervals."""

    def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        """Φ over the fine steps [start[i], start[i]+span) approximated by ONE step of size span·h with the
        weights of fine layer start[i], for a batch of m intervals at once: u is [m, *state], start a long
        tensor [m]; returns [m, *state]. span = 1 is the network's own layer (exact)."""
        ...

    def vjp(self, start: torch.Tensor, span: int, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """(∂Φ(start, span)/∂u at y)ᵀ · lam for a batch: y, lam [m, *state] → [m, *state]."""
        ...


class _Level:
    """Index tensors and state of one level (built once per solve, on the states' device)."""

    def __init__(self, n: int, cf: int, span: int, relax: str, device: torch.device, offset: int = 0) -> None:
        # offset: the fine index of point 0 (0 for the whole problem; a rank's block starts later,
        # mrc/techniques/mgrit/ranks.py): every start tensor is shifted by it
        self.n, self.cf, self.span, self.relax = n, cf, span, relax
        idx = lambda *a: torch.arange(*a, device=device, dtype=torch.long)  # noqa: E731
        # F-relaxation, position j in the interval: the points c + j with c a C-point and c + j ≤ n
        self.f_points = [idx(j, n + 1, cf) for j in range(1, cf)] if cf > 1 else []
        self.f_starts = [(p - 1) * span + offset for p in self.f_points]
        # C-points ≥ 1 (multiples of cf up to n); for the coarsest level (cf = 0) unused
        n_coarse = n // cf if cf > 1 else 0
        self.c_points = idx(1, n_coarse + 1) * cf if cf > 1 else idx(0)
        self.c_starts = (self.c_points - 1) * span + offset
        # the same point sets as strided slices (views: no gather/scatter of the states): F-points
        # at position j and their predecessors, the C-points ≥ 1 and theirs, and the injection
        self.f_slices = [(slice(j, n + 1, cf), slice(j - 1, n, cf)) for j in range(1, cf)] if cf > 1 else []
        # (the coarsest level, cf = 0, has none: it is swept serially)
        top, step = n_coarse * cf, max(cf, 1)
        self.c_slice = slice(cf, top + 1, step) if cf > 1 else slice(0, 0)
        self.c_prev = slice(cf - 1, top, step) if cf > 1 else slice(0, 0)
        self.inject = slice(0, top + 1, step) if cf > 1 else slice(0, 0)
        self.all_starts = idx(0, n) * span + offset  # start of the step into point n + 1, n = 0..N_l − 1
        self.u: torch.Tensor = torch.empty(0)
        self.g: torch.Tensor = torch.empty(0)
        self.u_c: torch.Tensor = torch.empty(0)  # the injected C-point states saved by restrict


class MGRIT:
    """One solve of u_0 = u0, u_n = Φ_{n-1}(u_{n-1}) on the fine grid (N steps, N + 1 points).

    Use ``start`` then ``solve``, or drive the iteration yourself: ``run`` each of ``phases`` in order, then
    ``end_iteration``; ``converged`` says when to stop. ``states`` holds the current fine-level states.
    """

    def __init__(self, prop: Propagator, n_steps: int, settings: Settings) -> None:
        reason = settings.validate(n_steps)
        if reason is not None:
            raise ValueError(f"MGRIT settings do not fit N = {n_steps}: {reason}")
        self.prop = prop
        self.n_steps = n_steps
        self.settings = settings
        self.residuals: list[float] = []
        self._sizes = settings.sizes(n_steps)
        self._levels: list[_Level] = []
        self._pos = 0
        self._residual: float | None = None
        L = settings.levels
        if L == 1:
            self._phases = [("coarse_solve", 0)]
        else:
            self._phases = [p for l in range(L - 1) for p in (("relax", l), ("restrict", l))]
            self._phases += [("coarse_solve", L - 1)] + [("correct", l) for l in reversed(range(L - 1))]

    # ---------------------------------------------------------------- setup

    def start(self, u0: torch.Tensor, warm: torch.Tensor | None = None) -> None:
        """Set the initial condition and the initial guess, and reset the iteration count and residuals.

        warm: [N + 1, *state], e.g. a previous solve's fine states (point 0 is replaced by u0). Without it every
        point starts at u0 (the constant guess). The coarse levels are built from the fine one by each
        iteration's restriction, so they need no guess.
        """
        n = self.n_steps
        if warm is not None:
            if warm.shape != (n + 1, *u0.shape):
                raise ValueError(f"warm has shape {tuple(warm.shape)}, expected {(n + 1, *u0.shape)}")
            u = warm.detach().clone().to(dtype=u0.dtype, device=u0.device)
            u[0] = u0
        else:
            u = u0.unsqueeze(0).expand(n + 1, *u0.shape).clone()
        g = torch.zeros_like(u)
        g[0] = u0
        s = self.settings
        self._levels = []
        span = 1
        for l, size in enumerate(self._sizes):
            coarsest = l == s.levels - 1
            cf = 0 if coarsest else s.factor(l)
            self._levels.append(_Level(size, cf, span, "" if coarsest else s.relaxation(l), u.device))
            span *= max(cf, 1)
        self._levels[0].u, self._levels[0].g = u, g
        self.residuals = []
        self._pos = 0
        self._residual = None

    @property
    def states(self) -> torch.Tensor:
        """The current fine-level states [N + 1, *state] (the solver's own tensor; clone to keep a copy)."""
        if not self._levels:
            raise RuntimeError("MGRIT.start has not been called")
        return self._levels[0].u

    @property
    def phases(self) -> list[tuple[str, int]]:
        """The operations of one iteration (V-cycle), in the order ``run`` must be called with them."""
        return list(self._phases)

    # ---------------------------------------------------------------- the operations

    def _phi(self, lv: _Level, starts: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.prop.step(starts, lv.span, u)

    def _f_relax(self, lv: _Level) -> None:
        u, g = lv.u, lv.g
        for (pts, prev), starts in zip(lv.f_slices, lv.f_starts, strict=True):
            if starts.numel():
                u[pts] = self._phi(lv, starts, u[prev]) + g[pts]

    def _c_relax(self, lv: _Level) -> None:
        u, g, pts = lv.u, lv.g, lv.c_slice
        u[pts] = self._phi(lv, lv.c_starts, u[lv.c_prev]) + g[pts]

    def _relax(self, l: int) -> None:
        lv = self._levels[l]
        self._f_relax(lv)
        if lv.relax == "FCF":
            self._c_relax(lv)
            self._f_relax(lv)

    def _restrict(self, l: int) -> None:
        lv, co = self._levels[l], self._levels[l + 1]
        u, g, pts = lv.u, lv.g, lv.c_slice
        r = g[pts] - (u[pts] - self._phi(lv, lv.c_starts, u[lv.c_prev]))  # residual at C-points ≥ 1
        if l == 0:
            self._residual = self._norm(r)
        u_c = u[lv.inject].clone()  # inject: level l's C-points are level l + 1's points
        lv.u_c = u_c
        g_c = torch.empty_like(u_c)
        g_c[0] = g[0]  # A(u_c)_0 + r_0 = u_c[0] + (g_0 − u_0) = g_0
        g_c[1:] = u_c[1:] - self.prop.step(co.all_starts, co.span, u_c[:-1]) + r
        co.u, co.g = u_c.clone(), g_c

    def _norm(self, r: torch.Tensor) -> float:
        """The global 2-norm of the level-0 residual at the C-points (over ranks, in ranks.py)."""
        return float(torch.linalg.vector_norm(r.detach().double()))

    def _coarse_solve(self, l: int) -> None:
        lv = self._levels[l]
        u, g, starts = lv.u, lv.g, lv.all_starts
        for n in range(1, lv.n + 1):
            u[n : n + 1] = self._phi(lv, starts[n - 1 : n], u[n - 1 : n]) + g[n : n + 1]

    def _correct(self, l: int) -> None:
        lv, co = self._levels[l], self._levels[l + 1]
        fuse = getattr(self.prop, "kernel", "torch") == "triton"  # the stack's kernel choice, as the step's
        if not (fuse and fas_correct_fused(lv.u, co.u[1:], lv.u_c[1:], lv.c_points)):
            lv.u[lv.c_slice] += co.u[1:] - lv.u_c[1:]
        lv.u_c = torch.empty(0)
        co.u, co.g = torch.empty(0), torch.empty(0)
        self._f_relax(lv)

    def run(self, phase: str, level: int) -> None:
        """Run one phase of the current iteration; phases must come in the order of ``phases``."""
        if not self._levels:
            raise RuntimeError("MGRIT.start has not been called")
        if self._pos >= len(self._phases):
            raise RuntimeError("the iteration's phases are all done: call end_iteration")
        expected = self._phases[self._pos]
        if (phase, level) != expected:
            raise ValueError(f"phase {(phase, level)} out of order: the next phase is {expected}")
        if phase == "relax":
            self._relax(level)
        elif phase == "restrict":
            self._restrict(level)
        elif phase == "coarse_solve":
            self._coarse_solve(level)
        else:
            self._correct(level)
        self._pos += 1

    def end_iteration(self) -> float:
        """Finish the iteration whose phases have all run: record and return its residual norm (see module doc)."""
        if self._pos != len(self._phases):
            raise RuntimeError(f"iteration incomplete: {len(self._phases) - self._pos} phases not run")
        res = 0.0 if self._residual is None else self._residual
        self.residuals.append(res)
        self._pos = 0
        self._residual = None
        return res

    @property
    def converged(self) -> bool:
        """True when tol > 0 and the last recorded residual is < tol."""
        return self.settings.tol > 0 and bool(self.residuals) and self.residuals[-1] < self.settings.tol

    def iterate(self) -> float:
        """Run one whole iteration (all phases, then ``end_iteration``); returns its residual."""
        for phase, level in self._phases[self._pos :]:
            self.run(phase, level)
        return self.end_iteration()

    def solve(self) -> torch.Tensor:
        """Iterate until ``settings.iters`` iterations are recorded or ``converged``; returns ``states``."""
        while len(self.residuals) < self.settings.iters and not self.converged:
            self.iterate()
        return self.states

    def factors(self) -> list[float]:
        """The convergence factors r_k / r_{k-1}, k ≥ 1 (0.0 when both are 0, inf when only r_{k-1} is)."""
        out = []
        for prev, cur in zip(self.residuals, self.residuals[1:], strict=False):
            out.append(cur / prev if prev > 0 else (0.0 if cur == 0 else float("inf")))
        return out


def fas_correct_fused(u: torch.Tensor, v: torch.Tensor, u_c: torch.Tensor, points: torch.Tensor) -> bool:
    """The FAS correction u[points] += v − u_c as one fused Triton launch (kernels/mgrit.py) for
    float32 CUDA states; False where it does not apply (the caller then adds on a strided view)."""
    if not (u.is_cuda and u.dtype == torch.float32 and u.is_contiguous()):
        return False
    from mrc.kernels.mgrit import fas_correct_triton

    fas_correct_triton(u, v.contiguous(), u_c.contiguous(), points)
    return True


class Adjoint:
    """A Propagator for the adjoint problem, in reversed time.

    λ_N = g, λ_n = (∂Φ_n/∂u at y_n)ᵀ λ_{n+1}: in the reversed index m = N − n it is λ̃_{m+1} = Ψ_m(λ̃_m), a forward
    problem MGRIT solves like any other (linear, so FAS is exact linear multigrid). Ψ over reversed [m, m + span) is
    the transpose of the coarse forward step Φ(start = N − m − span, span) about the forward state y_start (the fine
    states of the forward solve); for span = 1 it is the exact adjoint step.
    """

    def __init__(self, prop: Propagator, states: torch.Tensor) -> None:
        self.prop = prop
        self.kernel = getattr(prop, "kernel", "torch")  # the forward's choice holds for its adjoint
        self.states = states
        self.n_steps = states.shape[0] - 1

    def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        """Ψ over reversed [start[i], start[i] + span) applied to the adjoint states u [m, *state]."""
        forward = self.n_steps - start - span
        return self.prop.vjp(forward, span, self.states[forward], u)

    def vjp(self, start: torch.Tensor, span: int, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """Not provided: the adjoint of the adjoint is never needed."""
        raise NotImplementedError("Adjoint.vjp is not needed by MGRIT and not provided")


def adjoint_solve(prop: Propagator, states: torch.Tensor, g: torch.Tensor, settings: Settings,
                  warm: torch.Tensor | None = None) -> MGRIT:
    """Solve the adjoint λ_N = g, λ_n = (∂Φ_n/∂u at y_n)ᵀ λ_{n+1} by MGRIT in reversed time; returns the solver.

    states: the forward fine states [N + 1, *state]; warm: a previous λ in ORIGINAL order (λ_0 … λ_N), as
    ``lambdas`` returns it. Read the result with ``lambdas(solver)``.
    """
    n = states.shape[0] - 1
    solver = MGRIT(Adjoint(prop, states), n, settings)
    solver.start(g, None if warm is None else warm.flip(0))
    solver.solve()
    return solver


def lambdas(solver: MGRIT) -> torch.Tensor:
    """The adjoint states of an ``adjoint_solve`` in original index order: [N + 1, *state] = λ_0 … λ_N."""
    return solver.states.flip(0)
