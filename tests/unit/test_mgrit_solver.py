"""The generic MGRIT solver (mrc.techniques.mgrit.solver) on plain ODEs, in float64.

What is checked: convergence to serial propagation (1e-12) over levels, coarsening factors (uniform and per level),
F/FCF relaxation and uneven N; levels = 1 is serial bit for bit; every iterate equals an independent, unbatched
reference V-cycle written here with plain loops; MGRIT's finite-step exactness (two levels, exact coarse solve:
after k iterations the points up to k·cf are exact with F-relaxation, up to 2k·cf with FCF); decreasing residuals,
factors < 1, early stopping by tol, warm starts; the adjoint against the serial vjp recurrence and autograd; and the
batching (calls to `step` per iteration independent of N but for the coarsest level).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from mrc.techniques.mgrit.grid import Settings
from mrc.techniques.mgrit.solver import MGRIT, Adjoint, adjoint_solve, lambdas

DT = torch.float64


class ScalarLinear:
    """Φ_n(u) = u + span·h·λ_{start}·u with a per-step coefficient λ_n < 0 (a contractive scalar ODE)."""

    def __init__(self, n: int, h: float = 0.05, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.lam = -(0.5 + torch.rand(n, generator=gen, dtype=DT))
        self.h = h

    def _c(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        return (1 + span * self.h * self.lam[start]).view(-1, *([1] * (u.dim() - 1)))

    def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        return self._c(start, span, u) * u

    def vjp(self, start: torch.Tensor, span: int, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return self._c(start, span, lam) * lam


class VectorTanh:
    """Φ_n(u) = u + span·h·tanh(W_n u + b_n) on a state [B, d] (a batch of B vectors), random W_n, b_n."""

    def __init__(self, n: int, d: int = 4, batch: int = 3, h: float | None = None, seed: int = 1) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.W = torch.randn(n, d, d, generator=gen, dtype=DT) / d**0.5
        self.b = 0.3 * torch.randn(n, d, generator=gen, dtype=DT)
        self.h = 2.0 / n if h is None else h
        self.shape = (batch, d)

    def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("mij,mbj->mbi", self.W[start], u) + self.b[start][:, None, :]
        return u + span * self.h * torch.tanh(z)

    def vjp(self, start: torch.Tensor, span: int, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("mij,mbj->mbi", self.W[start], y) + self.b[start][:, None, :]
        return lam + span * self.h * torch.einsum("mij,mbi->mbj", self.W[start], (1 - torch.tanh(z) ** 2) * lam)


class Counting:
    """Wraps a propagator and counts its `step` calls and the total batch size they carry."""

    def __init__(self, prop) -> None:
        self.prop, self.calls, self.rows = prop, 0, 0

    def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += u.shape[0]
        return self.prop.step(start, span, u)

    def vjp(self, start, span, y, lam):
        return self.prop.vjp(start, span, y, lam)


def one(prop, n: int, span: int, x: torch.Tensor) -> torch.Tensor:
    """One unbatched step from fine index n."""
    return prop.step(torch.tensor([n]), span, x[None])[0]


def serial(prop, u0: torch.Tensor, n: int) -> torch.Tensor:
    ys = [u0]
    for k in range(n):
        ys.append(one(prop, k, 1, ys[-1]))
    return torch.stack(ys)


def u0_for(prop) -> torch.Tensor:
    if isinstance(prop, VectorTanh):
        return torch.linspace(-1.0, 1.0, prop.shape[0] * prop.shape[1], dtype=DT).view(prop.shape)
    return torch.tensor(1.5, dtype=DT)


def make(kind: str, n: int):
    return ScalarLinear(n) if kind == "linear" else VectorTanh(n)


# ---------------------------------------------------------------- an independent, unbatched reference V-cycle


def ref_vcycle(prop, u: list, g: list, cfs: list[int], relax: list[str], span: int = 1) -> float | None:
    """One FAS V-cycle on lists of point states, point by point; returns the C-point residual norm of this level."""
    n = len(u) - 1
    if not cfs:
        for k in range(1, n + 1):
            u[k] = one(prop, (k - 1) * span, span, u[k - 1]) + g[k]
        return None
    cf = cfs[0]

    def f_relax() -> None:
        for k in range(1, n + 1):
            if k % cf:
                u[k] = one(prop, (k - 1) * span, span, u[k - 1]) + g[k]

    f_relax()
    if relax[0] == "FCF":
        for k in range(cf, n + 1, cf):
            u[k] = one(prop, (k - 1) * span, span, u[k - 1]) + g[k]
        f_relax()
    nc = n // cf
    r = [g[k * cf] - (u[k * cf] - one(prop, (k * cf - 1) * span, span, u[k * cf - 1])) for k in range(1, nc + 1)]
    uc = [u[k * cf].clone() for k in range(nc + 1)]
    gc = [g[0]] + [uc[k] - one(prop, (k - 1) * span * cf, span * cf, uc[k - 1]) + r[k - 1] for k in range(1, nc + 1)]
    v = [x.clone() for x in uc]
    ref_vcycle(prop, v, gc, cfs[1:], relax[1:], span * cf)
    for k in range(1, nc + 1):
        u[k * cf] = u[k * cf] + (v[k] - uc[k])
    f_relax()
    return float(torch.sqrt(sum((x**2).sum() for x in r)))


# ---------------------------------------------------------------- exactness and convergence


@pytest.mark.parametrize("kind", ["linear", "vector"])
@pytest.mark.parametrize("n", [1, 37, 64])
def test_one_level_is_serial_bit_for_bit(kind: str, n: int) -> None:
    prop = make(kind, n)
    u0 = u0_for(prop)
    solver = MGRIT(prop, n, Settings(levels=1, iters=1))
    solver.start(u0)
    assert solver.phases == [("coarse_solve", 0)]
    assert torch.equal(solver.solve(), serial(prop, u0, n))
    assert solver.residuals == [0.0]


def _grid() -> list[tuple]:
    out = []
    for kind, levels, cf, relax, n in itertools.product(
            ["linear", "vector"], [2, 3, 4], [2, 4], ["F", "FCF"], [37, 50, 64]):
        if Settings(levels=levels, coarsening=(cf,), relax=(relax,)).validate(n) is None:
            out.append((kind, levels, (cf,), (relax,), n))
    out += [(kind, 3, (2, 4), ("FCF", "F"), n) for kind in ["linear", "vector"] for n in [37, 64]]
    out += [(kind, 4, (3, 2, 2), ("F", "FCF", "F"), 50) for kind in ["linear", "vector"]]
    return out


@pytest.mark.parametrize(("kind", "levels", "cf", "relax", "n"), _grid())
def test_converges_to_serial(kind: str, levels: int, cf: tuple, relax: tuple, n: int) -> None:
    prop = make(kind, n)
    u0 = u0_for(prop)
    solver = MGRIT(prop, n, Settings(levels=levels, coarsening=cf, relax=relax, iters=60, tol=1e-13))
    solver.start(u0)
    states = solver.solve()
    assert solver.converged, solver.residuals
    torch.testing.assert_close(states, serial(prop, u0, n), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "vector"])
@pytest.mark.parametrize(("levels", "cf", "relax"), [(2, [4], ["F"]), (2, [3], ["FCF"]), (3, [2, 3], ["FCF", "F"])])
def test_every_iterate_matches_an_unbatched_reference(kind: str, levels: int, cf: list, relax: list) -> None:
    n = 37
    prop = make(kind, n)
    u0 = u0_for(prop)
    solver = MGRIT(prop, n, Settings(levels=levels, coarsening=tuple(cf), relax=tuple(relax), iters=6))
    solver.start(u0)
    u = [u0.clone() for _ in range(n + 1)]
    g = [u0.clone()] + [torch.zeros_like(u0) for _ in range(n)]
    for _ in range(6):
        expected_r = ref_vcycle(prop, u, g, cf, relax)
        got_r = solver.iterate()
        torch.testing.assert_close(solver.states, torch.stack(u), rtol=0, atol=1e-13)
        assert got_r == pytest.approx(expected_r, rel=1e-10, abs=1e-15)


@pytest.mark.parametrize("kind", ["linear", "vector"])
@pytest.mark.parametrize(("relax", "per_iter"), [("F", 1), ("FCF", 2)])
def test_two_level_finite_step_exactness(kind: str, relax: str, per_iter: int) -> None:
    """Two levels, exact (serial) coarse solve: after k iterations every point up to per_iter·k·cf is exact
    (F-relaxation carries exactness one interval per iteration, FCF two); the next C-point is not yet."""
    n, cf = 64, 4
    prop = make(kind, n)
    u0 = u0_for(prop)
    exact = serial(prop, u0, n)
    solver = MGRIT(prop, n, Settings(levels=2, coarsening=(cf,), relax=(relax,), iters=5))
    solver.start(u0)
    for k in range(1, 5):
        solver.iterate()
        err = (solver.states - exact).reshape(n + 1, -1).abs().amax(1)
        reach = per_iter * k * cf
        assert float(err[: reach + 1].max()) < 1e-14, (k, err[: reach + 1])
        assert float(err[reach + cf]) > 1e-9, (k, err[reach + cf])


def test_residuals_decrease_and_factors_below_one() -> None:
    n = 64
    prop = ScalarLinear(n)
    for settings in [Settings(levels=2, coarsening=(4,), relax=("F",), iters=8),
                     Settings(levels=3, coarsening=(2,), relax=("FCF",), iters=8)]:
        solver = MGRIT(prop, n, settings)
        solver.start(u0_for(prop))
        solver.solve()
        assert len(solver.residuals) == 8
        assert all(b < a for a, b in itertools.pairwise(solver.residuals)), solver.residuals
        f = solver.factors()
        assert len(f) == 7 and max(f) < 0.5, f


def test_tol_stops_early() -> None:
    n = 50
    prop = VectorTanh(n)
    u0 = u0_for(prop)
    solver = MGRIT(prop, n, Settings(levels=3, coarsening=(2,), relax=("FCF",), iters=100, tol=1e-8))
    solver.start(u0)
    states = solver.solve()
    r = solver.residuals
    assert solver.converged and r[-1] < 1e-8 and all(x >= 1e-8 for x in r[:-1])
    assert len(r) < 100
    # the measured residual precedes the last correction: the states are at least that good
    assert float((states - serial(prop, u0, n)).abs().max()) < 1e-8
    # tol = 0 runs exactly `iters`
    exact = MGRIT(prop, n, Settings(levels=3, coarsening=(2,), relax=("FCF",), iters=3))
    exact.start(u0)
    exact.solve()
    assert len(exact.residuals) == 3 and not exact.converged


def test_warm_start() -> None:
    n = 37
    prop = VectorTanh(n)
    u0 = u0_for(prop)
    y = serial(prop, u0, n)
    solver = MGRIT(prop, n, Settings(levels=3, coarsening=(3,), iters=1))
    solver.start(u0, warm=y)
    solver.solve()
    assert solver.residuals[0] < 1e-14
    torch.testing.assert_close(solver.states, y, rtol=0, atol=1e-14)
    # point 0 is always u0, whatever the warm start says there
    bad = y.clone()
    bad[0] += 1.0
    solver.start(u0, warm=bad)
    assert torch.equal(solver.states[0], u0)
    # the default guess is u0 everywhere
    solver.start(u0)
    assert torch.equal(solver.states, u0.expand(n + 1, *u0.shape))


# ---------------------------------------------------------------- the adjoint


def serial_adjoint(prop, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    n = y.shape[0] - 1
    lam = [g]
    for k in reversed(range(n)):
        lam.append(prop.vjp(torch.tensor([k]), 1, y[k : k + 1], lam[-1][None])[0])
    return torch.stack(lam[::-1])


@pytest.mark.parametrize("kind", ["linear", "vector"])
@pytest.mark.parametrize(("levels", "cf", "relax", "n"), [(2, (4,), ("F",), 50), (3, (2, 3), ("FCF", "F"), 37)])
def test_adjoint_matches_serial_and_autograd(kind: str, levels: int, cf: tuple, relax: tuple, n: int) -> None:
    prop = make(kind, n)
    u0 = u0_for(prop)
    y = serial(prop, u0, n)
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(u0.shape, generator=gen, dtype=DT)
    settings = Settings(levels=levels, coarsening=cf, relax=relax, iters=60, tol=1e-14)
    solver = adjoint_solve(prop, y, g, settings)
    assert solver.converged
    lam = lambdas(solver)
    assert torch.equal(lam[-1], g)
    torch.testing.assert_close(lam, serial_adjoint(prop, y, g), rtol=0, atol=1e-12)
    # λ_0 = d⟨g, y_N⟩ / d y_0 through the serial propagation
    x0 = u0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((serial(prop, x0, n)[-1] * g).sum(), x0)
    torch.testing.assert_close(lam[0], grad, rtol=0, atol=1e-10)


def test_adjoint_gives_the_parameter_gradients() -> None:
    """Σ_n ⟨λ_{n+1}, ∂Φ_n/∂θ_n⟩ at the forward states equals autograd's d⟨g, y_N⟩/dθ (θ = all W_n, b_n)."""
    n = 37
    prop = VectorTanh(n)
    u0 = u0_for(prop)
    settings = Settings(levels=3, coarsening=(3,), relax=("FCF",), iters=60, tol=1e-14)
    fwd = MGRIT(prop, n, settings)
    fwd.start(u0)
    y = fwd.solve().clone()
    g = torch.ones(u0.shape, dtype=DT)
    lam = lambdas(adjoint_solve(prop, y, g, settings))
    W, b = prop.W.clone().requires_grad_(True), prop.b.clone().requires_grad_(True)
    # parameter gradient of each layer at the MGRIT states, weighted by the MGRIT adjoint
    out = sum((lam[k + 1] * (y[k] + prop.h * torch.tanh(y[k] @ W[k].T + b[k]))).sum() for k in range(n))
    gW, gb = torch.autograd.grad(out, (W, b))
    # autograd through the serial propagation
    W2, b2 = prop.W.clone().requires_grad_(True), prop.b.clone().requires_grad_(True)
    x = u0
    for k in range(n):
        x = x + prop.h * torch.tanh(x @ W2[k].T + b2[k])
    eW, eb = torch.autograd.grad((x * g).sum(), (W2, b2))
    torch.testing.assert_close(gW, eW, rtol=0, atol=1e-10)
    torch.testing.assert_close(gb, eb, rtol=0, atol=1e-10)


def test_adjoint_step_indexing() -> None:
    """Ψ over reversed [m, m+1) is the transpose of forward step N − m − 1 about y_{N−m−1}."""
    n = 9
    prop = ScalarLinear(n)
    y = serial(prop, torch.tensor(1.0, dtype=DT), n)
    adj = Adjoint(prop, y)
    lam = torch.ones(n, dtype=DT)
    out = adj.step(torch.arange(n), 1, lam)
    torch.testing.assert_close(out, 1 + prop.h * prop.lam.flip(0))
    # a coarse step over reversed [m, m+3) is the transpose of the coarse forward step Φ(N − m − 3, 3)
    m = torch.arange(n - 2)
    torch.testing.assert_close(adj.step(m, 3, lam[: n - 2]), 1 + 3 * prop.h * prop.lam[n - m - 3])
    with pytest.raises(NotImplementedError):
        adj.vjp(torch.arange(1), 1, lam[:1], lam[:1])


# ---------------------------------------------------------------- batching, phases, validation


@pytest.mark.parametrize(("levels", "cf", "relax"), [(3, 4, "FCF"), (4, 2, "F")])
def test_step_calls_per_iteration_do_not_grow_with_n(levels: int, cf: int, relax: str) -> None:
    counts = {}
    for n in (64, 256):
        prop = Counting(ScalarLinear(n))
        solver = MGRIT(prop, n, Settings(levels=levels, coarsening=(cf,), relax=(relax,), iters=1))
        solver.start(torch.tensor(1.0, dtype=DT))
        solver.solve()
        per_level = (cf - 1) * (2 if relax == "F" else 3) + (1 if relax == "FCF" else 0) + 2
        n_coarsest = n // cf ** (levels - 1)
        assert prop.calls == (levels - 1) * per_level + n_coarsest
        # each point is touched a bounded number of times: the batches carry O(N) rows in all
        assert prop.rows <= 4 * 2 * n
        counts[n] = prop.calls - n_coarsest
    assert counts[64] == counts[256]


def test_phases_order_is_enforced() -> None:
    n = 64
    solver = MGRIT(ScalarLinear(n), n, Settings(levels=3, coarsening=(4,)))
    assert solver.phases == [("relax", 0), ("restrict", 0), ("relax", 1), ("restrict", 1), ("coarse_solve", 2),
                             ("correct", 1), ("correct", 0)]
    solver.start(torch.tensor(1.0, dtype=DT))
    with pytest.raises(ValueError, match="out of order"):
        solver.run("restrict", 0)
    solver.run("relax", 0)
    with pytest.raises(RuntimeError, match="incomplete"):
        solver.end_iteration()
    for phase, level in solver.phases[1:]:
        solver.run(phase, level)
    assert solver.end_iteration() == solver.residuals[-1] > 0


@pytest.mark.parametrize(("settings", "n", "words"), [
    (Settings(levels=3, coarsening=(4,)), 10, "level 1"),
    (Settings(levels=2, coarsening=(4,)), 3, "level 0"),
    (Settings(levels=3, coarsening=(2, 2, 2)), 64, "coarsening has 3"),
    (Settings(levels=3, relax=("F", "C")), 64, "'F' or 'FCF'"),
    (Settings(levels=2, coarsening=(1,)), 64, "≥ 2"),
    (Settings(levels=0), 64, "levels"),
    (Settings(iters=0), 64, "iters"),
    (Settings(tol=-1.0), 64, "tol"),
])
def test_validate_names_the_problem(settings: Settings, n: int, words: str) -> None:
    reason = settings.validate(n)
    assert reason is not None and words in reason and "\n" not in reason
    with pytest.raises(ValueError, match=words):
        MGRIT(ScalarLinear(n), n, settings)


def test_validate_accepts_fitting_hierarchies() -> None:
    assert Settings().validate(16) is None  # 16 → 4 → 1
    assert Settings(levels=1).validate(1) is None
    assert Settings(levels=3, coarsening=[2, 4], relax="F").validate(8) is None  # lists and bare strings coerce
    assert Settings(levels=3, coarsening=[2, 4]).coarsening == (2, 4)


@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_the_fas_correction_fuses_only_where_the_stack_chose_triton(kernel: str, monkeypatch) -> None:
    """`kernels = torch` holds for the FAS correction too: the fused correction is asked for only
    when the propagator's kernel is Triton (for the forward solve and for its adjoint)."""
    from mrc.techniques.mgrit import solver as solver_module

    asked: list[int] = []
    monkeypatch.setattr(solver_module, "fas_correct_fused", lambda *a: asked.append(1) or False)
    n = 16
    prop = ScalarLinear(n)
    prop.kernel = kernel
    states = torch.full((n + 1,), 1.5, dtype=DT)
    for problem in (prop, Adjoint(prop, states)):
        asked.clear()
        solver = MGRIT(problem, n, Settings(levels=3, coarsening=(2,), iters=2))
        solver.start(u0_for(prop))
        solver.solve()
        assert bool(asked) == (kernel == "triton"), type(problem).__name__


@pytest.mark.parametrize("relax", ["F", "FCF"])
def test_a_guess_at_the_fine_c_points_alone_solves_as_the_whole_guess(relax: str) -> None:
    """`start(u0, warm[::cf], every=cf)`: an iteration opens with F-relaxation, which remakes every F-point from
    the C-points, so a guess's F-points are never read: two iterations from the C-points alone give the states
    and residuals of two from the whole guess, bit for bit (an uneven last interval included: N = 37, cf 3); a
    solver that read an F-point of its guess before relaxing, or put the C-points elsewhere, would differ."""
    n, cf = 37, 3
    prop = VectorTanh(n)
    u0 = u0_for(prop)
    settings = Settings(levels=3, coarsening=(cf,), relax=(relax,), iters=2, tol=0.0)
    guess = u0 + 0.3 * torch.randn(n + 1, *u0.shape, generator=torch.Generator().manual_seed(5), dtype=DT)
    whole, points = MGRIT(prop, n, settings), MGRIT(prop, n, settings)
    whole.start(u0, guess)
    points.start(u0, guess[::cf], every=cf)
    assert torch.equal(points.states[::cf][1:], guess[::cf][1:])
    assert torch.equal(points.states[1:cf], u0.expand(cf - 1, *u0.shape))  # F-points: u0, never read
    assert torch.equal(whole.solve(), points.solve())
    assert whole.residuals == points.residuals
    with pytest.raises(ValueError, match="warm has shape"):
        MGRIT(prop, n, settings).start(u0, guess, every=cf)
