"""The op kinds of layer-parallel training: the phases of an MGRIT solve, scoped by level and
iteration, for the forward solve and the adjoint solve of a residual stack.

One iteration (a V-cycle over L levels) is relax and restrict on each level above the coarsest,
the coarsest level's serial solve, then the correction of each level from the coarsest up:

    relax@L0 → restrict@L0 → relax@L1 → restrict@L1 → … → coarse_solve@L(L−1) → correct@L(L−2) → … → correct@L0

The forward solve's ops follow the forward op whose segment holds the stack (they run inside
it: the stack is one `torch.autograd.Function` in the traced model), and the adjoint solve's ops
follow the backward that differentiates through the stack (they run inside it). Order edges make
the listing the order in which they run; `mrc train --trace` shows them as they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mrc.ir.ops import Op, op_kind


@dataclass(frozen=True, slots=True)
class SolvePhase(Op):
    """A phase of the MGRIT solve of the stack at `stack` (`solve`: forward | adjoint); its
    level and iteration are its scope's."""

    stack: str = ""
    solve: str = "forward"

    def key(self) -> str:
        return f".{self.stack}.{self.solve}"

    def text(self) -> str:
        return f"{self.kind} {self.stack} ({self.solve})"


@op_kind
@dataclass(frozen=True, slots=True)
class Relax(SolvePhase):
    """F- or FCF-relaxation on one level, over all its coarse intervals at once."""

    kind: ClassVar[str] = "mgrit_relax"
    rank: ClassVar[int] = 6
    relax: str = "FCF"

    def text(self) -> str:
        return f"mgrit_relax {self.relax} {self.stack} ({self.solve})"


@op_kind
@dataclass(frozen=True, slots=True)
class Restrict(SolvePhase):
    """The residual at the level's C-points, injected with the states to the next level (FAS);
    on level 0 it measures the iteration's residual norm."""

    kind: ClassVar[str] = "mgrit_restrict"
    rank: ClassVar[int] = 6


@op_kind
@dataclass(frozen=True, slots=True)
class CoarseSolve(SolvePhase):
    """The coarsest level solved serially."""

    kind: ClassVar[str] = "mgrit_coarse_solve"
    rank: ClassVar[int] = 6


@op_kind
@dataclass(frozen=True, slots=True)
class Correct(SolvePhase):
    """The coarse correction of the level's C-points, then F-relaxation."""

    kind: ClassVar[str] = "mgrit_correct"
    rank: ClassVar[int] = 6


PHASES: dict[str, type[SolvePhase]] = {"relax": Relax, "restrict": Restrict, "coarse_solve": CoarseSolve,
                                       "correct": Correct}


def iteration_phases(levels: int) -> list[tuple[str, int]]:
    """The phases of one iteration over `levels` levels, in order (mrc.techniques.mgrit.solver
    runs them in this order too)."""
    if levels == 1:
        return [("coarse_solve", 0)]
    down = [(p, lvl) for lvl in range(levels - 1) for p in ("relax", "restrict")]
    return [*down, ("coarse_solve", levels - 1), *(("correct", lvl) for lvl in range(levels - 2, -1, -1))]


__all__ = ["PHASES", "CoarseSolve", "Correct", "Relax", "Restrict", "SolvePhase", "iteration_phases"]
