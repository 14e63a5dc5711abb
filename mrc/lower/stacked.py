"""Stacked parameters of a residual stack, as the graph's `stacked` table lays them out.

`StackStorage` moves a stack's N weights into one tensor [N, …] and its N biases into another
(mrc/techniques/core/tables.py; the `stack-params` pass decides). For each run of consecutive
layers in one partition the optimizer gets one leaf Parameter, a slice of that storage; each
layer's own Parameter is re-pointed at its row (`p.data = storage[n]`), so the model keeps its
Parameter objects, names and state_dict (checkpoints and `final.pt` load into the per-layer
model), and what the optimizer writes, every layer reads.

`StackedSteps` stands in for the stack's traced nodes in the training forward (`stacked_model`):
it runs y ← y + h·σ(F_n(y)) with the same ops as the per-layer blocks (so the same numbers). A
dense stack in training is one autograd node (`_DenseSteps`: autograd's per-layer formulas in its
backward, every weight gradient in one batched product); a conv stack unbinds each run once per
forward and autograd's backward writes one gradient per run (unbind's backward) instead of one
per layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F


class StackStorage:
    """One stack's stacked parameters: `weight` [N, …] and `bias` [N, …] (plain tensors that read
    the live values) and `groups`, the leaf Parameters the optimizer moves, each with its layers
    [first, stop): weights first, then biases, in layer order."""

    def __init__(self, stack: nn.Module, layout: Any) -> None:
        layers = list(stack.layers)
        self.path: str = layout.path
        self.kind: str = layout.kind
        self.h = float(stack.h)
        self.activation: str = layers[0].activation
        self.layers = layers
        with torch.no_grad():
            self.weight = torch.stack([layer.weight.detach() for layer in layers])
            self.bias = torch.stack([layer.bias.detach() for layer in layers])
        self.weights = [(nn.Parameter(self.weight[r.first:r.stop]), r.first, r.stop) for r in layout.weights]
        self.biases = [(nn.Parameter(self.bias[r.first:r.stop]), r.first, r.stop) for r in layout.biases]
        self.names: dict[str, tuple[nn.Parameter, int]] = {}
        """Each layer parameter's name (in the model) → the group Parameter that holds it, and its row."""
        for which, groups, base in (("weight", self.weights, self.weight), ("bias", self.biases, self.bias)):
            for group, a, b in groups:
                for n in range(a, b):
                    getattr(layers[n], which).data = base[n]
                    self.names[f"{self.path}.layers.{n}.{which}"] = (group, n - a)

    def rebind(self) -> None:
        """Take the stacks from the group Parameters again after something re-pointed their data (a
        fused kernel's flat buffer, mrc/runtime/fused.py), and the layers' rows from them. The
        `stack-params` pass gives such a stack one weight and one bias tensor."""
        if len(self.weights) == 1 and len(self.biases) == 1:
            self.weight, self.bias = self.weights[0][0].detach(), self.biases[0][0].detach()
            for n, layer in enumerate(self.layers):
                layer.weight.data, layer.bias.data = self.weight[n], self.bias[n]

    def groups(self) -> list[tuple[nn.Parameter, int, int]]:
        """Every group Parameter with its layers [first, stop): weights, then biases."""
        return [*self.weights, *self.biases]

    def params(self) -> list[nn.Parameter]:
        return [g for g, _, _ in self.groups()]


class StackedSteps(nn.Module):
    """The stack in the training forward, run from its stacked storage (module docstring). It
    keeps the stack's `layers` (the same modules, so names and `get_submodule` still find them)
    and `h`; the storage is not a submodule."""

    def __init__(self, storage: StackStorage) -> None:
        super().__init__()
        self.layers = nn.ModuleList(storage.layers)
        self.h = storage.h
        object.__setattr__(self, "storage", storage)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        s: StackStorage = self.storage  # type: ignore[assignment]
        if s.kind == "dense" and y.dim() == 2 and torch.is_grad_enabled():
            groups = s.params()
            if y.requires_grad or any(g.requires_grad for g in groups):
                return _DenseSteps.apply(y, s, *groups)
        biases = [b for g, _, _ in s.biases for b in g.unbind(0)]
        act = torch.tanh if s.activation == "tanh" else torch.relu
        h = self.h
        if s.kind == "dense" and y.dim() == 2:
            # F.linear(y, W, b) of a batch is addmm(b, y, Wᵀ): the transposes made once per run
            weights_t = [w for g, _, _ in s.weights for w in g.transpose(1, 2).unbind(0)]
            for w_t, b in zip(weights_t, biases, strict=True):
                y = y + h * act(torch.addmm(b, y, w_t))
            return y
        weights = [w for g, _, _ in s.weights for w in g.unbind(0)]
        if s.kind == "dense":
            for w, b in zip(weights, biases, strict=True):
                y = y + h * act(F.linear(y, w, b))
        else:
            for w, b in zip(weights, biases, strict=True):
                y = y + h * act(F.conv2d(y, w, b, 1, 1))
        return y


class _DenseSteps(torch.autograd.Function):
    """A dense stack's serial training forward and its backward in one autograd node.

    The forward runs each layer as the per-layer block does — z = addmm(b_n, y_n, W_nᵀ), t = σ(z),
    y_{n+1} = y_n + h·t: the same ops on fresh tensors (the CPU's BLAS rounds by the alignment of
    its operands, so the states are not packed into one), so the same numbers — without recording
    a graph, and keeps the states y_n and activations t_n (what autograd would keep). The backward
    runs autograd's own per-layer formulas (MulBackward, TanhBackward/ReluBackward, AddmmBackward,
    and the two gradients of y_n added) — gt = λ·h, gz = σ'(z) ⊙ gt from t, λ ← λ + gz W_n — and
    then the parameter gradients of all layers: dW_n = gz_nᵀ y_n, the product autograd makes for a
    transposed weight (`mm_mat2_backward`), as one batched product where each matrix of the packed
    operands starts 64-byte aligned and `bmm` calls the BLAS (else layer by layer), and db = Σ_batch
    gz. So the gradients equal the per-layer model's bit for bit (tests/unit/test_stacked_params.py)
    with half the ops and no per-layer autograd nodes.
    """

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, storage: StackStorage, *groups: torch.Tensor) -> torch.Tensor:
        h, tanh = storage.h, storage.activation == "tanh"
        weight, bias = storage.weight.detach(), storage.bias.detach()
        ys, ts = [y.detach()], []
        for w_t, b in zip(weight.transpose(1, 2).unbind(0), bias.unbind(0), strict=True):
            z = torch.addmm(b, ys[-1], w_t)
            t = torch.tanh(z) if tanh else torch.relu(z)
            ts.append(t)
            ys.append(torch.add(ys[-1], torch.mul(t, h)))
        ctx.save_for_backward(*ys[:-1], *ts)
        ctx.storage = storage
        return ys[-1]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        storage: StackStorage = ctx.storage
        h, tanh, n = storage.h, storage.activation == "tanh", len(storage.layers)
        saved = ctx.saved_tensors
        ys, ts = saved[:n], saved[n:]
        weights = storage.weight.detach().unbind(0)
        gzs: list[torch.Tensor] = [grad] * n
        lam = grad
        for k in range(n - 1, -1, -1):
            gt = torch.mul(lam, h)
            gz = (torch.ops.aten.tanh_backward(gt, ts[k]) if tanh
                  else torch.ops.aten.threshold_backward(gt, ts[k], 0))
            gzs[k] = gz
            lam = lam + torch.mm(gz, weights[k])
        batch, width = grad.shape
        packed = torch.stack(gzs)
        if batch * width % 16 == 0 and batch * width * width >= 400:
            # rows of a packed [N, batch, w] start 64-byte aligned, and bmm calls the BLAS per matrix
            # (below 400 multiply-adds it loops itself, rounding otherwise)
            d_weight = torch.bmm(packed.transpose(1, 2), torch.stack(ys))
        else:
            d_weight = torch.stack([torch.mm(g.t(), y) for g, y in zip(gzs, ys, strict=True)])
        d_bias = packed.sum(1)
        out: list[torch.Tensor | None] = [lam if ctx.needs_input_grad[0] else None, None]
        for i, (groups, d) in enumerate(((storage.weights, d_weight), (storage.biases, d_bias))):
            base = 2 + (len(storage.weights) if i else 0)
            out += [d[a:b] if ctx.needs_input_grad[base + j] else None for j, (_, a, b) in enumerate(groups)]
        return tuple(out)


def stacked_model(gm: fx.GraphModule, storages: dict[str, tuple[StackStorage, str, str]]) -> fx.GraphModule:
    """A copy of the traced model `gm` in which each stack's nodes (path → its storage and the
    names of its first and last node, as the graph's table lists them) are one call of its
    `StackedSteps` (a submodule at the stack's path, whose node keeps the stack's scope, so an
    MGRIT solve finds and replaces it in turn)."""
    for path, (storage, first, last) in storages.items():
        gm = _replaced(gm, path, StackedSteps(storage), first, last)
    return gm


def _replaced(gm: fx.GraphModule, path: str, module: nn.Module, first: str, last: str) -> fx.GraphModule:
    from mrc.models.trace import replace_stretch

    nodes = list(gm.graph.nodes)
    at = {n.name: i for i, n in enumerate(nodes)}
    lo, hi = at.get(first, -1), at.get(last, -1)
    inside = set(nodes[lo:hi + 1])
    entering = {a for n in nodes[lo:hi + 1] for a in n.all_input_nodes if a not in inside and a.op != "get_attr"}
    if lo < 0 or hi < lo or len(entering) != 1:
        raise RuntimeError(f"the stack `{path}` is not the one stretch of nodes {first} … {last} of the traced "
                           "model that the graph's `stacked` table names")
    return replace_stretch(gm, lo, hi, next(iter(entering)), path, module)
