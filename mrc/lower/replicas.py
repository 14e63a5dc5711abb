"""Where the model's parameters live while a Plan runs: the replicas, copies of the model.

By default there is one replica (named ""): the bound model itself, run through its traced graph
(or as it is, for a model torch.fx cannot trace). A technique that trains several copies side by
side registers a layout (`LAYOUTS`) that holds them its own way (a module per copy, or all of
them stacked into one batched module), says what a step's loss is over them, and registers its
hooks on the Plan (mrc.lower.plan.Hooks) in `prepare`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mrc.ir.graph import ScheduleGraph

LAYOUTS: list[Callable[[ScheduleGraph, Any, torch.device], Replicas | None]] = []
"""Replica layouts techniques register: each returns its Replicas for a graph it takes, or None."""


class Replicas:
    """The one replica of a spec: the model itself."""

    stacked = False

    def __init__(self, bound: Any, device: torch.device) -> None:
        self.bound = bound
        self.module: nn.Module = bound.runnable  # the model itself where it was not traced
        self.trained: nn.Module = self.module
        """What the training forwards run: the model, with stacked stacks run from their storage."""
        self._named = dict(bound.model.named_parameters())
        self.storage: dict[str, Any] = {}
        """The stacked parameters of each stack the graph stacks (mrc.lower.stacked.StackStorage)."""
        self._stacked: dict[str, tuple[nn.Parameter, int]] = {}
        self.plan: Any = None
        self.train_x = self.train_y = self.val_x = self.val_y = None

    @staticmethod
    def build(graph: ScheduleGraph, bound: Any, device: torch.device) -> Replicas:
        """The first registered layout that takes the graph, else the model itself."""
        for layout in LAYOUTS:
            replicas = layout(graph, bound, device)
            if replicas is not None:
                return replicas
        if any(op.scope.replica for op in graph.ops()):
            raise RuntimeError("the graph has several replicas, but no replica layout is registered "
                               "(mrc.techniques.load_all)")
        replicas = Replicas(bound, device)
        replicas.stack_params(graph)
        return replicas

    def stack_params(self, graph: ScheduleGraph) -> None:
        """Hold each stack the graph's `stacked` table stacks in its storage (mrc/lower/stacked.py):
        the layers' parameters become views of it, the partitions' tensors are its groups, and
        the training forwards run the stacks from it."""
        from mrc.lower.stacked import StackStorage, stacked_model
        from mrc.techniques.core.tables import STACKED

        layouts = [s for s in graph.table(STACKED).values() if s.stacked]
        if not layouts or self.bound.graph_module is None:
            return
        model = self.bound.model
        for layout in layouts:
            storage = self.storage[layout.path] = StackStorage(model.get_submodule(layout.path), layout)
            self._stacked.update(storage.names)
        self.trained = stacked_model(self.module, {s.path: (self.storage[s.path], s.first_node, s.last_node)
                                                   for s in layouts})

    def prepare(self, ctx: Any) -> None:
        """Called once the lowering context (mrc.lower.plan.Lowering) holds these replicas,
        before any op is lowered: a layout registers its hooks there (the models an evaluation
        scores, the files it writes, the sync that fetches a copy from the rank that trains it)."""

    def module_of(self, replica: str) -> nn.Module:
        return self.trained

    def params(self, graph: ScheduleGraph, replica: str, partition: str) -> list[torch.Tensor]:
        """The tensors of `partition` in `replica`: a stacked stack's layers as their groups (each
        once, where its first layer's tensor would be), every other parameter itself."""
        names = graph.partitions[partition].params
        if not self._stacked:
            return [self._named[n] for n in names]
        out = {id(p): p for p in (self._stacked[n][0] if n in self._stacked else self._named[n] for n in names)}
        return list(out.values())

    def gradients(self) -> dict[str, torch.Tensor | None]:
        """Each parameter's gradient by name, as the last backward left it: a stacked layer's is its
        row of its stacked tensor's (the layer's own `.grad` stays None), any other its `.grad`."""
        out: dict[str, torch.Tensor | None] = {}
        for name, p in self._named.items():
            held = self._stacked.get(name)
            if held is None:
                out[name] = p.grad
            else:
                group, row = held
                out[name] = None if group.grad is None else group.grad[row]
        return out

    def attach(self, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor) -> None:
        self.train_x, self.train_y, self.val_x, self.val_y = train_x, train_y, val_x, val_y

    def data(self) -> tuple[Any, Any, Any, Any]:
        return self.train_x, self.train_y, self.val_x, self.val_y

    def checkpointed(self) -> list[nn.Module]:
        """The models whose parameters the run's checkpoint holds."""
        return [self.module]

    def step_loss(self, env: Any) -> torch.Tensor | None:
        """A step's loss from the losses its ops reported (`Env.losses`): the first."""
        return env.losses[0][1] if env.losses else None

    def final_model(self) -> nn.Module:
        """The model the run produces."""
        return self.module

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
