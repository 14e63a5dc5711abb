"""Trace a model with torch.fx and annotate the graph for binding.

`trace_model` symbolic-traces the model, runs ShapeProp on an example batch (so every node has
`node.meta["tensor_meta"]`) and stores mrc's own annotations under `node.meta["mrc"]`:

- `scope`: the path of the innermost module whose forward created the node ("" for the root),
- `residual_block`: the path of the enclosing module marked `is_residual_block`, or None,
- `residual_stack`: the path of the enclosing module marked `is_residual_stack`, or None,
- `layer`: the index n of the stack layer `…layers.n` the node belongs to (the update
  y + h·F_n(y) counts as part of layer n), or None,
- `module_type`: for `call_module` nodes, the class name of the (leaf) module called.

A model that cannot be traced (data-dependent control flow, unsupported Python) raises
`TraceFailure` naming the module whose forward failed and how to make it a leaf.

Tracing is linear in the size of the model: torch.fx's own `Tracer.getattr` finds a parameter's
qualified name by scanning `root.named_parameters()` on every access, which makes a model whose
non-leaf modules read their own weights (the ODE-ResNet's steps) quadratic in depth; `MrcTracer`
looks the name up in a map built once per trace instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.fx.proxy import ParameterProxy


class TraceFailure(Exception):
    """The model could not be traced: `message` says where and why, `hint` how to fix it."""

    def __init__(self, message: str, hint: str = "", module: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.module = module

    def __str__(self) -> str:
        return f"{self.message}\nhint: {self.hint}" if self.hint else self.message


class MrcTracer(fx.Tracer):
    """An fx Tracer that honours mrc leaves and records which module created each node.

    A module is a leaf (kept as one opaque `call_module` node) when torch.fx says so, when its
    class sets `mrc_leaf = True`, or when its path or class name is in `leaf_modules`.
    """

    def __init__(self, leaf_modules: Iterable[str] = ()) -> None:
        super().__init__()
        self.leaf_modules = set(leaf_modules)
        self._stack: list[tuple[str, nn.Module]] = []
        self.failed_module: tuple[str, nn.Module] | None = None
        self._last_layer: dict[str, int] = {}
        self._parameter_names: dict[int, str] | None = None

    def trace(self, root: nn.Module | Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        self._parameter_names = None  # built from this root on its first parameter access
        try:
            return super().trace(root, concrete_args)
        finally:
            self._parameter_names = None

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        """A parameter read inside a traced forward becomes one `get_attr` node per parameter,
        named as `root.named_parameters()` names it (the first name of a shared one), exactly as
        in torch.fx, but found in O(1). Anything else goes to torch.fx unchanged."""
        if isinstance(attr_val, nn.Parameter):
            name = self._parameter_name(attr_val)
            if name is not None:
                if name not in parameter_proxy_cache:
                    factory = (None if not self.param_shapes_constant else
                               lambda node: ParameterProxy(self, node, name, attr_val))
                    parameter_proxy_cache[name] = self.create_proxy(
                        "get_attr", name, (), {}, proxy_factory_fn=factory)
                return parameter_proxy_cache[name]
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def _parameter_name(self, param: nn.Parameter) -> str | None:
        """The qualified name of `param` in the root, or None (then torch.fx's scan decides)."""
        if self._parameter_names is None:
            # named_parameters() yields a shared parameter once, under its first name
            self._parameter_names = {id(p): name for name, p in self.root.named_parameters()}
        name = self._parameter_names.get(id(param))
        if name is None:
            return None
        # the name must still hold this very tensor (a forward may reassign parameters); read the
        # modules' own tables, as `getattr` on a module is patched to come back here while tracing
        *path, leaf = name.split(".")
        module: nn.Module | None = self.root
        for part in path:
            module = module._modules.get(part) if module is not None else None
        held = module._parameters.get(leaf) if module is not None else None
        return name if held is param else None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if getattr(m, "mrc_leaf", False):
            return True
        if module_qualified_name in self.leaf_modules or type(m).__name__ in self.leaf_modules:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        path = self.path_of_module(m)
        self._stack.append((path, m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:  # the innermost module sees the error first
                self.failed_module = (path, m)
            raise
        finally:
            self._stack.pop()

    def create_node(self, kind: str, target: Any, args: Any, kwargs: Any,
                    name: str | None = None, type_expr: Any | None = None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["mrc"] = self._annotation(kind, target)
        return node

    def _annotation(self, kind: str, target: Any) -> dict[str, Any]:
        block = stack = None
        layer = None
        for i, (path, m) in enumerate(self._stack):
            if getattr(m, "is_residual_block", False):
                block = path
            if getattr(m, "is_residual_stack", False):
                stack, layer = path, None
                prefix = f"{path}.layers." if path else "layers."
                for inner, _ in self._stack[i + 1:]:
                    if inner.startswith(prefix):
                        head = inner[len(prefix):].split(".", 1)[0]
                        layer = int(head) if head.isdigit() else None
                        break
                if layer is None:  # the Euler update y + h·F_n(y) belongs to the last F_n
                    layer = self._last_layer.get(path)
                else:
                    self._last_layer[path] = layer
        ann: dict[str, Any] = {
            "scope": self._stack[-1][0] if self._stack else "",
            "residual_block": block,
            "residual_stack": stack,
            "layer": layer,
        }
        if kind == "call_module" and self._stack:
            ann["module_type"] = type(self._stack[-1][1]).__name__
        return ann


def trace_model(model: nn.Module, example: torch.Tensor,
                leaf_modules: Iterable[str] = ()) -> fx.GraphModule:
    """Trace `model` into an fx GraphModule and propagate shapes from `example` (a batch).

    Shape propagation runs in eval mode without autograd, so it neither updates BatchNorm
    statistics nor draws dropout randomness: tracing leaves training fully deterministic.
    """
    tracer = MrcTracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as e:
        raise _failure(model, tracer, e) from e
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    modes = {name: m.training for name, m in gm.named_modules()}
    try:
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as e:
        shape = tuple(example.shape) if isinstance(example, torch.Tensor) else "?"
        raise TraceFailure(
            f"the traced model failed on an example batch of shape {shape}: "
            f"{type(e).__name__}: {_one_line(e)}",
            "check that the data's example shape matches what the model expects "
            "(e.g. flattened vectors vs (C, H, W) images)") from e
    finally:
        for name, m in gm.named_modules():
            m.train(modes.get(name, m.training))
    return gm


def _failure(model: nn.Module, tracer: MrcTracer, error: Exception) -> TraceFailure:
    """Turn an fx tracing error into a TraceFailure naming the failing module."""
    reason = f"{type(error).__name__}: {_one_line(error)}"
    if "control flow" in str(error) or "cannot be iterated" in str(error):
        reason += " (data-dependent Python control flow cannot be traced)"
    elif "Proxy" in str(error):
        reason += " (a traced tensor was used as a plain Python value)"
    if tracer.failed_module is None or tracer.failed_module[0] == "":
        where = f"the forward of the model itself ({type(model).__name__})"
        return TraceFailure(
            f"cannot trace {where}: {reason}",
            "move the data-dependent part into a submodule and mark it as a leaf (give its "
            "class `mrc_leaf = True`), or express it with tensor ops such as torch.where",
            module="")
    path, m = tracer.failed_module
    cls = type(m).__name__
    return TraceFailure(
        f"cannot trace module `{path}` ({cls}): {reason}",
        f"mark it as a leaf so it stays one opaque node: give class {cls} the attribute "
        f"`mrc_leaf = True`, or pass leaf_modules={{{path!r}}} (a module path or class name)",
        module=path)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
