"""The op kinds of layer-parallel training: the phases of an MGRIT solve, scoped by level and
iteration, for the forward solve and the adjoint solve of a residual stack.

One iteration (a V-cycle over L levels) is relax and restrict on each level above the coarsest,
the coarsest level's serial solve, then the correction of each level from the coarsest up:

    relax@L0 → restrict@L0 → relax@L1 → restrict@L1 → … → coarse_solve@L(L−1) → correct@L(L−2) → … → correct@L0

The forward solve's ops follow the forward op whose segment holds the stack (they run inside
it: the stack is one `torch.autograd.Function` in the traced model), and the adjoint solve's ops
follow the backward that differentiates through the stack (they run inside it). Order edges make
the listing the order in which they run; `mrc train --trace` shows them as they run.

Convergence control (`on_divergence`, `check_every`) adds alternative paths, each op marked with
the condition that selects it (`when`, printed `when=…`; WHEN lists them): the iterations beyond
the spec's, run on a check step (`check`) or once `more_iterations` has raised the count past
them (`more`), and the serial propagation the stack falls back to (`mgrit_serial`, `serial`),
whose alternative, the MGRIT iterations, are then marked `mgrit`. Lowering builds every path
from these ops and the run picks one per step (mrc/techniques/mgrit/lower.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mrc.ir.ops import GraphError, Op, names, op_kind, record

if TYPE_CHECKING:
    from mrc.ir.graph import Pattern


@record
@dataclass(frozen=True, slots=True)
class SolveSettings:
    """What a solve needs beyond the places of its phase ops: the stack's N steps of size h with
    blocks of `kind` (dense | conv | generic), the coarsening factor per level transition (one
    for all, or one each), the tolerance that stops it early (0: every iteration runs), its
    initial guess (`warm_start`: previous | shifted | coarse | cache | off, mrc/techniques/mgrit/guess.py),
    `buffer`: the layers at each end of the stack propagated serially, MGRIT solving the
    N − 2·buffer between them, and what it does when its convergence factor, measured every
    `check_every` steps (0: never), exceeds 1 (`on_divergence`: warn | more_iterations | serial).
    Its levels, relaxations and iterations are its ops (their scopes, and each relax op's
    `relax`); the paths convergence control may take are ops too (`when`)."""

    steps: int = 1
    h: float = 1.0
    kind: str = "generic"
    coarsening: tuple[int, ...] = field(default=(2,))
    tol: float = 0.0
    warm_start: str = "shifted"
    buffer: int = 0
    on_divergence: str = "warn"
    check_every: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"record": "SolveSettings", "steps": self.steps, "h": self.h, "kind": self.kind,
                "coarsening": list(self.coarsening), "tol": self.tol, "warm_start": self.warm_start,
                "buffer": self.buffer, "on_divergence": self.on_divergence, "check_every": self.check_every}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SolveSettings:
        return cls(data["steps"], data["h"], data["kind"], tuple(data["coarsening"]), data["tol"],
                   data["warm_start"], data["buffer"], data.get("on_divergence", "warn"), data.get("check_every", 0))


WHEN = {
    "": "always",
    "mgrit": "while the stack is solved by MGRIT (until it falls back to serial propagation)",
    "check": "on a check step (every `check_every` steps): the iterations that double the solve's",
    "more": "when this step's iterations reach it: on a check step, or once `more_iterations` raised the count",
    "serial": "once the stack has fallen back to serial propagation (`on_divergence = serial`)",
}
"""The conditions that select a solve's ops (`SolvePhase.when`)."""


@dataclass(frozen=True, slots=True)
class SolvePhase(Op):
    """A phase of the MGRIT solve of the stack at `stack` (`solve`: forward | adjoint); its
    level and iteration are its scope's, the solve's settings its `settings` (the same on
    every op of one solve)."""

    stack: str = ""
    solve: str = "forward"
    blocks: tuple[tuple[int, int], ...] = ()
    """Across ranks (`distributed layers`): rank r solves the layers [a, b) = blocks[r] of this
    solve (forward layer indices; the adjoint's are shifted, mrc/techniques/mgrit/ranks.py);
    empty: one process solves the whole stack."""
    kernel: str = "torch"
    """How the solve's steps and corrections run: `torch`, or `triton` (the fused kernels of
    kernels/mgrit.py, for a dense stack in float32 on CUDA); chosen by select-kernels."""
    settings: SolveSettings = SolveSettings()
    when: str = ""
    """The condition that selects this op (a key of WHEN; empty: it always runs)."""

    def kernel_for(self, triton: bool, setting: str) -> str:
        """The kernel select-kernels gives this solve: `triton` for a dense stack where Triton
        runs on a CUDA target (`triton`), unless `kernels` (`setting`) says torch; else `torch`."""
        return "triton" if triton and self.settings.kind == "dense" and setting in ("auto", "triton") else "torch"

    def key(self) -> str:
        return f".{self.stack}.{self.solve}"

    def text(self) -> str:
        return (f"{self.kind} {self.stack} ({self.solve}){self.placed()}{self.fused()}{self.buffered()}"
                f"{self.condition()}")

    def buffered(self) -> str:
        """The layers the solve spans when buffer layers at both ends are propagated serially."""
        b = self.settings.buffer
        return f" layers [{b}:{self.settings.steps - b}] buffer={b}" if b else ""

    def fused(self) -> str:
        return "" if self.kernel == "torch" else f" kernel={self.kernel}"

    def condition(self) -> str:
        return f" when={self.when}" if self.when else ""

    def placed(self) -> str:
        if not self.blocks:
            return ""
        return f" on ranks 0..{len(self.blocks) - 1} blocks " + " ".join(f"[{a}:{b}]" for a, b in self.blocks)

    def verify(self, pattern: Pattern) -> None:
        if self.when not in WHEN:
            raise GraphError(f"{self.id}: `when={self.when}` is none of {', '.join(w for w in WHEN if w)}")
        if self.blocks and (self.blocks[0][0] != 0 or any(
                b <= a or b != c for (a, b), (c, _) in zip(self.blocks, self.blocks[1:], strict=False))
                or self.blocks[-1][1] <= self.blocks[-1][0]):
            raise GraphError(f"{self.id}: its rank blocks {list(self.blocks)} do not tile the stack's layers")


@op_kind
@dataclass(frozen=True, slots=True)
class Relax(SolvePhase):
    """F- or FCF-relaxation on one level, over all its coarse intervals at once."""

    kind: ClassVar[str] = "mgrit_relax"
    rank: ClassVar[int] = 6
    relax: str = "FCF"

    def text(self) -> str:
        return (f"mgrit_relax {self.relax} {self.stack} ({self.solve}){self.placed()}{self.fused()}"
                f"{self.buffered()}{self.condition()}")


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


@op_kind
@dataclass(frozen=True, slots=True)
class SerialStack(SolvePhase):
    """The serial propagation a stack falls back to (`on_divergence = serial`, `when=serial`): the
    forward runs its layers one after another with autograd (`forward`), and the backward
    differentiates through them (`adjoint`) — serial training of the stack, exactly. It runs no
    MGRIT kernel, and has no level or iteration."""

    kind: ClassVar[str] = "mgrit_serial"
    rank: ClassVar[int] = 6

    def kernel_for(self, triton: bool, setting: str) -> str:
        return "torch"

    def verify(self, pattern: Pattern) -> None:
        SolvePhase.verify(self, pattern)
        if self.when != "serial":
            raise GraphError(f"{self.id}: a serial fallback runs `when=serial`, not `when={self.when}`")


@op_kind
@dataclass(frozen=True, slots=True)
class SumStackGrads(Op):
    """Across ranks: sum the gradients of the stack's layers (their tensors in the partitions
    `grads`) over the `world` ranks, after the backward whose adjoint solve gave each rank those
    of its own block (zero elsewhere); every rank then holds the whole stack's gradient. The
    other tensors of `grads` are left alone (every rank computed them whole). `clip`: the
    backward's clipping of all of `grads`, moved after the sum."""

    kind: ClassVar[str] = "mgrit_sum_grads"
    rank: ClassVar[int] = 4
    stack: str = ""
    grads: tuple[str, ...] = ()
    world: int = 1
    phase: int = 0
    clip: float = 0.0

    def key(self) -> str:
        return f".{self.stack}." + "+".join(self.grads)

    def text(self) -> str:
        clip = f" clip={self.clip:g}" if self.clip else ""
        return f"mgrit_sum_grads {self.stack} layers of {names(self.grads)} over {self.world} ranks{clip}"

    def partitions_used(self) -> tuple[str, ...]:
        return self.grads

    def verify(self, pattern: Pattern) -> None:
        got = set().union(*(v.partitions for _, v in pattern.inputs(self) if v.kind == "grads"))
        missing = [p for p in self.grads if p not in got]
        if missing:
            raise GraphError(f"{self.id}: sums {missing} but no backward hands it their gradients")


PHASES: dict[str, type[SolvePhase]] = {"relax": Relax, "restrict": Restrict, "coarse_solve": CoarseSolve,
                                       "correct": Correct}


def iteration_phases(levels: int) -> list[tuple[str, int]]:
    """The phases of one iteration over `levels` levels, in order (mrc.techniques.mgrit.solver
    runs them in this order too)."""
    if levels == 1:
        return [("coarse_solve", 0)]
    down = [(p, lvl) for lvl in range(levels - 1) for p in ("relax", "restrict")]
    return [*down, ("coarse_solve", levels - 1), *(("correct", lvl) for lvl in range(levels - 2, -1, -1))]


__all__ = ["PHASES", "WHEN", "CoarseSolve", "Correct", "Relax", "Restrict", "SerialStack", "SolvePhase",
           "SolveSettings", "SumStackGrads", "iteration_phases"]
