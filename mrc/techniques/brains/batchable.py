"""Which traced models brains can run stacked over one batch (mrc/techniques/brains/stack.py).

The schedule builder asks `obstacle` when it builds a brains graph (the batch-brains pass reads
the answer from the graph), and `BrainStack` asks it again for the model it stacks; both sides
import it from here, so the compiler never imports the stacked runtime.

A model has a stacked form when every module with parameters or buffers of its own is exactly
one of the batched types (or an ODE-ResNet step: a Linear/Conv2d followed by its activation),
and no parameter is used directly as a tensor.
"""

from __future__ import annotations

import functools

from torch import fx, nn

BATCHED_TYPES = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)


@functools.cache
def activated() -> dict[type, str]:
    """Leaf layers that are a Linear/Conv2d followed by an activation (`.activation`): the
    ODE-ResNet's residual steps F_n(y) = σ(W_n y + b_n)."""
    from mrc.models.ode_resnet import ConvStep, DenseStep

    return {DenseStep: "activation", ConvStep: "activation"}


def batched_type(mod: nn.Module) -> bool:
    """Exactly one of the batched types, or a known activated layer (a subclass with its own
    forward is not the plain layer, and batching it as one would drop what it adds)."""
    return type(mod) in BATCHED_TYPES or type(mod) in activated()


def _owned(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(
        True for _ in module.buffers(recurse=False))


def obstacle(gm: fx.GraphModule) -> str:
    """Why the traced model has no stacked form ("" when it has one): a parameter used directly
    as a tensor, or a module with parameters of a type without a batched form."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            return f"`{node.target}` is used directly as a tensor"
        if node.op == "call_module":
            mod = modules[str(node.target)]
            if _owned(mod) and not batched_type(mod):
                return f"`{node.target}` ({type(mod).__name__}) has parameters and no batched form"
    return ""
