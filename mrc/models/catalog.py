"""The built-in models as the checker sees them: names, typed parameters, one line of doc.

Each entry's builder is named by reference (`mrc.lazy.Lazy`) and imported when a model is
built, so reading this table (as `mrc check` does) imports no torch. The builders are in the
model modules beside it; the naming conventions are in `mrc.models`.
"""

from __future__ import annotations

from mrc.lazy import Lazy
from mrc.registry import Entry, Param, Registry

MLP_ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid")
ODE_ACTIVATIONS = ("tanh", "relu")

MLP = Entry(
    "mlp",
    Lazy("mrc.models.mlp:build_mlp"),
    (
        Param("hidden", "ints", [128], doc="widths of the hidden layers", lo=1),
        Param("activation", "choice", "relu", doc="activation after each hidden layer",
              choices=MLP_ACTIVATIONS),
        Param("dropout", "float", 0.0, doc="dropout probability after each hidden layer",
              lo=0.0, hi=1.0, hi_open=True),
    ),
    "Multi-layer perceptron on the flattened input: hidden layers `layers.i`, output `head`.",
)

RESNET = Entry(
    "resnet",
    Lazy("mrc.models.resnet:build_resnet"),
    (
        Param("depth", "int", 8, doc="number of layers, 6n + 2 (n blocks per stage)", lo=8),
        Param("width", "int", 16, doc="channels of the first stage (then 2w, 4w)", lo=1),
        Param("dropout", "float", 0.0, doc="dropout probability before the head",
              lo=0.0, hi=1.0, hi_open=True),
    ),
    "CIFAR-style ResNet for (C, H, W) images: `stem`, `layer1..3` of ResidualBlocks, `head`.",
)

WIDE_RESNET = Entry(
    "wide_resnet",
    Lazy("mrc.models.wide_resnet:build_wide_resnet"),
    (
        Param("depth", "int", 16, doc="number of layers, 6n + 4 (n blocks per group)", lo=10),
        Param("widen", "int", 4, doc="widening factor k: groups of 16k, 32k, 64k channels", lo=1),
        Param("dropout", "float", 0.0, doc="dropout probability between a block's two convolutions",
              lo=0.0, hi=1.0, hi_open=True),
    ),
    "Wide ResNet (WRN-depth-widen) for (C, H, W) images: `stem`, `layer1..3` of pre-activation "
    "WideBlocks, `norm`, `head`.",
)

ODE_RESNET = Entry(
    "ode_resnet",
    Lazy("mrc.models.ode_resnet:build_ode_resnet"),
    (
        Param("width", "int", 8, doc="state width (features, or channels for conv)", lo=1),
        Param("depth", "int", 16, doc="number of residual layers (time steps) in the stack", lo=1),
        Param("h", "float", 0.1, doc="Euler step size of the residual stack", lo=0.0,
              lo_open=True),
        Param("activation", "choice", "tanh", doc="σ in F(y) = σ(W y + b)", choices=ODE_ACTIVATIONS),
        Param("variant", "choice", "dense", doc="dense layers or 3×3 convolutions",
              choices=("dense", "conv")),
        Param("dropout", "float", 0.0, doc="dropout probability before the head",
              lo=0.0, hi=1.0, hi_open=True),
    ),
    "ODE-style residual stack y ← y + h σ(W_n y + b_n): `stem`, `stack.layers.n`, `head`.",
)

TRANSFORMER = Entry(
    "transformer",
    Lazy("mrc.models.transformer:build_transformer"),
    (
        Param("dim", "int", 32, doc="embedding width", lo=1),
        Param("depth", "int", 2, doc="number of encoder blocks", lo=1),
        Param("heads", "int", 4, doc="attention heads (must divide dim)", lo=1),
        Param("mlp_ratio", "float", 2.0, doc="MLP hidden width as a multiple of dim", lo=0.0,
              lo_open=True),
        Param("tokens", "int", 0, doc="tokens per example (must divide the features); 0 = auto",
              lo=0),
        Param("dropout", "float", 0.0, doc="dropout probability in blocks and before the head",
              lo=0.0, hi=1.0, hi_open=True),
    ),
    "Small pre-norm transformer encoder over chunks of the flattened input: `embed`, `blocks.i`, "
    "`head`.",
)

MODELS = Registry("model")
"""Built-in models: `model NAME(...)` in a spec names one of these."""

for _entry in (MLP, RESNET, WIDE_RESNET, ODE_RESNET, TRANSFORMER):
    MODELS.add(_entry)
