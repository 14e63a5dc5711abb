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

    ("relax", l)        F-relaxation; with "FCF" then C-relaxation and F-relaxation again (the first
                        F-relaxation is skipped where the level's last correction ended with the same one:
                        the fine level from the second iteration on — identical states, less work)
    ("restrict", l)     r = g_l − A_l(u) at the C-points (zero at F-points after F-relaxation); u_c = inject(u);
                        g_{l+1} = A_{l+1}(u_c) + inject(r); level l + 1 starts from u_c
    ("coarse_solve", L-1)   the serial sweep u_n = Φ^{L-1}(u_{n-1}) + g_n, n = 1..N_{L-1}
    ("correct", l)      u[C] += v_c − u_c (v_c: level l + 1's states), then F-relaxation

Batching: an F-relaxation calls the propagator once per position j = 1..cf−1 within an interval, for all intervals
at once; a C-relaxation, a residual and a coarse A_{l+1} evaluation call it once each. Only the coarsest sweep
loops, over its few points. So one iteration makes O(cf·levels) + N_{L-1} calls, independent of N otherwise. The
intervals of every call are an arithmetic progression of fine starts, so the solver calls ``step_at(first, stride,
span, u, out, add)`` (``step_at_of``: the propagator's own, else one over ``step``) with strided views of its
states made once per solve, writing into them (out = Φ(u) + g), and ``sweep_at`` for the coarsest level.

Residual norm. Each iteration records the level-0 residual at the C-points n ≥ 1, computed in ("restrict", 0)
— after that iteration's relaxation, before its coarse correction: ‖r‖ = sqrt(Σ_{C-points n ≥ 1} Σ r_n²) over all
elements (a global 2-norm). F-points carry no residual after F-relaxation and point 0 none by construction. With
levels == 1 the iteration is the exact serial sweep and its residual is recorded as 0.0. The norms stay tensors on
the states' device: ``residuals`` turns them into floats when read (one host sync for all), ``converged`` reads the
last one only when there is a tolerance.

Stopping. ``solve`` runs whole iterations until ``iters`` are done or, with tol > 0, until an iteration's residual
is < tol; that iteration is finished (its correction is applied), so the returned states are at least as good
as the residual says. Phases must be run in order; ``end_iteration`` requires all of them.

At convergence the states equal serial propagation (the FAS fixed point is the fine solution whatever the coarse
propagators are). The adjoint λ_N = g, λ_n = (∂Φ_n/∂u at y_n)ᵀ λ_{n+1} is solved by the same solver in reversed
time (``Adjoint``, ``adjoint_solve``, ``lambdas``).

Autograd: the solver runs under the caller's grad mode and updates its state tensors in place; callers that do not
differentiate through it should run it under ``torch.no_grad()`` (the built-in propagators do; a propagator's
``vjp`` must then differentiate by other means, e.g. torch.func, which ignores the outer mode).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from mrc.techniques.mgrit.grid import Settings

__all__ = ["MGRIT", "Adjoint", "Propagator", "StepAt", "adjoint_solve", "lambdas", "new_states_of",
           "step_at_of", "sweep_at_of", "sweep_by_steps"]

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


Run = tuple[int, int, int]
"""Intervals of one batched call: (first, stride, count) — fine starts first, first + stride, …"""


class StepAt(Protocol):
    """The solver's internal call (`StackPropagator.step_at`'s contract): out[i] = Φ(first + i·stride,
    span)(u[i]) (+ add[i]) for the m = u.shape[0] intervals, into `out` when given."""

    def __call__(self, first: int, stride: int, span: int, u: torch.Tensor, out: torch.Tensor | None = None,
                 add: torch.Tensor | None = None) -> torch.Tensor: ...


class _ByIndex:
    """`step_at` for a propagator that has only the public ``step``: the start tensors are made once per
    progression (on the states' device) and kept."""

    def __init__(self, prop: Propagator) -> None:
        self.prop = prop
        self._starts: dict[tuple[int, int, int, torch.device], torch.Tensor] = {}

    def step_at(self, first: int, stride: int, span: int, u: torch.Tensor, out: torch.Tensor | None = None,
                add: torch.Tensor | None = None) -> torch.Tensor:
        key = (first, stride, u.shape[0], u.device)
        start = self._starts.get(key)
        if start is None:
            start = self._starts[key] = torch.arange(u.shape[0], device=u.device, dtype=torch.long) * stride + first
        got = self.prop.step(start, span, u)
        if add is not None:
            got = got + add
        return got if out is None else out.copy_(got)


def step_at_of(prop: Propagator) -> StepAt:
    """The propagator's internal entry `step_at` where it has one, else one over its public ``step``."""
    fast = getattr(prop, "step_at", None)
    return fast if fast is not None else _ByIndex(prop).step_at


def new_states_of(prop: Propagator) -> Callable[[tuple[int, ...], torch.Tensor], torch.Tensor]:
    """The propagator's ``new_states(shape, like)`` where it has one (the memory layout its steps run
    fastest on: a dense stack's is features first, `StackPropagator.new_states`), else an empty
    tensor like `like`'s. The solver allocates every level's states with it."""
    fast = getattr(prop, "new_states", None)
    return fast if fast is not None else (lambda shape, like: like.new_empty(shape))


def sweep_at_of(prop: Propagator) -> Callable[[int, int, int, torch.Tensor, torch.Tensor | None], None]:
    """The serial sweep u[k] = Φ(first + (k−1)·stride, span)(u[k−1]) (+ g[k]), k = 1 … n, in place on u [n + 1,
    *state]: the propagator's ``sweep_at`` where it has one, else one ``step_at`` per point."""
    fast = getattr(prop, "sweep_at", None)
    if fast is not None:
        return fast
    step_at = step_at_of(prop)

    def sweep(first: int, stride: int, span: int, u: torch.Tensor, g: torch.Tensor | None) -> None:
        sweep_by_steps(step_at, first, stride, span, u, g)
    return sweep


def sweep_by_steps(step_at: StepAt, first: int, stride: int, span: int, u: torch.Tensor,
                   g: torch.Tensor | None) -> None:
    """The serial sweep of ``sweep_at_of`` as one ``step_at`` per point, on views of u and g split once."""
    us, gs = u.split(1), (g.split(1) if g is not None else None)
    for k in range(1, u.shape[0]):
        step_at(first + (k - 1) * stride, 1, span, us[k - 1], us[k], None if gs is None else gs[k])


class _Level:
    """One level's intervals and states, and the views the phases read and write (made once per solve: the
    level's state tensors are kept for the whole solve, a coarse level's overwritten by each restriction)."""

    def __init__(self, n: int, cf: int, span: int, relax: str, device: torch.device, offset: int = 0) -> None:
        # offset: the fine index of point 0 (0 for the whole problem; a rank's block starts later,
        # mrc/techniques/mgrit/ranks.py): every start is shifted by it
        self.n, self.cf, self.span, self.relax, self.offset = n, cf, span, relax, offset
        n_coarse = n // cf if cf > 1 else 0  # C-points ≥ 1: multiples of cf up to n (none on the coarsest level)
        step = max(cf, 1)
        # F-relaxation, position j in the interval: the points c + j with c a C-point and c + j ≤ n, as a
        # strided slice of the states (and of their predecessors) and a progression of fine starts
        self.f_slices = [(slice(j, n + 1, cf), slice(j - 1, n, cf)) for j in range(1, cf)] if cf > 1 else []
        self.f_runs: list[Run] = [((j - 1) * span + offset, cf * span, len(range(j, n + 1, cf)))
                                  for j in range(1, cf)] if cf > 1 else []
        top = n_coarse * cf
        self.c_slice = slice(cf, top + 1, step) if cf > 1 else slice(0, 0)
        self.c_prev = slice(cf - 1, top, step) if cf > 1 else slice(0, 0)
        self.c_run: Run = ((cf - 1) * span + offset, cf * span, n_coarse)
        self.inject = slice(0, top + 1, step) if cf > 1 else slice(0, 0)
        self.c_points = torch.arange(1, n_coarse + 1, device=device, dtype=torch.long) * cf if cf > 1 else None
        self.u: torch.Tensor = torch.empty(0)
        self.g: torch.Tensor = torch.empty(0)
        self.g_zero = False
        """g is zero at every point ≥ 1 (the fine level: g = (u0, 0, …, 0)), so no phase adds it."""
        self.f_done = False
        """The F-points are an F-relaxation of the C-points as they are (the last phase on the level was
        one, and nothing has changed the states since). F-relaxation is a function of the C-points, g and
        the weights alone, so the next iteration's first one is skipped: the fine level's ends every
        correction, and with g fixed (the fine level's) and the states untouched by restriction, the
        relaxation that opens the next iteration would recompute the same values, bit for bit."""
        self.u_c: torch.Tensor = torch.empty(0)  # the injected C-point states saved by restrict
        self.to_coarse: tuple[torch.Tensor, ...] = ()  # views for restrict and correct (MGRIT._bind)
        # the relaxations' views (bind): (points, predecessors, g there or None, the progression)
        self.f_views: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Run]] = []
        self.c_views: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] = (self.u, self.u, None)

    def bind(self, u: torch.Tensor, g: torch.Tensor, g_zero: bool = False) -> None:
        """Take u and g [n + 1, *state] as the level's states for the solve, and make the views of them.
        g_zero: g is zero at every point ≥ 1, and g may be its point 0 alone ([1, *state])."""
        self.u, self.g, self.g_zero = u, g, g_zero
        self.f_done = False
        gv = (lambda s: None) if g_zero else (lambda s: g[s])
        self.f_views = [(u[pts], u[prev], gv(pts), run)
                        for (pts, prev), run in zip(self.f_slices, self.f_runs, strict=True) if run[2]]
        self.c_views = (u[self.c_slice], u[self.c_prev], gv(self.c_slice))


class MGRIT:
    """One solve of u_0 = u0, u_n = Φ_{n-1}(u_{n-1}) on the fine grid (N steps, N + 1 points).

    Use ``start`` then ``solve``, or drive the iteration yourself: ``run`` each of ``phases`` in order, then
    ``end_iteration``; ``converged`` says when to stop. ``states`` holds the current fine-level states.

    The solver calls the propagator through ``step_at`` (``step_at_of``): each call's intervals are an
    arithmetic progression (first, stride, count), the states it reads and writes strided views made once per
    solve, so a call has no checks, gathers or copies. Residual norms stay tensors (no host sync) until
    ``residuals`` is read or a tolerance needs one.
    """

    def __init__(self, prop: Propagator, n_steps: int, settings: Settings) -> None:
        reason = settings.validate(n_steps)
        if reason is not None:
            raise ValueError(f"MGRIT settings do not fit N = {n_steps}: {reason}")
        self.prop = prop
        self._step_at = step_at_of(prop)
        self._sweep_at = sweep_at_of(prop)
        self._new_states = new_states_of(prop)
        self.n_steps = n_steps
        self.settings = settings
        self._norms: list[torch.Tensor | float] = []
        self._floats: list[float] = []
        self._sizes = settings.sizes(n_steps)
        self._levels: list[_Level] = []
        self._pos = 0
        self._residual: torch.Tensor | None = None
        L = settings.levels
        if L == 1:
            self._phases = [("coarse_solve", 0)]
        else:
            self._phases = [p for l in range(L - 1) for p in (("relax", l), ("restrict", l))]
            self._phases += [("coarse_solve", L - 1)] + [("correct", l) for l in reversed(range(L - 1))]

    # ---------------------------------------------------------------- setup

    def start(self, u0: torch.Tensor, warm: torch.Tensor | None = None, every: int = 1) -> None:
        """Set the initial condition and the initial guess, and reset the iteration count and residuals.

        warm: [N + 1, *state], e.g. a previous solve's fine states (point 0 is replaced by u0). Without it every
        point starts at u0 (the constant guess). With `every` = k > 1, warm holds only the points 0, k, 2k, …
        ([⌊N/k⌋ + 1, *state]) and the others start at u0: with k the fine level's coarsening factor these are its
        C-points, and an iteration opens with F-relaxation, which computes every F-point from them, so the
        F-points of a guess are never read. The coarse levels are built from the fine one by each iteration's
        restriction, so they need no guess.
        """
        n = self.n_steps
        points = (n + 1) if every == 1 else n // every + 1
        if warm is not None and warm.shape != (points, *u0.shape):
            raise ValueError(f"warm has shape {tuple(warm.shape)}, expected {(points, *u0.shape)}")
        u = self._initial(n + 1, u0, warm, every)
        u[0] = u0
        g = u0.detach().clone().unsqueeze(0)  # g_0 = (u0, 0, …, 0): only its point 0 is ever read
        s = self.settings
        self._levels = []
        span = 1
        for l, size in enumerate(self._sizes):
            coarsest = l == s.levels - 1
            cf = 0 if coarsest else s.factor(l)
            self._levels.append(_Level(size, cf, span, "" if coarsest else s.relaxation(l), u.device))
            span *= max(cf, 1)
        self._bind(u, g)

    def _initial(self, count: int, u0: torch.Tensor, warm: torch.Tensor | None, every: int = 1) -> torch.Tensor:
        """`count` states in the propagator's layout: warm's at every `every`-th point (all of them with
        every = 1), u0 at the others (at all without warm)."""
        u = self._new_states((count, *u0.shape), u0)
        if warm is not None and every == 1:
            return u.copy_(warm.detach())
        u.copy_(u0.unsqueeze(0).expand(count, *u0.shape))
        if warm is not None:
            u[::every].copy_(warm.detach())
        return u

    def _bind(self, u: torch.Tensor, g: torch.Tensor) -> None:
        """Give the levels their states for the solve (the fine level u and g; buffers for the coarse ones
        and the injections) and reset the iteration."""
        levels = self._levels
        levels[0].bind(u, g, g_zero=True)
        for fine, coarse in itertools.pairwise(levels):
            shape = (coarse.n + 1, *u.shape[1:])
            u_c = fine.u_c = self._new_states(shape, u)
            coarse.bind(self._new_states(shape, u), self._new_states(shape, u))
            # the restriction's and the correction's views: the injection, u_c and g_c without point 0 or N_{l+1}
            fine.to_coarse = (fine.u[fine.inject], u_c[:-1], u_c[1:], coarse.g[0], fine.g[0], coarse.g[1:],
                              coarse.u[1:])
        self._norms, self._floats = [], []
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

    @property
    def residuals(self) -> list[float]:
        """The residual norm of each iteration so far (see the module doc), as floats: reading them syncs with
        the device once for all the iterations not read before."""
        if len(self._floats) < len(self._norms):
            new = self._norms[len(self._floats):]
            tensors = [r for r in new if isinstance(r, torch.Tensor)]
            values = iter(torch.stack(tensors).tolist() if tensors else [])
            self._floats += [next(values) if isinstance(r, torch.Tensor) else float(r) for r in new]
        return list(self._floats)

    # ---------------------------------------------------------------- the operations

    def _phi(self, lv: _Level, run: Run, u: torch.Tensor, out: torch.Tensor | None = None,
             add: torch.Tensor | None = None) -> torch.Tensor:
        """Φ of level lv over the intervals `run` applied to u (+ add), into out when given."""
        first, stride, count = run
        if count == 0:  # a rank's block without a C-point on this level
            return out if out is not None else u.new_empty(u.shape)
        return self._step_at(first, stride, lv.span, u, out, add)

    def _f_relax(self, lv: _Level) -> None:
        for pts, prev, g, run in lv.f_views:
            self._phi(lv, run, prev, pts, g)
        lv.f_done = True

    def _c_relax(self, lv: _Level) -> None:
        pts, prev, g = lv.c_views
        self._phi(lv, lv.c_run, prev, pts, g)
        lv.f_done = False

    def _relax(self, l: int) -> None:
        lv = self._levels[l]
        if not lv.f_done:  # else the last correction's F-relaxation left exactly what this one would make
            self._f_relax(lv)
        if lv.relax == "FCF":
            self._c_relax(lv)
            self._f_relax(lv)

    def _restrict(self, l: int) -> None:
        lv, co = self._levels[l], self._levels[l + 1]
        pts, prev, g = lv.c_views
        r = self._phi(lv, lv.c_run, prev).sub_(pts)  # residual at C-points ≥ 1: g − (u − Φ(u_prev))
        if g is not None:
            r.add_(g)
        if l == 0:
            self._residual = self._norm(r)
        injected, u_head, u_tail, g_c0, g_0, g_c, _ = lv.to_coarse
        lv.u_c.copy_(injected)  # inject: level l's C-points are level l + 1's points
        co.u.copy_(lv.u_c)
        co.f_done = False
        g_c0.copy_(g_0)  # A(u_c)_0 + r_0 = u_c[0] + (g_0 − u_0) = g_0
        if co.n:  # g_c = A_{l+1}(u_c) + r at points ≥ 1
            self._phi(co, (lv.offset, co.span, co.n), u_head, g_c)
            torch.sub(u_tail, g_c, out=g_c).add_(r)

    def _norm(self, r: torch.Tensor) -> torch.Tensor:
        """The global 2-norm of the level-0 residual at the C-points (over ranks, in ranks.py), a tensor."""
        return torch.linalg.vector_norm(r.double())

    def _coarse_solve(self, l: int) -> None:
        lv = self._levels[l]
        self._sweep_at(lv.offset, lv.span, lv.span, lv.u, None if lv.g_zero else lv.g)

    def _correct(self, l: int) -> None:
        lv = self._levels[l]
        fuse = getattr(self.prop, "kernel", "torch") == "triton"  # the stack's kernel choice, as the step's
        _, _, u_tail, _, _, _, v_tail = lv.to_coarse
        if not (fuse and fas_correct_fused(lv.u, v_tail, u_tail, lv.c_points)):
            lv.c_views[0].add_(v_tail.sub_(u_tail))  # u[C] += v_c − u_c (v is scratch until the next restrict)
        lv.f_done = False
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

    def end_iteration(self) -> torch.Tensor | float:
        """Finish the iteration whose phases have all run: record and return its residual norm (see module doc)
        — a 0-dim tensor (``float()`` reads it; the solver does not, unless a tolerance needs it), 0.0 for the
        exact one-level sweep."""
        if self._pos != len(self._phases):
            raise RuntimeError(f"iteration incomplete: {len(self._phases) - self._pos} phases not run")
        res: torch.Tensor | float = 0.0 if self._residual is None else self._residual
        self._norms.append(res)
        self._pos = 0
        self._residual = None
        return res

    @property
    def iterations(self) -> int:
        """The iterations recorded so far."""
        return len(self._norms)

    @property
    def converged(self) -> bool:
        """True when tol > 0 and the last recorded residual is < tol (reads it: a host sync)."""
        return self.settings.tol > 0 and bool(self._norms) and float(self._norms[-1]) < self.settings.tol

    def iterate(self) -> torch.Tensor | float:
        """Run one whole iteration (all phases, then ``end_iteration``); returns its residual."""
        for phase, level in self._phases[self._pos :]:
            self.run(phase, level)
        return self.end_iteration()

    def solve(self) -> torch.Tensor:
        """Iterate until ``settings.iters`` iterations are recorded or ``converged``; returns ``states``."""
        while self.iterations < self.settings.iters and not self.converged:
            self.iterate()
        return self.states

    def factors(self) -> list[float]:
        """The convergence factors r_k / r_{k-1}, k ≥ 1 (0.0 when both are 0, inf when only r_{k-1} is)."""
        out = []
        residuals = self.residuals
        for prev, cur in itertools.pairwise(residuals):
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

    The solver's calls (``step_at``) go to the propagator's ``linearized(states)`` where it has one (the built-in
    propagators: the layers and states in reversed order once, so each call's intervals are a strided
    progression), else through ``step`` (a gather of the states per call).
    """

    def __init__(self, prop: Propagator, states: torch.Tensor) -> None:
        self.prop = prop
        self.kernel = getattr(prop, "kernel", "torch")  # the forward's choice holds for its adjoint
        self.states = states
        self.n_steps = states.shape[0] - 1
        linearized = getattr(prop, "linearized", None)
        lin = linearized(states) if linearized is not None else None
        self.step_at: StepAt = lin.step_at if lin is not None else _ByIndex(self).step_at
        if lin is not None and hasattr(lin, "sweep_at"):
            self.sweep_at = lin.sweep_at
        if hasattr(prop, "new_states"):  # the adjoint's states take the forward's layout
            self.new_states = prop.new_states

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
