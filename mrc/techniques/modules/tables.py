"""Module-wise training's table on the schedule graph: each module, where it is cut, what it
holds and its transport weight."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mrc.ir.tables import TableKind


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """A module of module-wise training: where it starts on the traced graph (`start`, the fx
    node, and `path`, the module path it is cut at; "" for the first), its parameterised layers,
    its parameter count (its auxiliary head's included), its estimated activation bytes at the
    spec's batch size, its residual branches (the transport term's r_m), its classifier (`head`:
    the auxiliary head's module path and kind, or the model's own head) and its τ (0: none)."""

    start: str
    path: str
    layers: tuple[str, ...]
    params: int
    bytes: int
    residuals: int
    head: str
    aux: str = ""
    tau: float = 0.0

    def text(self) -> str:
        first, last = (self.layers[0], self.layers[-1]) if self.layers else ("-", "-")
        span = first if first == last else f"{first} … {last}"
        where = f"from {self.path} " if self.path else ""
        head = f"{self.head} {self.aux}" if self.aux else self.head
        tau = f" tau={self.tau:g}" if self.tau else ""
        return (f"{where}layers={len(self.layers)} ({span}) params={self.params:,} "
                f"activations={_bytes(self.bytes)} residuals={self.residuals} head={head}{tau}")


Modules = dict[str, ModuleInfo]
"""The modules of a schedule, by name, in order (empty: no module-wise training)."""


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _encode(table: Modules) -> dict[str, Any]:
    return {"modules": {n: {**asdict(i), "layers": list(i.layers)} for n, i in table.items()}} if table else {}


def _decode(data: dict[str, Any]) -> Modules | None:
    if "modules" not in data:
        return None
    return {n: ModuleInfo(**{**i, "layers": tuple(i["layers"])}) for n, i in data["modules"].items()}


def _header(table: Modules) -> list[str]:
    return [f"  module {name}: {info.text()}" for name, info in table.items()]


MODULES: TableKind[Modules] = TableKind("modules", dict, _encode, _decode, _header)
