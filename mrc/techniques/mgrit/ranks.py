"""MGRIT across ranks: each process holds one contiguous block of a stack's layers and its states.

Layer-parallel training in the seed's sense (seeds/layer-parallel-mgrit.md, `distributed layers`):
the N fine steps of a problem u_0 = u0, u_n = Φ_{n-1}(u_{n-1}) are split into one block per rank
at boundaries of whole coarsest-level intervals (multiples of C = Π cf_l, the fine steps of one
coarsest step; the last block ends at N and holds the uneven tail). A rank owns the points
(lo, hi] of its block (rank 0 also point 0) on every level and keeps point lo — its
predecessor's last point, a C-point of every level — as a ghost at local index 0. So a rank's
share of a level is itself a small MGRIT level whose point 0 is a C-point, and the phases run
on it exactly as `mrc.techniques.mgrit.solver.MGRIT` runs them on the whole level, with three
additions that make the iterates those of the one-process solver:

* before every F-relaxation each rank sends its last point of the level to its successor, which
  receives it into its ghost (one state per block boundary, point-to-point): the F-points after
  a block's first C-point read it;
* the level-0 residual norm is the square root of the sum over ranks of each block's Σ r² (summed
  in the coarsest level's gather of the same iteration: one collective fewer per iteration);
* the coarsest level is gathered — every rank's g at the points it owns, summed into one
  buffer (an all-gather by an all-reduce over disjoint slots, exact) — then solved serially on
  every rank (replicated, each up to its own last point) and each rank keeps its block.

The adjoint λ_N = g, λ_n = (∂Φ_n/∂u at y_n)ᵀ λ_{n+1} is the same solver in reversed time. Its
coarsest intervals are counted from N, so with N mod C ≠ 0 its blocks are the forward ones
shifted down by d = (−N) mod C layers (`adjoint_blocks`: rank r keeps as many intervals as in
the forward solve); before the adjoint each rank receives the d forward states below its
forward block from its predecessor, and the forward states at the adjoint's coarsest points are
gathered once (its coarsest level is solved on every rank too). A stack propagator linearises
those layers once per solve (`linearized_part`: σ'(z) of the block's layers and of the coarsest
points, so each call is two ops on strided views, as in one process); any other propagator is
called with the table's states (`RankAdjoint`). Each rank then computes the parameter gradients
of the layers of its adjoint block (reusing the block's σ'(z)); summing them over ranks gives
every rank the whole stack's gradient (the `mgrit_sum_grads` op, mrc/techniques/mgrit/place.py).

A rank's states take the propagator's layout (`new_states`: a dense stack's are features first);
the messages carry contiguous copies of them. On a world of one process a block is the whole
problem and nothing is communicated: the solver is the one-process solver. Point-to-point
messages use torch.distributed directly; the collectives go through `mrc.runtime.world.World`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mrc.techniques.mgrit.grid import Blocks, Settings, coarsest_span
from mrc.techniques.mgrit.solver import MGRIT, Propagator, _Level, new_states_of, step_at_of, sweep_at_of

__all__ = ["Part", "RankAdjoint", "RankMGRIT", "adjoint_part", "adjoint_table", "block_lambdas",
           "block_param_grads", "first_lambda", "forward_part", "last_state", "rank_adjoint_solve",
           "rank_forward_solve"]

@dataclass(frozen=True)
class Part:
    """One rank's share of a problem of N steps (in the problem's own index: reversed for the adjoint): the
    points (lo, hi] (and 0 when lo = 0), the ghost point lo, and the ranks that hold the points before lo
    (`prev`) and after hi (`next`), -1 where there are none."""

    lo: int
    hi: int
    prev: int = -1
    next: int = -1


def forward_part(blocks: Blocks, rank: int) -> Part:
    """Rank `rank`'s part of the forward problem: its layer block, ranks in order."""
    lo, hi = blocks[rank]
    return Part(lo, hi, rank - 1, rank + 1 if rank + 1 < len(blocks) else -1)


def adjoint_part(n_steps: int, blocks: Blocks, rank: int) -> Part:
    """Rank `rank`'s part of the adjoint problem (reversed time) from its adjoint layer block [a, b): the
    reversed points (N − b, N − a]; its predecessor is rank + 1, its successor rank − 1."""
    a, b = blocks[rank]
    return Part(n_steps - b, n_steps - a, rank + 1 if rank + 1 < len(blocks) else -1, rank - 1)


class _Guarded:
    """A propagator that answers a call over no intervals itself (a rank's block may have no C-point on a
    level: the last block's uneven tail)."""

    def __init__(self, prop: Any) -> None:
        self.prop = prop
        self.step_at = step_at_of(prop)  # the solver makes no call over no intervals
        self.sweep_at = sweep_at_of(prop)
        self.new_states = new_states_of(prop)  # the propagator's layout (a dense stack's: features first)

    def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        return u.clone() if u.shape[0] == 0 else self.prop.step(start, span, u)

    def vjp(self, start: torch.Tensor, span: int, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return lam.clone() if lam.shape[0] == 0 else self.prop.vjp(start, span, y, lam)


class RankMGRIT(MGRIT):
    """The MGRIT solve of one rank's part (see the module docstring): `states` are the part's fine states
    [hi − lo + 1, *state], the ghost point lo first. The phases, their order, `residuals` and stopping are the
    one-process solver's; every rank must run the same phases (they exchange states and reduce norms)."""

    def __init__(self, prop: Propagator, n_steps: int, settings: Settings, part: Part, world: Any) -> None:
        super().__init__(prop, n_steps, settings)
        span = coarsest_span(settings)
        if not (0 <= part.lo < part.hi <= n_steps and part.lo % span == 0
                and (part.hi % span == 0 or part.hi == n_steps)):
            raise ValueError(f"the part ({part.lo}, {part.hi}] of N = {n_steps} steps is not whole coarsest "
                             f"intervals of {span} steps")
        if (part.prev >= 0) != (part.lo > 0) or (part.next >= 0) != (part.hi < n_steps):
            raise ValueError(f"the part ({part.lo}, {part.hi}] of N = {n_steps} has neighbours {part.prev} "
                             f"and {part.next}: a part has a predecessor iff lo > 0 and a successor iff hi < N")
        self.prop = _Guarded(prop)
        self._step_at, self._sweep_at = step_at_of(self.prop), sweep_at_of(self.prop)
        self._new_states = new_states_of(self.prop)  # the messages send and receive contiguous copies of rows
        self._squares: torch.Tensor | None = None  # this part's Σ r² of the iteration, not summed over ranks yet
        self._norm_out = torch.empty(0)
        self.part = part
        self.world = world

    def start(self, u0: torch.Tensor, warm: torch.Tensor | None = None) -> None:
        """Initial condition u0 (every rank has it) and this part's initial guess: `warm` [hi − lo + 1, *state]
        (a previous solve's `states`, the ghost first), else u0 at every point (the constant guess)."""
        self._squares = None
        lo, hi = self.part.lo, self.part.hi
        if warm is not None and warm.shape != (hi - lo + 1, *u0.shape):
            raise ValueError(f"warm has shape {tuple(warm.shape)}, expected {(hi - lo + 1, *u0.shape)}")
        u = self._initial(hi - lo + 1, u0, warm)
        if lo == 0:
            u[0] = u0
        g = torch.zeros_like(u0).unsqueeze(0)  # g_0 = (u0 or 0, 0, …): only point 0 is read (g_zero)
        if lo == 0:
            g[0] = u0
        s = self.settings
        self._levels = []
        span = 1
        for level in range(s.levels):
            coarsest = level == s.levels - 1
            cf = 0 if coarsest else s.factor(level)
            n = min(hi, self._sizes[level] * span) // span - lo // span  # this part's points of the level
            self._levels.append(_Level(n, cf, span, "" if coarsest else s.relaxation(level), u.device, offset=lo))
            span *= max(cf, 1)
        self._bind(u, g)

    # ---------------------------------------------------------------- what ranks add

    def _exchange(self, u: torch.Tensor) -> None:
        """Send this part's last point of the level on; receive the predecessor's into the ghost."""
        if not self.world.active:
            return
        import torch.distributed as dist

        sent = dist.isend(u[-1].contiguous(), self.part.next) if self.part.next >= 0 else None
        if self.part.prev >= 0:
            ghost = torch.empty(u.shape[1:], dtype=u.dtype, device=u.device)
            dist.recv(ghost, self.part.prev)
            u[0].copy_(ghost)
        if sent is not None:
            sent.wait()

    def _f_relax(self, lv: _Level) -> None:
        self._exchange(lv.u)
        super()._f_relax(lv)

    def _norm(self, r: torch.Tensor) -> torch.Tensor:
        """This part's Σ r², summed over the ranks by the coarsest level's gather later in the iteration (one
        collective, not two: each is a meeting of the ranks); returns the norm's tensor, filled there."""
        if not self.world.active:  # one process: the one-process solver's norm, bit for bit
            return super()._norm(r)
        self._squares = r.double().square().sum()
        self._norm_out = torch.empty((), dtype=torch.float64, device=r.device)
        return self._norm_out

    def _coarse_solve(self, l: int) -> None:
        """Gather g of the coarsest level, sweep it serially up to this part's last point, keep the part."""
        lv = self._levels[l]
        first = self.part.lo // lv.span  # the ghost's index on the level
        whole = torch.zeros(self._sizes[l] + 1, *lv.g.shape[1:], dtype=lv.g.dtype, device=lv.g.device)
        if not lv.g_zero:  # the fine level's g is zero after point 0 (a one-level solve)
            whole[first + 1:first + 1 + lv.n] = lv.g[1:]
        if self.part.lo == 0:
            whole[0] = lv.g[0]
        squares, self._squares = self._squares, None
        if squares is None:
            self.world.all_reduce(whole)  # disjoint slots: the sum is each owner's value, exactly
        else:  # and the level-0 residual's Σ r², in float64 (the states' float32 values are exact there)
            flat = torch.cat([whole.reshape(-1).double(), squares.reshape(1)])
            self.world.all_reduce(flat)
            whole.copy_(flat[:-1].view(whole.shape))
            self._norm_out.copy_(flat[-1].sqrt())
        u, g = self._new_states(whole.shape, whole).copy_(whole), whole  # u_0 = g_0 on every level
        last = first + lv.n + 1
        self._sweep_at(0, lv.span, lv.span, u[:last], g[:last])
        lv.u.copy_(u[first:first + lv.n + 1])


def rank_forward_solve(prop: Propagator, n_steps: int, settings: Settings, blocks: Blocks, world: Any,
                       u0: torch.Tensor, warm: torch.Tensor | None = None) -> RankMGRIT:
    """A started forward solve of this rank's block (run its phases, or `solve()` it)."""
    solver = RankMGRIT(prop, n_steps, settings, forward_part(blocks, world.rank), world)
    solver.start(u0, warm)
    return solver


def last_state(solver: RankMGRIT, like: torch.Tensor) -> torch.Tensor:
    """y_N on every rank: the last rank's final state (it holds point N), broadcast from it."""
    owner = solver.world.size - 1
    out = (solver.states[-1].clone(memory_format=torch.contiguous_format) if solver.world.rank == owner
           else torch.empty(like.shape, dtype=like.dtype, device=like.device))
    return solver.world.broadcast(out, owner)


class RankAdjoint:
    """The adjoint propagator of one rank (as `mrc.techniques.mgrit.solver.Adjoint`): Ψ over reversed
    [start, start + span) is (∂Φ(N − start − span, span)/∂u)ᵀ about the forward state y_{N−start−span}, read from
    this rank's `table` of forward states (rows by forward index, `rows`; -1 where it holds none)."""

    def __init__(self, prop: Propagator, n_steps: int, rows: torch.Tensor, table: torch.Tensor) -> None:
        self.prop, self.n_steps, self.rows, self.table = prop, n_steps, rows, table
        self._runs: dict[tuple[int, int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _rows(self, forward: torch.Tensor) -> torch.Tensor:
        at = self.rows[forward]
        if at.device.type == "cpu" and at.numel() and int(at.min()) < 0:
            raise IndexError(f"this rank holds no forward state at {forward[at < 0].tolist()}")
        return at

    def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        forward = self.n_steps - start - span
        return self.prop.vjp(forward, span, self.table[self._rows(forward)], u)

    def step_at(self, first: int, stride: int, span: int, u: torch.Tensor, out: torch.Tensor | None = None,
                add: torch.Tensor | None = None) -> torch.Tensor:
        """The solver's call (`StackPropagator.step_at`'s contract): the forward layers and table rows of each
        progression are found and checked once per solve, and the propagator's vjp runs without its checks."""
        m = u.shape[0]
        got = self._runs.get((first, stride, m, span))
        if got is None:
            forward = self.n_steps - span - first - stride * torch.arange(m, device=u.device)
            got = self._runs[(first, stride, m, span)] = (forward, self._rows(forward))
        forward, at = got
        unchecked = getattr(self.prop, "vjp_unchecked", None)
        y = self.table[at]
        res = unchecked(forward, span, y, u) if unchecked is not None else self.prop.vjp(forward, span, y, u)
        if add is not None:
            res = res + add
        return res if out is None else out.copy_(res)

    def vjp(self, start: torch.Tensor, span: int, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("RankAdjoint.vjp is not needed by MGRIT and not provided")


def adjoint_table(n_steps: int, settings: Settings, forward: Blocks, adjoint: Blocks, world: Any,
                  states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, table): the forward states this rank's adjoint reads — those of its adjoint layer block (its own,
    and the d below its forward block, received from its predecessor) and those at the adjoint's coarsest
    points (gathered from their owners) — from `states`, its forward part's [hi − lo + 1] states."""
    rank = world.rank
    lo, hi = forward[rank]
    a, b = adjoint[rank]
    d = -n_steps % coarsest_span(settings)
    below = torch.empty(0, *states.shape[1:], dtype=states.dtype, device=states.device)
    if world.active and d:
        import torch.distributed as dist

        sent = None
        if rank + 1 < len(forward):  # the successor's adjoint block starts d below its forward one
            sent = dist.isend(states[hi - lo - d:hi - lo].contiguous(), rank + 1)
        if a < lo:
            below = torch.empty(lo - a, *states.shape[1:], dtype=states.dtype, device=states.device)
            dist.recv(below, rank - 1)
        if sent is not None:
            sent.wait()
    block = torch.cat([below, states[max(a, lo) - lo:b - lo]])  # y_a … y_{b-1}
    span = coarsest_span(settings)
    points = [n_steps - (k + 1) * span for k in range(settings.sizes(n_steps)[-1])]
    coarse = torch.zeros(len(points), *states.shape[1:], dtype=states.dtype, device=states.device)
    own = [k for k, f in enumerate(points) if lo < f <= hi or f == lo == 0]  # a run of k: f falls with k
    if own:  # one strided copy: the points this rank holds, every span-th of its states
        first, last = own[0], own[-1]
        coarse[first:last + 1] = states[points[last] - lo:points[first] - lo + 1:span].flip(0)
    world.all_reduce(coarse)  # disjoint slots: each owner's state, exactly
    rows = torch.full((n_steps + 1,), -1, dtype=torch.long, device=states.device)
    if points:
        rows[torch.tensor(points, device=states.device)] = torch.arange(len(points), device=states.device) + len(block)
    rows[a:b] = torch.arange(b - a, device=states.device)
    return rows, torch.cat([block, coarse])


class _PartAdjoint:
    """The adjoint steps of a rank's part as the solver calls them: a propagator's `linearized_part`
    (`StackPropagator`: σ'(z) made once per solve for the block's layers and the coarsest points, each call
    two ops on strided views, as one process's `StackAdjoint`), its states in the forward's layout."""

    def __init__(self, linear: Any, new_states: Any) -> None:
        self.step_at = linear.step_at
        self.sweep_at = linear.sweep_at
        self.new_states = new_states

    def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("a rank's adjoint steps run through step_at only")

    def vjp(self, start: torch.Tensor, span: int, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the adjoint of the adjoint is never needed")


def _block_states(table: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """y_a … y_b of this rank's adjoint block from its `adjoint_table`: y_b, never read, is the table's next
    row (its first coarsest point; there is always one). The same view each call, so the gradients reuse
    the solve's σ'(z)."""
    return table[:b - a + 1]


def rank_adjoint_solve(prop: Propagator, n_steps: int, settings: Settings, adjoint: Blocks, world: Any,
                       rows: torch.Tensor, table: torch.Tensor, g: torch.Tensor,
                       warm: torch.Tensor | None = None) -> RankMGRIT:
    """A started adjoint solve of this rank's adjoint block; `warm`: a previous `block_lambdas` (λ_a … λ_b).
    A propagator with `linearized_part` (dense and conv stacks) linearises the block's layers and the
    coarsest points once; any other answers each call from the table (`RankAdjoint`)."""
    part = getattr(prop, "linearized_part", None)
    a, b = adjoint[world.rank]
    span, points = coarsest_span(settings), settings.sizes(n_steps)[-1]
    if part is not None and table.shape[0] == b - a + points:
        coarse = table[b - a:].flip(0)  # the coarsest points N − span, N − 2·span, …: forward order
        adj: Any = _PartAdjoint(part(_block_states(table, a, b), a, (n_steps - points * span, span, coarse)),
                                new_states_of(prop))
    else:
        adj = RankAdjoint(prop, n_steps, rows, table)
    solver = RankMGRIT(adj, n_steps, settings, adjoint_part(n_steps, adjoint, world.rank), world)
    solver.start(g, None if warm is None else warm.flip(0))
    return solver


def block_lambdas(solver: RankMGRIT) -> torch.Tensor:
    """λ_a … λ_b over this rank's adjoint block [a, b) (its λ_b the successor's), in forward order."""
    return solver.states.flip(0)


def first_lambda(lam: torch.Tensor, world: Any) -> torch.Tensor:
    """λ_0 on every rank (the gradient into the stack's input), broadcast from rank 0, which holds it."""
    out = (lam[0].clone(memory_format=torch.contiguous_format) if world.rank == 0
           else torch.empty(lam.shape[1:], dtype=lam.dtype, device=lam.device))
    return world.broadcast(out, 0)


def block_param_grads(prop: Any, n_steps: int, adjoint: Blocks, rank: int, rows: torch.Tensor, table: torch.Tensor,
                      lam: torch.Tensor) -> None:
    """Accumulate the fine-level gradients of this rank's adjoint layers [a, b) into their parameters."""
    a, b = adjoint[rank]
    prop.param_grads(_block_states(table, a, b), lam, first=a)  # (y_b is not read)
