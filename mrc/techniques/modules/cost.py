"""What a module costs in activation memory: the bytes autograd saves for its backward.

The balanced split and `mrc graph`'s estimate both need each module's activation memory at the
spec's batch size. A node's output size (ShapeProp) is a poor proxy — a convolution saves its
input, a batch norm its input, an add nothing — so this module measures it: one forward of the
traced example batch in training mode under `torch.autograd.graph.saved_tensors_hooks`, each
saved tensor charged once per storage to the node that saved it (parameters and the input batch
left out, as the trainer's meter does), scaled from the example's batch to the spec's. The
model's state is untouched: batch-norm statistics are put back and the random generator forked.
The transport term saves each residual branch r_m once more (for mean(r_m²)'s gradient), and a
module's auxiliary head saves its own activations; `head_bytes` measures a head the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn


def _count(run: Callable[[], Any], charge: Callable[[int], None], exclude: list[torch.Tensor]) -> None:
    """Run `run` with grad under saved-tensor hooks, charging each new saved storage's bytes."""
    seen = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if isinstance(base, nn.Parameter) or (base.is_leaf and base.requires_grad):
            return t
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            charge(storage.nbytes())
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()


class _Untouched:
    """Training mode for a measurement, with buffers and the random generator put back after."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.buffers = [(b, b.detach().clone()) for b in self.module.buffers()]
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.rng = torch.random.fork_rng()
        self.rng.__enter__()
        self.module.train()

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for b, saved in self.buffers:
                b.copy_(saved)
        for m, training in self.modes:
            m.train(training)
        self.rng.__exit__(None, None, None)


def saved_bytes(gm: fx.GraphModule, example: torch.Tensor, batch: int) -> list[int]:
    """Per node of `gm` (in graph order), the bytes autograd saves while it runs, at `batch`."""
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    costs = [0] * len(nodes)
    current = [0]

    def charge(n: int) -> None:
        costs[current[0]] += n

    class Counting(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            current[0] = index[n]
            return super().run_node(n)

    with _Untouched(gm):
        _count(lambda: Counting(gm).run(example), charge, [example])
    scale = batch / max(1, example.shape[0])
    return [int(c * scale) for c in costs]


def head_bytes(head: nn.Module, shape: tuple[int, ...], batch: int, dtype: torch.dtype) -> int:
    """The bytes an auxiliary head saves for features of `shape`, at `batch` (its input left out:
    the module that feeds it saves that already)."""
    x = torch.zeros((2, *shape), dtype=dtype)
    total = [0]
    head = head.to(dtype)
    with _Untouched(head):
        _count(lambda: head(x), lambda n: total.__setitem__(0, total[0] + n), [x])
    return int(total[0] * batch / 2)
