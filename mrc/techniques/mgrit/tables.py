"""MGRIT's table on the schedule graph: each residual stack it solves and the solve's settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mrc.ir.tables import TableKind


@dataclass(frozen=True, slots=True)
class StackInfo:
    """A residual stack solved by MGRIT: its parameterised layers are `layers[first:last + 1]`
    of the graph's layer list, N steps of size h with blocks of `kind` (dense | conv | generic),
    spanning the traced nodes `first_node` … `last_node`; the hierarchy (levels, coarsening
    and relaxation per level transition), each solve's iterations, tolerance and initial guess,
    its convergence control (what a diverging solve does, and how often it is measured), and
    the `buffer` layers at each end propagated serially around the solve of the middle."""

    first: int
    last: int
    steps: int
    h: float
    kind: str
    first_node: str
    last_node: str
    levels: int
    coarsening: tuple[int, ...]
    relax: tuple[str, ...]
    forward_iters: int
    backward_iters: int
    forward_tol: float = 0.0
    backward_tol: float = 0.0
    warm_start: str = "shifted"
    buffer: int = 0
    on_divergence: str = "warn"
    check_every: int = 0

    def text(self) -> str:
        tol = (f" forward_tol={self.forward_tol:g}" if self.forward_tol else "") + \
              (f" backward_tol={self.backward_tol:g}" if self.backward_tol else "")
        return (f"N={self.steps} h={self.h:g} {self.kind} levels={self.levels} "
                f"coarsening=[{', '.join(map(str, self.coarsening))}] relax=[{', '.join(self.relax)}] "
                f"forward_iters={self.forward_iters} backward_iters={self.backward_iters}{tol} "
                f"{_GUESS.get(self.warm_start, f'warm_start={self.warm_start}')}"
                f"{f' buffer={self.buffer}' if self.buffer else ''}{self.control()}")

    def control(self) -> str:
        """The convergence control, where there is one (none: the text reads as before it existed)."""
        if self.on_divergence == "warn" and not self.check_every:
            return ""
        return f" on_divergence={self.on_divergence} check_every={self.check_every}"


_GUESS = {"previous": "warm_start", "off": "fresh_start"}
"""How the header names the guesses it named before `warm_start` took more values."""


Stacks = dict[str, StackInfo]
"""The stacks solved by MGRIT, by module path (empty: none)."""


def _encode(table: Stacks) -> dict[str, Any]:
    if not table:
        return {}
    return {"stacks": {n: {**asdict(i), "coarsening": list(i.coarsening), "relax": list(i.relax)}
                       for n, i in table.items()}}


def _decode(data: dict[str, Any]) -> Stacks | None:
    if "stacks" not in data:
        return None
    return {n: StackInfo(**{**i, "coarsening": tuple(i["coarsening"]), "relax": tuple(i["relax"])})
            for n, i in data["stacks"].items()}


def _header(table: Stacks) -> list[str]:
    return [f"  mgrit {name}: {info.text()}" for name, info in table.items()]


STACKS: TableKind[Stacks] = TableKind("stacks", dict, _encode, _decode, _header)
