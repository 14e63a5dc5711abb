"""Trace a model with torch.fx and annotate the graph for binding.

`trace_model` symbolic-traces the model, runs it node by node on an example batch (so every node
that makes tensors has `node.meta["tensor_meta"]`, torch.fx's `TensorMetadata`, as torch.fx's
ShapeProp records it) and stores mrc's own annotations under `node.meta["mrc"]`:

- `scope`: the path of the innermost module whose forward created the node ("" for the root),
- `residual_block`: the path of the enclosing module marked `is_residual_block`, or None,
- `residual_stack`: the path of the enclosing module marked `is_residual_stack`, or None,
- `layer`: the index n of the stack layer `…layers.n` the node belongs to (the update
  y + h·F_n(y) counts as part of layer n), or None,
- `module_type`: for `call_module` nodes, the class name of the (leaf) module called,
- `source`: (file, line) of the user's code that created the node (the innermost frame outside
  torch, mrc and the standard library while it was traced), or None — how an error raised while
  the traced graph runs is told at the user's line (mrc.usercode.user_frame).

A model that cannot be traced (data-dependent control flow, unsupported Python) raises
`TraceFailure` naming the module whose forward failed and how to make it a leaf. A forward that
raises on the example batch raises `ForwardError`: one line with the user's file:line and the
original message (found by running the model itself once more, `check_forward`), and a hint that
blames the data's shape only where the model's first layer rejects it.

Tracing is linear in the size of the model: torch.fx's own `Tracer.getattr` finds a parameter's
qualified name by scanning `root.named_parameters()` on every access, which makes a model whose
non-leaf modules read their own weights (the ODE-ResNet's steps) quadratic in depth; `MrcTracer`
looks the name up in a map built once per trace instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from types import FrameType
from typing import Any, TypeVar

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import TensorMetadata
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


class ForwardError(Exception):
    """The model's forward raised on an example batch: `message` is one line (the user's
    file:line, the error's type and message), `hint` says where to look."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


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
        self._outer: FrameType | None = None
        self._dirs: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._kinds: dict[str, str] = {}
        self._paths: dict[str, str] = {}

    def trace(self, root: nn.Module | Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        from mrc.usercode import not_user_dirs

        self._parameter_names = None  # built from this root on its first parameter access
        self._outer = sys._getframe()  # frames above it are mrc's callers: never a node's source
        self._dirs = not_user_dirs()
        try:
            return super().trace(root, concrete_args)
        finally:
            self._parameter_names = None
            self._outer = None

    def _source(self) -> tuple[str, int] | None:
        """(file, line) of the innermost user frame creating the current node (an installed
        package's only when there is no other), or None. Walking the frames (each file judged
        once) costs far less than torch.fx's `record_stack_traces`, which formats every node's
        whole stack."""
        fallback = None
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and frame is not self._outer:
            name = frame.f_code.co_filename
            kind = self._kinds.get(name)
            if kind is None:
                kind = self._kinds[name] = self._kind(name)
            if kind == "user":
                return self._paths[name], frame.f_lineno
            if kind == "installed" and fallback is None:
                fallback = (self._paths[name], frame.f_lineno)
            frame = frame.f_back
        return fallback

    def _kind(self, name: str) -> str:
        """Whether file `name` is the user's, an installed package's or neither (torch, mrc,
        the standard library, generated code)."""
        import os

        if name.startswith("<"):
            return "never"
        path = self._paths[name] = os.path.abspath(name)
        never, installed = self._dirs
        return "never" if path.startswith(never) else "installed" if path.startswith(installed) else "user"

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
            "source": self._source() if self._outer is not None else None,
        }
        if kind == "call_module" and self._stack:
            ann["module_type"] = type(self._stack[-1][1]).__name__
        return ann


def trace_model(model: nn.Module, example: torch.Tensor,
                leaf_modules: Iterable[str] = ()) -> fx.GraphModule:
    """Trace `model` into an fx GraphModule and propagate shapes from `example` (a batch).

    Shape propagation runs in eval mode without autograd, so it neither updates BatchNorm
    statistics nor draws dropout randomness: tracing leaves training fully deterministic.
    Raises TraceFailure (the model cannot be traced) or ForwardError (its forward raises).
    """
    tracer = MrcTracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as e:
        raise _failure(model, tracer, e) from e
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    quiet(gm)
    prop = _ShapeProp(gm)
    try:
        with _eval_mode(gm), torch.no_grad():
            prop.run(example)
    except Exception as e:
        from mrc.usercode import shown_path

        check_forward(model, example)  # the model itself raises too: the user's own line
        node = prop.current
        where = ""
        if node is not None:
            scope = node.meta.get("mrc", {}).get("scope") or ""
            source = node.meta.get("mrc", {}).get("source")
            where = f" at `{scope or node.name}`" + (f" ({shown_path(source[0])}:{source[1]})"
                                                     if source else "")
        shape = tuple(example.shape) if isinstance(example, torch.Tensor) else "?"
        raise ForwardError(
            f"the traced model failed on an example batch of shape {shape}{where}: "
            f"{type(e).__name__}: {_one_line(e)}",
            "the model itself runs on this batch but its fx trace does not: mark the module "
            "that differs as a leaf (`mrc_leaf = True`)") from e
    return gm


def check_forward(model: nn.Module, example: torch.Tensor) -> None:
    """Run `model` once on `example` (eval mode, no autograd: no statistics or randomness
    change); if it raises, raise ForwardError at the user's line (mrc.usercode.user_frame).

    The hint of a shape error blames the data's shape only when no layer with parameters has
    run yet — the model's first layer rejects the examples; otherwise it names the layer that
    raised and the shape it was given, which the model's earlier layers made.
    """
    from mrc.usercode import describe_user_error

    stack: list[tuple[str, nn.Module, tuple[Any, ...]]] = []
    ran_layer = [False]
    hooks = []

    def enter(path: str) -> Any:
        def hook(m: nn.Module, args: tuple[Any, ...]) -> None:
            stack.append((path, m, tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))))
        return hook

    def leave(m: nn.Module, args: Any, out: Any) -> None:
        stack.pop()
        if next(m.parameters(recurse=False), None) is not None:
            ran_layer[0] = True

    for path, m in model.named_modules():
        hooks.append(m.register_forward_pre_hook(enter(path)))
        hooks.append(m.register_forward_hook(leave))
    try:
        with _eval_mode(model), torch.no_grad():
            model(example)
    except Exception as e:
        where = stack[-1] if stack else ("", model, ())
        # a shape error (torch raises RuntimeError or ValueError) gets a hint on where the shape
        # came from; any other error (a NameError, say) is told by its line and message alone
        hint = _forward_hint(where, ran_layer[0], tuple(example.shape)) \
            if isinstance(e, RuntimeError | ValueError | IndexError) else ""
        raise ForwardError(describe_user_error(e, "the model's forward"), hint) from e
    finally:
        for h in hooks:
            h.remove()


def _forward_hint(where: tuple[str, nn.Module, tuple[Any, ...]], ran_layer: bool,
                  batch: tuple[int, ...]) -> str:
    path, m, shapes = where
    got = f"an input of shape {shapes[0]}" if shapes else "its input"
    if not ran_layer:
        what = f"the model's first layer `{path}` ({type(m).__name__})" if path else \
            "the model's forward, before any of its layers ran,"
        return (f"{what} rejects the data's examples of shape {batch[1:]} (a batch of "
                f"{batch[0]} was tried): check that the model is built for that shape (a factory "
                f"that names `in_shape` in its signature is given it), e.g. flattened vectors vs "
                f"(C, H, W) images")
    if path:
        return (f"the model's own layers disagree: `{path}` ({type(m).__name__}) was given {got} "
                f"by the layers before it")
    return "the error is in the model's own forward, after its first layers ran"


class _ShapeProp(fx.Interpreter):
    """Runs the graph node by node and records each node's `tensor_meta` as torch.fx's
    ShapeProp does for real tensors, and the node it is running, so a failure can name it.

    Not ShapeProp itself: its first node imports torch's symbolic-shape machinery (sympy,
    ≈ 0.4 s of every `mrc check`) for fake tensors that mrc never makes. A failing node's error
    is raised as it is (no traceback printed, no message rewritten)."""

    current: fx.Node | None = None

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        result = super().run_node(n)
        found = False

        def meta(value: Any) -> Any:
            nonlocal found
            if isinstance(value, torch.Tensor):
                found = True
                return tensor_meta(value)
            return value

        recorded = map_aggregate(result, meta)
        if found:
            n.meta["tensor_meta"] = recorded
        return result


FORMATS = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)
"""The memory formats `TensorMetadata` tells, in torch.fx's order of preference."""


def tensor_meta(t: torch.Tensor) -> TensorMetadata:
    """torch.fx's `TensorMetadata` of a real tensor, read from the tensor itself (torch.fx's
    own reader goes through symbolic-shape checks meant for fake tensors)."""
    strided = t.layout == torch.strided
    fmt = next((f for f in FORMATS if t.is_contiguous(memory_format=f)), None) if strided else None
    qparams: dict[str, Any] = {}
    if t.is_quantized:
        qscheme = qparams["qscheme"] = t.qscheme()
        if qscheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            qparams["scale"], qparams["zero_point"] = t.q_scale(), t.q_zero_point()
        elif qscheme in (torch.per_channel_affine, torch.per_channel_affine_float_qparams,
                         torch.per_channel_symmetric):
            qparams["scale"] = t.q_per_channel_scales().tolist()
            qparams["zero_point"] = t.q_per_channel_zero_points().tolist()
            qparams["axis"] = t.q_per_channel_axis()
    return TensorMetadata(t.shape, t.dtype, t.requires_grad, t.stride() if strided else (), fmt,
                          t.is_quantized, qparams)


class _eval_mode:
    """Every module of `model` in eval mode for the block, each one's own mode restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes:
            m.train(mode)


M = TypeVar("M", bound=nn.Module)


class _QuietCall:
    """How an mrc GraphModule is called: like torch.fx's own call, but an error is raised with
    its traceback as it is — torch.fx prints the generated code to stderr and drops the
    traceback, and mrc tells the user's line from it instead (mrc.usercode.user_frame)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __call__(self, obj: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return super(self.cls, obj).__call__(*args, **kwargs)


def stack_stretch(gm: fx.GraphModule, path: str) -> tuple[int, int, fx.Node] | str:
    """Where the stack at `path` lies in `gm` (its nodes are those of its scope): the positions
    of its first and last node and the one value it takes; or why it cannot be replaced."""
    nodes = list(gm.graph.nodes)
    inside = [i for i, n in enumerate(nodes)
              if (n.meta.get("mrc", {}).get("scope", "") + ".").startswith(path + ".")]
    if not inside:
        return "no node of the traced model runs it"
    lo, hi = inside[0], inside[-1]
    if hi - lo + 1 != len(inside):
        return "its nodes are not one contiguous stretch of the traced model"
    members = set(nodes[lo:hi + 1])
    entering = {a for n in nodes[lo:hi + 1] for a in n.all_input_nodes
                if a not in members and a.op != "get_attr"}
    leaving = [n for n in nodes[lo:hi + 1] if any(u not in members for u in n.users)]
    if len(entering) != 1 or leaving != [nodes[hi]]:
        return f"it takes {len(entering)} values and gives {len(leaving)}: a stack takes one and gives one"
    return lo, hi, next(iter(entering))


def replace_stretch(gm: fx.GraphModule, lo: int, hi: int, source: fx.Node, name: str,
                    module: nn.Module) -> fx.GraphModule:
    """A copy of `gm` in which the nodes at positions lo … hi (one stretch taking the one value
    `source` and giving the value of node hi) are one call of `module`, a submodule at `name`
    whose node keeps `name` as its scope (so a later rewrite finds it as that module's nodes).
    Stacked parameters (mrc/lower/stacked.py) and MGRIT solves (mrc/techniques/mgrit/lower.py)
    replace a residual stack this way."""
    nodes = list(gm.graph.nodes)
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    root: dict[str, Any] = {name: module}
    for i, n in enumerate(nodes):
        if lo <= i < hi:
            continue
        if i == hi:
            env[n] = g.call_module(name, (env[source],))
            env[n].meta["mrc"] = {"scope": name}
            continue
        env[n] = g.node_copy(n, lambda a: env[a])
        if n.op == "call_module":
            root[str(n.target)] = gm.get_submodule(str(n.target))
        elif n.op == "get_attr":
            obj: Any = gm
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            root[str(n.target)] = obj
    return quiet(fx.GraphModule(root, g))


def quiet(gm: M) -> M:
    """Call every GraphModule in `gm` (itself, split_module's parts) through `_QuietCall`
    (each GraphModule has a class of its own, so this touches no other). torch.fx keeps a
    class's `_wrapped_call` across recompiles, but not across `copy.deepcopy`: quiet a copy
    again."""
    for m in gm.modules():
        if isinstance(m, fx.GraphModule):
            cls = type(m)
            cls._wrapped_call = _QuietCall(cls)  # type: ignore[attr-defined]
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
