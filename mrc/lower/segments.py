"""Segments of the traced model: the model cut in two with torch.fx's split_module.

A cut at layer n (the first node that uses a parameter of layers[n:]) gives a prefix, returning
the tuple of every value the rest reads (activations, and the input itself where a later node
reads it), and a suffix taking that tuple. Forward ops `model[:n]` and `model[n:]` run them; the
activation edge between them carries the tuple. Parameters stay those of the model. One cut is
made per (replica, n) and shared by every step that uses it.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn


def split_at(gm: fx.GraphModule, root: nn.Module, layers: tuple[str, ...],
             n: int) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(prefix, suffix) of `gm` cut before the first node that uses a parameter of layers[n:]."""
    from torch.fx.passes.split_module import split_module

    live = set(layers[n:])
    prefixes = {layer.rsplit(".", i)[0] for layer in live for i in range(layer.count(".") + 1)}
    nodes = list(gm.graph.nodes)

    def touches(node: fx.Node) -> bool:
        if node.op == "call_module":
            t = str(node.target)
            return t in live or t in prefixes
        if node.op == "get_attr":
            return str(node.target).rpartition(".")[0] in live
        return False

    cut = next(i for i, node in enumerate(nodes) if touches(node))
    index = {node: i for i, node in enumerate(nodes)}
    split = split_module(gm, root, lambda node: 0 if index[node] < cut else 1)
    top = list(split.graph.nodes)
    call1 = next(i for i, node in enumerate(top) if node.op == "call_module" and node.target == "submod_1")
    early = set(top[:call1])
    needed: list[fx.Node] = []
    for node in top[call1:]:
        for inp in node.all_input_nodes:
            if inp in early and inp not in needed:
                needed.append(inp)
    pg = fx.Graph()
    env: dict[fx.Node, Any] = {}
    for node in top[:call1]:
        env[node] = pg.node_copy(node, lambda a: env[a])
    pg.output(tuple(env[a] for a in needed))
    sg = fx.Graph()
    env = {a: sg.placeholder(f"in{i}") for i, a in enumerate(needed)}
    for node in top[call1:]:
        env[node] = sg.node_copy(node, lambda a: env[a])
    from mrc.models.trace import quiet  # an error in the user's forward keeps its traceback

    return quiet(fx.GraphModule(split, pg)), quiet(fx.GraphModule(split, sg))


def segments(ctx: Any, replica: str, module: nn.Module, n: int) -> tuple[nn.Module, nn.Module]:
    """The (prefix, suffix) of a replica's model cut at layer n, made once per (replica, n)."""
    key = (replica, n)
    if key not in ctx.segments:
        ctx.segments[key] = split_at(module, module, ctx.graph.layers, n)
    return ctx.segments[key]
