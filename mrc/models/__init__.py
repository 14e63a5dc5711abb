"""Built-in models, their registry, and torch.fx tracing.

Every builder has the signature `build(in_shape, classes, **kwargs) -> nn.Module`, where
`in_shape` is one example's shape without the batch dimension and `classes` the number of
classes; the model maps a batch (B, *in_shape) to logits (B, classes). Naming conventions that
selectors rely on: the output layer is always `head`; `mlp` has hidden layers `layers.i`;
`resnet` has `stem`, `layer1..3` of `ResidualBlock`s with residual branch `branch`;
`wide_resnet` has `stem`, `layer1..3` of `WideBlock`s with residual branch `branch`, `norm`;
`ode_resnet` has `stem`, `stack` (a `ResidualStack`, layers `stack.layers.n`); `transformer` has
`embed`, `pos`, `blocks.i`, `norm`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mrc.models.catalog import MODELS
from mrc.registry import did_you_mean

if TYPE_CHECKING:
    from torch import nn

    from mrc.models.ode_resnet import ResidualStack
    from mrc.models.resnet import ResidualBlock
    from mrc.models.trace import ForwardError, MrcTracer, TraceFailure, check_forward, trace_model

_LAZY = {"ResidualStack": "mrc.models.ode_resnet", "ResidualBlock": "mrc.models.resnet",
         **dict.fromkeys(("ForwardError", "MrcTracer", "TraceFailure", "check_forward", "trace_model"),
                         "mrc.models.trace")}


def __getattr__(name: str) -> Any:
    """The torch-side names, imported on first use (PEP 562): `MODELS` is read by the checker,
    which must not import torch."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "MODELS",
    "ForwardError",
    "MrcTracer",
    "ResidualBlock",
    "ResidualStack",
    "TraceFailure",
    "build_model",
    "check_forward",
    "trace_model",
]


def build_model(name: str, in_shape: tuple[int, ...], classes: int,
                kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build built-in model `name`, filling unspecified keywords from its Param defaults.

    Keywords are validated (and coerced, e.g. 3 → 3.0) by their Param records; the checker has
    normally reported bad values already, so a ValueError here means an unchecked caller.
    """
    entry = MODELS.get(name)
    if entry is None:
        close = MODELS.suggest(name)
        tip = f"; did you mean `{close}`?" if close else ""
        raise ValueError(f"unknown model `{name}`{tip} (built-ins: {', '.join(MODELS.names())})")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"model `{name}` needs a positive number of classes, not {classes!r}")
    given = dict(kwargs or {})
    args: dict[str, Any] = {}
    for key, value in given.items():
        param = entry.param(key)
        if param is None:
            close = did_you_mean(key, [p.name for p in entry.params])
            tip = f"; did you mean `{close}`?" if close else ""
            raise ValueError(f"model `{name}` has no parameter `{key}`{tip}")
        value, err = param.validate(value)
        if err:
            raise ValueError(f"model `{name}`: {err}")
        args[key] = value
    for param in entry.params:
        if param.name not in args:
            if param.required:
                raise ValueError(f"model `{name}` needs parameter `{param.name}`")
            default = param.default
            args[param.name] = list(default) if isinstance(default, list) else default
    return entry.build(tuple(int(d) for d in in_shape), classes, **args)
