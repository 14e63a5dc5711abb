"""The grid of an MGRIT solve, with no tensor in it: its settings (levels, coarsening factors,
relaxation, iterations, tolerance), the steps of each level, and how a stack's layers split into
one block per rank (whole coarsest-level intervals; `distributed layers`).

Binding, checking and the `layers` placer read it to judge and place a solve before anything
runs; the solver (solver.py) and the ranks' solves (ranks.py) run on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_GUESS", "GUESSES", "Blocks", "Settings", "adjoint_blocks", "coarsest_span", "layer_blocks"]

_RELAX = ("F", "FCF")


def _as_tuple(value: object) -> tuple:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence):
        return tuple(value)
    return (value,)


GUESSES = ("previous", "shifted", "coarse", "cache", "off")
"""The initial guesses of a solve, the values of `warm_start` (true: previous, false: off); what
each is: mrc/techniques/mgrit/guess.py."""
DEFAULT_GUESS = "shifted"
"""The guess without `warm_start`: across shuffled mini-batches the best of GUESSES on the level
sets, on every seed (bench/RESULTS.md, "MGRIT warm starts")."""


COARSEST = 16
"""The most points the coarsest level of an automatic hierarchy (`levels = 0`, the default) has:
the coarse solve is serial, so a deep stack gets as many levels as bring it down to this."""

MORE_CAP = 4
"""`on_divergence = more_iterations` doubles a stack's iterations at each diverging check up to
this many times the spec's (`forward_iters`, `backward_iters`); at the cap it warns and stays."""


def auto_levels(n_steps: int, coarsening: tuple[int, ...]) -> int:
    """The levels of an automatic hierarchy for N = `n_steps`: the fewest that leave the coarsest
    level at most COARSEST points (coarsening one factor for all levels, or one per transition),
    and at least two where N has a coarse point at all (one: serial propagation)."""
    levels, size = 1, n_steps
    while size > COARSEST or levels == 1:
        cf = coarsening[min(levels - 1, len(coarsening) - 1)]
        if size // cf < 1:
            break
        size //= cf
        levels += 1
    return levels


@dataclass(frozen=True)
class Settings:
    """The knobs of one MGRIT solve.

    levels: 1 = serial propagation (exactly). coarsening: the factor per level transition, one value for all or
    levels − 1 values. relax: "F" or "FCF" per level above the coarsest (one for all or levels − 1 entries); the
    coarsest level is always solved serially. iters: the most iterations (V-cycles) of a solve. tol: 0 runs exactly
    ``iters`` iterations; > 0 stops after the first iteration whose residual is < tol.
    """

    levels: int = 3
    coarsening: tuple[int, ...] = (4,)
    relax: tuple[str, ...] = ("FCF",)
    iters: int = 2
    tol: float = 0.0

    def __post_init__(self) -> None:
        # accept a bare int / str or a list, and store tuples so the settings stay hashable
        object.__setattr__(self, "coarsening", _as_tuple(self.coarsening))
        object.__setattr__(self, "relax", _as_tuple(self.relax))

    def factor(self, level: int) -> int:
        """The coarsening factor from ``level`` to ``level + 1``."""
        return int(self.coarsening[0] if len(self.coarsening) == 1 else self.coarsening[level])

    def relaxation(self, level: int) -> str:
        """The relaxation ("F" or "FCF") on ``level`` (not the coarsest)."""
        return self.relax[0] if len(self.relax) == 1 else self.relax[level]

    def sizes(self, n_steps: int) -> list[int]:
        """The number of steps N_l per level (assumes the settings are valid for ``n_steps``)."""
        out = [n_steps]
        for level in range(self.levels - 1):
            out.append(out[-1] // self.factor(level))
        return out

    def validate(self, n_steps: int) -> str | None:
        """A one-line reason when these settings cannot solve N = ``n_steps`` steps, else None.

        Checks the scalar knobs, the lengths and values of ``coarsening`` and ``relax``, and that every level
        has at least one coarse step (N_{l+1} = ⌊N_l / cf_l⌋ ≥ 1) — a level without one has no C-point to correct.
        """
        if not isinstance(n_steps, int) or n_steps < 1:
            return f"the problem needs at least one step, got N = {n_steps!r}"
        if not isinstance(self.levels, int) or self.levels < 1:
            return f"levels must be an integer ≥ 1, got {self.levels!r}"
        if not isinstance(self.iters, int) or self.iters < 1:
            return f"iters must be an integer ≥ 1, got {self.iters!r}"
        if not self.tol >= 0.0:
            return f"tol must be ≥ 0, got {self.tol!r}"
        if self.levels == 1:
            return None
        transitions = self.levels - 1
        if len(self.coarsening) not in (1, transitions):
            return (f"coarsening has {len(self.coarsening)} factors; {self.levels} levels need 1 or {transitions}")
        if len(self.relax) not in (1, transitions):
            return f"relax has {len(self.relax)} entries; {self.levels} levels need 1 or {transitions}"
        for level in range(transitions):
            cf = self.coarsening[0] if len(self.coarsening) == 1 else self.coarsening[level]
            if not isinstance(cf, int) or isinstance(cf, bool) or cf < 2:
                return f"coarsening factor of level {level} must be an integer ≥ 2, got {cf!r}"
            if self.relaxation(level) not in _RELAX:
                return f"relax of level {level} must be 'F' or 'FCF', got {self.relaxation(level)!r}"
        n = n_steps
        for level in range(transitions):
            cf = self.factor(level)
            if n // cf < 1:
                return (f"level {level} has {n} steps, fewer than its coarsening factor {cf}: "
                        f"level {level + 1} would have no coarse step")
            n //= cf
        return None


Blocks = tuple[tuple[int, int], ...]


def coarsest_span(settings: Settings) -> int:
    """C: the fine steps of one coarsest-level step (Π cf_l over the level transitions; 1 for one level)."""
    span = 1
    for level in range(settings.levels - 1):
        span *= settings.factor(level)
    return span


def layer_blocks(n_steps: int, settings: Settings, world: int) -> Blocks | str:
    """The forward solve's layer block [a, b) of each rank: whole coarsest intervals, as even as can be (the
    first blocks one interval longer), the uneven tail in the last block; or why `world` ranks cannot share
    N = `n_steps` steps (fewer coarsest intervals than ranks)."""
    span = coarsest_span(settings)
    intervals = -(-n_steps // span)
    if intervals < world:
        return (f"{intervals} coarsest-level intervals of {span} layers are too few for {world} ranks "
                "(each rank holds whole coarse intervals)")
    base, extra = divmod(intervals, world)
    out, a = [], 0
    for rank in range(world):
        b = a + base + (1 if rank < extra else 0)
        out.append((a * span, min(n_steps, b * span)))
        a = b
    return tuple(out)


def adjoint_blocks(n_steps: int, settings: Settings, forward: Blocks) -> Blocks:
    """The adjoint solve's layer blocks (in forward layer indices): its coarsest intervals are counted from N
    (reversed time), so each forward block boundary moves down by d = (−N) mod C; rank r keeps its count of
    intervals (rank 0 the shortened first one)."""
    d = -n_steps % coarsest_span(settings)
    last = len(forward) - 1
    return tuple((max(0, a - d), n_steps if r == last else b - d) for r, (a, b) in enumerate(forward))
