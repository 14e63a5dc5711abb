"""Plain training: the model, the data, the base optimizer and its learning-rate schedule, the
train settings, initial weights and early stopping — what every spec has, whatever other
technique it uses — and how a residual stack's parameters are held (stacked, `stack-params`)."""

from __future__ import annotations

from mrc.techniques.base import PassAt, Technique

TECHNIQUE = Technique(
    "core",
    check="mrc.techniques.core.check",
    ops=("mrc.ir.ops", "mrc.techniques.core.lower"),
    tables=("mrc.techniques.core.tables:STACKED",),
    expand="mrc.techniques.core.expand:EXPANSION",
    passes=(PassAt("prune-gradients", "mrc.passes.prune_gradients:PruneGradients", after=""),
            PassAt("freeze-prefix", "mrc.passes.freeze_prefix:FreezePrefix", after="prune-gradients"),
            PassAt("group-updates", "mrc.passes.group_updates:GroupUpdates", after="freeze-prefix"),
            PassAt("select-kernels", "mrc.passes.select_kernels:SelectKernels", after="group-updates"),
            PassAt("precision", "mrc.passes.precision:Precision"),
            PassAt("stack-params", "mrc.passes.stack_params:StackParams", after="precision")),
)
