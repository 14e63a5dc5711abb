"""Initial guesses of an MGRIT solve (`warm_start = previous | shifted | coarse | off`).

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
* `off`: every point starts at y_0 (forward) or g (adjoint).

The adjoint's guesses are the same in reversed time (g for y_0; its coarse sweep linearises
about the forward solve's states at the coarsest points).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["coarse_sweep", "shifted"]


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
