"""Initial guesses of an MGRIT solve (`warm_start = previous | shifted | coarse | cache | off`).

One-shot training runs few iterations per step, so where each solve starts decides how close
it ends. Across shuffled batches the previous step's states belong to other examples:

* `previous`: the previous step's fine states as they are (point 0 replaced by this step's y_0);
* `shifted` (the default): the previous states moved by this step's change of the initial
  value, u_n = u_n^prev + (y_0 − y_0^prev) — what the layers add to y_0 is kept, the examples'
  own start is this step's; the best start measured across shuffled batches (bench/RESULTS.md,
  "MGRIT warm starts");
* `coarse`: this step's own y_0 swept serially with the coarsest level's propagator, one step of
  C·h per coarsest interval (C = Π cf_l; ⌊N/C⌋ batched steps of one interval), interpolated
  linearly to the fine points — a guess of this batch's examples, which needs nothing kept;
* `cache`: each example's own states from the last step whose batch held it (`ExampleCache`:
  the states of every training example at the fine C-points, forward and adjoint, kept across
  steps: a solve opens with F-relaxation, which remakes every F-point from them). Across
  epochs the weights move little, so an example's last states are a close start. An example not
  solved yet (the first epoch) starts at y_0 (g): in the first epoch of issue 24's level-set
  setting that is closer than the `shifted` guess of its row (mean residuals over 3 seeds, first
  and second forward iteration and adjoint: 4.8, 2.3, 0.017 against 5.3, 3.1, 0.030). It keeps
  2 · examples · (⌊N/cf⌋ + 1) · one example's state bytes (at most CACHE_CAP), and needs each step's
  example indices (in-memory or Dataset data, one process);
* `off`: every point starts at y_0 (forward) or g (adjoint).

The adjoint's guesses are the same in reversed time (g for y_0; its coarse sweep linearises
about the forward solve's states at the coarsest points).
"""

from __future__ import annotations

from typing import Any

import torch

from mrc.lower.plan import LoweringError

__all__ = ["CACHE_CAP", "ExampleCache", "coarse_sweep", "shifted"]

CACHE_CAP = 2 * 2**30
"""The most bytes `warm_start = cache` keeps for one stack (forward and adjoint states together)."""


def coarse_sweep(prop: Any, n_steps: int, span: int, u0: torch.Tensor) -> torch.Tensor:
    """[N + 1, *state]: u0 propagated by ``prop.step`` over the coarsest intervals [kC, (k+1)C)
    (one step of span C each, with the weights of fine layer kC), then interpolated linearly to
    every fine point; the points after the last coarsest point (an uneven tail) hold its value."""
    span = max(1, min(span, n_steps))
    intervals = n_steps // span
    points = [u0]
    with torch.no_grad():
        for k in range(intervals):
            start = torch.tensor([k * span], dtype=torch.long, device=u0.device)
            points.append(prop.step(start, span, points[-1].unsqueeze(0))[0])
    coarse = torch.stack(points)  # [K + 1, *state]
    n = torch.arange(n_steps + 1, device=u0.device)
    lo = torch.clamp(n // span, max=intervals)
    hi = torch.clamp(lo + 1, max=intervals)
    w = torch.where(lo < intervals, (n % span).to(u0.dtype) / span, torch.zeros((), dtype=u0.dtype,
                                                                               device=u0.device))
    w = w.reshape(-1, *([1] * u0.dim()))
    return coarse[lo] + w * (coarse[hi] - coarse[lo])


def shifted(previous: torch.Tensor, u0: torch.Tensor) -> torch.Tensor:
    """The previous states [N + 1, *state] moved by the change of their first point to u0."""
    return previous + (u0 - previous[0]).unsqueeze(0)


class ExampleCache:
    """`warm_start = cache` for one stack: each training example's states of the forward solve and λ
    of the adjoint (in the adjoint solve's order, λ_N first) at the fine C-points, the only points
    of a guess a solve reads (`MGRIT.start`), [examples, ⌊N/cf⌋ + 1, *one example's state] each
    (allocated on the first solve, on the states' device), and which examples each holds
    (`seen`, [examples] bool), all kept in `state` (the lowering's, so a checkpoint keeps them) under
    `key`/cache_forward, … .

    The solver's states are [N + 1, batch, …] with any strides: rows are read and written along
    the batch dimension (index_select / index_copy_), never through a contiguous view."""

    def __init__(self, state: dict[str, torch.Tensor], key: str, examples: int, what: str) -> None:
        self.state, self.key, self.examples, self.what = state, key, examples, what
        self._complete: dict[str, tuple[int, int]] = {}
        """Per solve, the seen mask (id, version) found to hold every example: no more checks."""

    def _seen(self, which: str, device: torch.device) -> torch.Tensor:
        key = f"{self.key}/seen_{which}"
        got = self.state.get(key)
        if got is None:
            got = self.state[key] = torch.zeros(self.examples, dtype=torch.bool, device=device)
        return got

    def rows(self, which: str, rows: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The kept states [N + 1, batch, …] (in the order they were kept, any strides) of the examples `rows` (on
        the states' device), and which of them were kept: None where all were; (None, None) where
        none was (then the caller's fallback is the whole guess)."""
        states = self.state.get(f"{self.key}/cache_{which}")
        if states is None:
            return None, None
        seen = self._seen(which, states.device)
        if self._complete.get(which) != (id(seen), seen._version):
            mask = seen.index_select(0, rows)
            if not bool(mask.all()):
                return (states.index_select(0, rows).transpose(0, 1), mask) if bool(mask.any()) else (None, None)
            if bool(seen.all()):
                self._complete[which] = (id(seen), seen._version)
        return states.index_select(0, rows).transpose(0, 1), None

    def put(self, which: str, rows: torch.Tensor, states: torch.Tensor) -> None:
        """Keep `states` [N + 1, batch, …] (the solve's order: the adjoint's reversed) as the examples `rows`' own."""
        key = f"{self.key}/cache_{which}"
        kept = self.state.get(key)
        shape = (self.examples, states.shape[0], *states.shape[2:])
        if kept is None or kept.shape != shape:
            point = states[0, 0].numel() * states.element_size()
            size = 2 * self.examples * states.shape[0] * point
            if size > CACHE_CAP:
                raise LoweringError(f"{self.what} would keep {size} bytes ({size / 2**30:.2f} GiB) of states "
                                    f"({self.examples} examples × {states.shape[0]} points × {point} bytes, forward "
                                    f"and adjoint), more than the cap of {CACHE_CAP / 2**30:g} GiB; use "
                                    "`warm_start = shifted`")
            kept = self.state[key] = torch.zeros(shape, dtype=states.dtype, device=states.device)
            self.state[f"{self.key}/seen_{which}"] = torch.zeros(self.examples, dtype=torch.bool, device=states.device)
        kept.index_copy_(0, rows, states.transpose(0, 1))
        seen = self._seen(which, states.device)
        if self._complete.get(which) != (id(seen), seen._version):
            seen.index_fill_(0, rows, True)
            if bool(seen.all()):
                self._complete[which] = (id(seen), seen._version)
