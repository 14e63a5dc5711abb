"""The core's part of the graph builder: the residual stacks whose parameters could be stacked.

Every `ResidualStack` of the model made of the built-in blocks (all `DenseStep`, or all 3×3
same-padded `ConvStep`s with bias, one activation) whose traced nodes form one contiguous stretch
with one input and one output is listed in the `stacked` table as a candidate; the
`stack-params` pass (passes/stack_params.py) decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from mrc.ir.tables import TableKind
from mrc.techniques.base import Expansion
from mrc.techniques.core.tables import STACKED, Layouts, StackLayout


def block_of(stack: nn.Module) -> str:
    """`dense` or `conv` for a `ResidualStack` of built-in blocks that a stacked tensor can hold
    (every layer the same block with the same activation); "" otherwise."""
    from mrc.models.ode_resnet import ConvStep, DenseStep, ResidualStack

    if type(stack) is not ResidualStack or not len(stack.layers):
        return ""
    layers = list(stack.layers)
    if {layer.activation for layer in layers} - {"tanh", "relu"} or len({layer.activation for layer in layers}) != 1:
        return ""
    if all(type(layer) is DenseStep for layer in layers):
        return "dense" if all(layer.bias is not None for layer in layers) else ""
    if all(type(layer) is ConvStep for layer in layers) and all(
            tuple(layer.stride) == (1, 1) and tuple(layer.dilation) == (1, 1) and layer.groups == 1
            and layer.padding_mode == "zeros" and tuple(layer.kernel_size) == (3, 3)
            and tuple(layer.padding) == (1, 1) and layer.bias is not None for layer in layers):
        return "conv"
    return ""


def candidates(bound: Any) -> Layouts:
    """The stacks of the bound model that could hold their parameters stacked (see the module
    docstring), by path."""
    gm = bound.graph_module
    if gm is None:
        return {}
    from mrc.models.trace import stack_stretch

    out: Layouts = {}
    for path, module in bound.model.named_modules():
        kind = block_of(module) if path else ""
        if not kind:
            continue
        params = [p for layer in module.layers for p in (layer.weight, layer.bias)]
        stretch = stack_stretch(gm, path)
        if len({(p.dtype, p.device) for p in params}) != 1 or isinstance(stretch, str):
            continue
        nodes = list(gm.graph.nodes)
        out[path] = StackLayout(path, len(module.layers), kind, nodes[stretch[0]].name, nodes[stretch[1]].name)
    return out


def tables(bound: Any) -> Mapping[TableKind[Any], Any]:
    return {STACKED: candidates(bound)}


EXPANSION = Expansion(tables=tables)
