"""Binding of `mgrit "STACK"`: the residual stack the solve stands in for, found on the model.

A stack qualifies through a small protocol, which the built-in `ode_resnet`'s `stack` follows:
the module at `STACK` has `layers` (an nn.ModuleList or nn.Sequential of the branches F_n) and a
float `h`, and its forward is y ← y + h·F_n(y) for n = 0 … N−1 in order. Binding checks the
protocol (the attributes, and the forward against the serial formula on the input the traced
example gives the stack), that the stack's nodes form one contiguous stretch of the traced graph
with one input and one output (so lowering can replace them by the solve), and that the
hierarchy fits the N − 2·buffer layers MGRIT solves (`Settings.validate`). Each problem is a
diagnostic at the statement's target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from mrc.diagnostics import Reporter
from mrc.models.trace import stack_stretch
from mrc.program import Mgrit, Program
from mrc.registry import did_you_mean


@dataclass(frozen=True)
class BoundStack:
    """A stack and its solve: the spec, the stack's path, its N layers' paths (in order), its
    step h, the kind of its blocks (dense | conv | generic) and the traced graph's stretch of
    nodes it spans (first and last node names)."""

    spec: Mgrit
    path: str
    layers: tuple[str, ...]
    h: float
    kind: str
    first_node: str
    last_node: str

    @property
    def steps(self) -> int:
        return len(self.layers)


def block_kind(layers: nn.Module) -> str:
    from mrc.models.ode_resnet import ConvStep, DenseStep

    if all(isinstance(m, DenseStep) for m in layers):
        return "dense"
    if all(isinstance(m, ConvStep) for m in layers):
        return "conv"
    return "generic"


def bind(bound: Any, r: Reporter) -> tuple[BoundStack, ...] | None:
    """The technique's binding (`Bound.parts["mgrit"]`): the stack of each `mgrit` statement
    (None: no statement, or reported)."""
    program = bound.program
    if not program.mgrit:
        return None
    if bound.graph_module is None:
        for stack in program.mgrit:
            bound.report_untraced(f"`mgrit \"{stack.stack}\"` finds its stack's layers in the traced graph",
                                  stack.span, r)
        return None
    return bind_stacks(program, bound.model, bound.graph_module, bound.example, r)


def bind_stacks(program: Program, model: nn.Module, gm: fx.GraphModule, example: torch.Tensor,
                r: Reporter) -> tuple[BoundStack, ...] | None:
    """Every `mgrit` statement's stack, or None when one does not qualify (reported)."""
    out = []
    modules = dict(model.named_modules())
    for spec in program.mgrit:
        at = spec.stack_span
        stack = modules.get(spec.stack)
        if stack is None or spec.stack == "":
            guess = did_you_mean(spec.stack, [n for n in modules if n])
            r.error(f"the model has no module `{spec.stack}`", at,
                    hint=f"did you mean `{guess}`?" if guess else "name the residual stack by its module path")
            return None
        layers = getattr(stack, "layers", None)
        h = getattr(stack, "h", None)
        if not isinstance(layers, nn.ModuleList | nn.Sequential) or not isinstance(h, float | int) or not len(layers):
            found = type(stack).__name__
            r.error(f"`{spec.stack}` ({found}) is not a residual stack: MGRIT needs a module with `layers` "
                    "(an nn.ModuleList of the branches F_n) and a float step `h`, whose forward is "
                    "y ← y + h·F_n(y) in order", at,
                    hint="the built-in ode_resnet's `stack` is one; see docs/language.md (mgrit)")
            return None
        stretch = stack_stretch(gm, spec.stack)
        if isinstance(stretch, str):
            r.error(f"`{spec.stack}`: {stretch}", at)
            return None
        nodes = list(gm.graph.nodes)
        why = _serial_check(model, stack, example)
        if why:
            r.error(f"`{spec.stack}` does not compute y ← y + h·F_n(y) layer after layer: {why}", at)
            return None
        import dataclasses

        from mrc.techniques.mgrit.grid import Settings, auto_levels

        middle = len(layers) - 2 * spec.buffer  # the layers MGRIT solves, between the serial buffers
        if middle < 1:
            r.error(f"`{spec.stack}` has {len(layers)} layers: `buffer = {spec.buffer}` at each end leaves "
                    f"{max(middle, 0)} for the MGRIT solve between them", spec.spans.get("buffer", at))
            return None
        if not spec.levels:  # the default: as many levels as leave the coarsest one small
            spec = dataclasses.replace(spec, levels=auto_levels(middle, tuple(spec.coarsening)))
        settings = Settings(spec.levels, tuple(spec.coarsening), tuple(spec.relax), spec.forward_iters,
                            spec.forward_tol)
        why = settings.validate(middle)
        if why:
            between = f" ({middle} between the buffers)" if spec.buffer else ""
            r.error(f"`{spec.stack}` has {len(layers)} layers{between}: {why}",
                    spec.spans.get("buffer" if spec.buffer else "levels", at))
            return None
        names = tuple(f"{spec.stack}.layers.{i}" for i in range(len(layers)))
        out.append(BoundStack(spec, spec.stack, names, float(h), block_kind(layers), nodes[stretch[0]].name,
                              nodes[stretch[1]].name))
    return tuple(out)


def _serial_check(model: nn.Module, stack: nn.Module, example: torch.Tensor) -> str:
    """Run the model on the example with the stack's input captured; compare the stack's output
    with the serial formula (eval mode, no autograd, the random generator forked)."""
    captured: list[torch.Tensor] = []
    hook = stack.register_forward_pre_hook(lambda mod, args: captured.append(args[0]))
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng():
            model(example)
            if not captured:
                return "its forward did not run"
            y = captured[0]
            want = stack(y)
            for layer in stack.layers:
                y = y + stack.h * layer(y)
    except Exception as err:  # user code: any failure is the user's to see, in one line
        return f"{type(err).__name__}: {err}"
    finally:
        hook.remove()
        for m, training in modes:
            m.train(training)
    if want.shape != y.shape or not torch.allclose(want, y, rtol=1e-5, atol=1e-6):
        return "its output differs from the serial formula on the traced example"
    return ""
