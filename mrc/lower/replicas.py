"""Where the model's parameters live while a Plan runs: the replicas.

Without brains there is one replica (named ""): the bound model itself, run through its traced
graph (or as it is, for a model torch.fx cannot trace). With brains
(mrc/techniques/brains/lower.py) each brain is a copy, or the brains are stacked into one batched
module when the graph's update groups say `kernel=stacked`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mrc.ir.graph import ScheduleGraph
from mrc.techniques.brains.tables import BRAINS

LAYOUTS: list[Callable[[ScheduleGraph, Any, torch.device], Replicas | None]] = []
"""Replica layouts techniques register (brains): each returns its Replicas for a graph it
takes, or None."""


class Replicas:
    """The one replica of a spec without brains."""

    stacked = False

    def __init__(self, bound: Any, device: torch.device) -> None:
        self.bound = bound
        self.module: nn.Module = bound.runnable  # the model itself where it was not traced
        self._named = dict(bound.model.named_parameters())
        self.plan: Any = None
        self.train_x = self.train_y = self.val_x = self.val_y = None

    @staticmethod
    def build(graph: ScheduleGraph, bound: Any, device: torch.device) -> Replicas:
        """The first registered layout that takes the graph (brains), else the model itself."""
        for layout in LAYOUTS:
            replicas = layout(graph, bound, device)
            if replicas is not None:
                return replicas
        if graph.table(BRAINS).replicas:
            raise RuntimeError("the graph has brains, but no replica layout is registered (mrc.techniques.load_all)")
        return Replicas(bound, device)

    def prepare(self, ctx: Any) -> None:
        """Called once the lowering context (mrc.lower.plan.Lowering) holds these replicas,
        before any op is lowered: a layout registers what it needs there (brains on ranks add
        the sync that fetches each brain from its rank)."""

    def module_of(self, replica: str) -> nn.Module:
        return self.module

    def params(self, graph: ScheduleGraph, replica: str, partition: str) -> list[torch.Tensor]:
        """The tensors of `partition` in `replica`."""
        return [self._named[n] for n in graph.partitions[partition].params]

    def attach(self, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor) -> None:
        self.train_x, self.train_y, self.val_x, self.val_y = train_x, train_y, val_x, val_y

    def data(self) -> tuple[Any, Any, Any, Any]:
        return self.train_x, self.train_y, self.val_x, self.val_y

    def checkpointed(self) -> list[nn.Module]:
        """The modules whose parameters the run's checkpoint holds."""
        return [self.module]

    def eval_models(self) -> dict[str, nn.Module]:
        return {"": self.module}

    def final_model(self) -> nn.Module:
        return self.module

    def brain_states(self) -> dict[str, dict[str, torch.Tensor]]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
