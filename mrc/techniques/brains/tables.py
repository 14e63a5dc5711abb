"""The brains' table on the schedule graph: each brain's rate and batches, the rule the final
model is merged by, and why the brains cannot run stacked ("" when they can)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mrc.ir.ops import GraphError, decode
from mrc.ir.tables import TableKind
from mrc.techniques.brains.ops import MergeRule

if TYPE_CHECKING:
    from mrc.ir.graph import ScheduleGraph


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """A brain: its rate (one step per `every` global steps) and where its batches come from
    (its learning rates are on its update ops)."""

    every: int = 1
    data: str = "shared"

    def text(self) -> str:
        return f"every={self.every} data={self.data}"


@dataclass(frozen=True, slots=True)
class Brains:
    """The brains of a schedule (`replicas`, by name; empty: none), the rule the final model is
    merged by (None: no merge) and `stack_obstacle`: why they cannot run stacked over one batch
    ("" when they can; read by the batch-brains pass)."""

    replicas: dict[str, ReplicaInfo] = field(default_factory=dict)
    final_merge: MergeRule | None = None
    stack_obstacle: str = ""


def _encode(table: Brains) -> dict[str, Any]:
    return {"replicas": {n: asdict(i) for n, i in table.replicas.items()},
            "final_merge": None if table.final_merge is None else table.final_merge.to_json(),
            "stack_obstacle": table.stack_obstacle}


def _decode(data: dict[str, Any]) -> Brains | None:
    if "replicas" not in data:
        return None
    fm = data.get("final_merge")
    return Brains({n: ReplicaInfo(**i) for n, i in data["replicas"].items()},
                  None if fm is None else decode(fm), data.get("stack_obstacle", ""))


def _header(table: Brains) -> list[str]:
    return [f"  brain {name}: {info.text()}" for name, info in table.replicas.items()]


def _verify(graph: ScheduleGraph, table: Brains) -> None:
    """Every brain an op's scope names is one of the table's."""
    for op in graph.ops():
        bad = [r for r in op.scope.replica if r not in table.replicas]
        if bad:
            raise GraphError(f"{op.id}: unknown brain `{bad[0]}`")


BRAINS: TableKind[Brains] = TableKind("brains", Brains, _encode, _decode, _header, verify=_verify)
