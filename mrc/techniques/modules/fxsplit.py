"""Cut the traced model into K successive modules for module-wise training (TRGL).

Module-wise training (Karkar et al., "Module-wise Training of Neural Networks via the Minimizing
Movement Scheme") trains module k from the loss of an auxiliary classifier on its output plus a
transport cost over the residual branches r_m of its blocks. This file finds, on the fx graph
made by `mrc.models.trace.trace_model`, what that needs:

- `residuals`: every residual connection `skip + r_m`, with the branch value r_m;
- `chain_cuts` / `cut_at`: the positions of the main chain, where exactly one activation crosses,
  so a module can take one input and hand one output on;
- `blocks`: the cut before each residual block (or each parameterised layer without blocks);
- `equal_split` / `balanced_split`: K − 1 cuts among the blocks, by block count or by activation
  bytes (`node_bytes`, `module_bytes`);
- `split_modules`: the K GraphModules, module k mapping its input to `(out, (r_0, r_1, …))`.

Everything is linear in the number of fx nodes (times a constant search bound and the module
path depth): models have thousands of blocks (an ODE-ResNet of depth 2048), so nothing scans
the whole graph per node. Positions are indices into `list(gm.graph.nodes)`.
"""

from __future__ import annotations

import itertools
import operator
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata

from mrc.models.trace import quiet
from mrc.registry import did_you_mean

SEARCH_LIMIT = 64
"""How many ancestors the backward search from each operand of an add visits at most."""

_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add, torch.Tensor.add, torch.Tensor.add_)
_ADD_METHODS = ("add", "add_")
_SKIP_NAMES = ("shortcut", "downsample")


@dataclass(frozen=True)
class Residual:
    """One residual connection `skip + branch` on the fx graph (node names).

    `add` is the add node, `branch` the node of r_m (the value added to the skip path) and
    `block` the module path of the block it belongs to.
    """

    add: str
    branch: str
    block: str


@dataclass(frozen=True)
class Cut:
    """A position on the main chain where one module ends and the next starts.

    `index` is the position in `list(gm.graph.nodes)` of the first node of the module starting
    here, `node` that node's name, `path` the shallowest module path whose first node it is
    (`layer2` rather than `layer2.0`), and `paths` every module path starting here, shallowest
    first (`("layer2", "layer2.0", "layer2.0.shortcut", …)`).
    """

    index: int
    node: str
    path: str
    paths: tuple[str, ...] = ()


# --------------------------------------------------------------------------- graph analysis


class _Chain:
    """Linear-time facts about a graph: module starts and the values live across each position."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.nodes: list[fx.Node] = list(gm.graph.nodes)
        self.index: dict[fx.Node, int] = {node: i for i, node in enumerate(self.nodes)}
        n = len(self.nodes)
        self.first = next((i for i, node in enumerate(self.nodes) if node.op != "placeholder"), n)
        self.out = next((i for i, node in enumerate(self.nodes) if node.op == "output"), n)
        # module path -> index of its first node, and index -> paths starting there (shallowest
        # first). A node's scope and its ancestors are walked until one already started: each
        # path is met once, so this is linear in nodes times path depth.
        self.starts: dict[str, int] = {}
        self.starting: dict[int, tuple[str, ...]] = {}
        for i, node in enumerate(self.nodes):
            scope = _scope(node)
            new: list[str] = []
            while scope and scope not in self.starts:
                self.starts[scope] = i
                new.append(scope)
                scope = scope.rpartition(".")[0]
            if new:
                self.starting[i] = tuple(reversed(new))
        # values live across position i (defined before node i, used at or after it): a value j
        # counts on positions j+1 … last use; a difference array gives how many, and the sum of
        # their indices names the value where exactly one crosses. get_attr nodes do not count.
        count = [0] * (n + 2)
        total = [0] * (n + 2)
        self.last_use = [-1] * n
        for j, node in enumerate(self.nodes):
            if node.op in ("get_attr", "output") or not node.users:
                continue
            last = max(self.index[u] for u in node.users)
            self.last_use[j] = last
            count[j + 1] += 1
            count[last + 1] -= 1
            total[j + 1] += j
            total[last + 1] -= j
        self.crossing_count = [0] * (n + 1)
        self.crossing_sum = [0] * (n + 1)
        running = summed = 0
        for i in range(n + 1):
            running += count[i]
            summed += total[i]
            self.crossing_count[i] = running
            self.crossing_sum[i] = summed

    def crossing(self, i: int) -> fx.Node | None:
        """The one tensor value live across position i, or None if not exactly one tensor."""
        if self.crossing_count[i] != 1:
            return None
        node = self.nodes[self.crossing_sum[i]]
        return node if isinstance(node.meta.get("tensor_meta"), TensorMetadata) else None

    def crossing_values(self, i: int) -> list[fx.Node]:
        """Every value live across position i (one O(n) scan: for messages only)."""
        return [node for j, node in enumerate(self.nodes[:i]) if self.last_use[j] >= i]

    def is_cut(self, i: int) -> bool:
        """Whether position i is a cut of the main chain (see `chain_cuts`)."""
        return self.first <= i < self.out and i in self.starting and self.crossing(i) is not None

    def cut(self, i: int) -> Cut:
        paths = self.starting[i]
        return Cut(i, self.nodes[i].name, paths[0], paths)


def _scope(node: fx.Node) -> str:
    ann = node.meta.get("mrc")
    return str(ann.get("scope") or "") if isinstance(ann, dict) else ""


def _ann(node: fx.Node, key: str) -> Any:
    ann = node.meta.get("mrc")
    return ann.get(key) if isinstance(ann, dict) else None


# --------------------------------------------------------------------------- residuals


def _add_operands(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """The two tensor operands of an add node of equal shape and dtype, or None."""
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        pass
    elif node.op == "call_method" and node.target in _ADD_METHODS:
        pass
    else:
        return None
    alpha = node.kwargs.get("alpha", 1)
    if len(node.args) != 2 or alpha != 1 or set(node.kwargs) - {"alpha"}:
        return None
    a, b = node.args
    if not isinstance(a, fx.Node) or not isinstance(b, fx.Node) or a is b:
        return None
    if a.op == "get_attr" or b.op == "get_attr":  # a parameter (position embedding), no residual
        return None
    ma, mb = a.meta.get("tensor_meta"), b.meta.get("tensor_meta")
    if not isinstance(ma, TensorMetadata) or not isinstance(mb, TensorMetadata):
        return None
    if tuple(ma.shape) != tuple(mb.shape) or ma.dtype != mb.dtype:
        return None
    return a, b


def _ancestors(start: fx.Node, limit: int) -> dict[fx.Node, int]:
    """Breadth-first distances from `start` back to at most `limit` ancestors (itself at 0).

    Parameters (get_attr nodes) are not followed: two values reading one weight are not forked.
    """
    dist = {start: 0}
    queue = deque([start])
    while queue and len(dist) < limit:
        node = queue.popleft()
        for inp in node.all_input_nodes:
            if inp not in dist and inp.op != "get_attr":
                dist[inp] = dist[node] + 1
                if len(dist) >= limit:
                    break
                queue.append(inp)
    return dist


def _skip_named(node: fx.Node, below: str) -> bool:
    """Whether the node was made inside a `shortcut`/`downsample` module (under path `below`)."""
    scope = _scope(node)
    rest = scope[len(below) + 1:] if below and scope.startswith(below + ".") else scope
    return any(part in _SKIP_NAMES for part in rest.split("."))


def _branch_of(add: fx.Node, a: fx.Node, b: fx.Node, index: dict[fx.Node, int],
               limit: int) -> fx.Node | None:
    """The branch operand of `a + b`, or None when they share no ancestor within the bound."""
    da, db = _ancestors(a, limit), _ancestors(b, limit)
    if a in db:  # a is an ancestor of b: a is the skip
        return b
    if b in da:
        return a
    common = da.keys() & db.keys()
    if not common:
        return None
    fork = max(common, key=index.__getitem__)  # the latest common ancestor
    if da[fork] != db[fork]:
        return a if da[fork] > db[fork] else b
    block = _scope(add)
    if _skip_named(a, block) != _skip_named(b, block):
        return b if _skip_named(a, block) else a
    return b  # a tie: `skip + f(skip)` is the usual way round


def _block_of(add: fx.Node, branch: fx.Node) -> str:
    block = _ann(add, "residual_block")
    if block:
        return str(block)
    stack, layer = _ann(add, "residual_stack"), _ann(add, "layer")
    if stack is not None and layer is not None:
        return f"{stack}.layers.{layer}" if stack else f"layers.{layer}"
    return _scope(add) or _scope(branch)


def residuals(gm: fx.GraphModule, limit: int = SEARCH_LIMIT) -> list[Residual]:
    """Every residual connection of the traced graph, in graph order.

    A residual is an add (operator.add/iadd, torch.add, Tensor.add/add_) of two tensors of one
    shape and dtype that fork from a common ancestor found by a backward search of at most
    `limit` nodes from each operand. The skip is the operand that is an ancestor of the other,
    else the one with the shorter path from the fork (ties: the one made in a `shortcut` or
    `downsample` module, else the first operand); the other is the branch r_m. Adds of a
    parameter, of unrelated values, or of forks further apart than the bound are not residuals.
    `block` is the enclosing `is_residual_block` module, `<stack>.layers.<n>` in a residual
    stack, else the scope of the add (or of the branch for an add in the root's forward).
    """
    nodes = list(gm.graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    found: list[Residual] = []
    for node in nodes:
        operands = _add_operands(node)
        if operands is None:
            continue
        branch = _branch_of(node, *operands, index, limit)
        if branch is not None:
            found.append(Residual(node.name, branch.name, _block_of(node, branch)))
    return found


def residuals_by_block(gm: fx.GraphModule, limit: int = SEARCH_LIMIT) -> dict[str, list[Residual]]:
    """`residuals(gm)` grouped by block path, blocks in the order of their first residual."""
    out: dict[str, list[Residual]] = {}
    for res in residuals(gm, limit):
        out.setdefault(res.block, []).append(res)
    return out


# --------------------------------------------------------------------------- cuts


def chain_cuts(gm: fx.GraphModule) -> list[Cut]:
    """Every cut of the main chain, in graph order.

    A position i (cutting before node i, from the first non-placeholder node up to but not
    including the output) is a cut when exactly one value computed before it is used at or
    after it and that value is a tensor (parameters read by get_attr do not count: a module
    recreates them), and some module path starts at node i. The cut right after the
    placeholders (before the stem) is included; a module 0 ending there is the identity.
    """
    chain = _Chain(gm)
    return [chain.cut(i) for i in sorted(chain.starting) if chain.is_cut(i)]


def cut_at(gm: fx.GraphModule, path: str) -> Cut | str:
    """The cut before module `path`, or a one-line reason why there is none."""
    chain = _Chain(gm)
    i = chain.starts.get(path)
    if i is None:
        known = dict(gm.named_modules())
        if path in known:
            return f"module `{path}` is never called in the traced graph"
        close = did_you_mean(path, list(chain.starts))
        return f"no module `{path}`" + (f"; did you mean `{close}`?" if close else "")
    if chain.is_cut(i):
        return chain.cut(i)
    if i >= chain.out:
        return f"`{path}` starts at the output: nothing follows it"
    values = chain.crossing_values(i)
    if len(values) == 1:
        return f"`{path}` is not on the main chain: the value crossing there (`{values[0].name}`) " \
               f"is not a tensor"
    shown = ", ".join(f"`{v.name}`" for v in values[:4]) + (", …" if len(values) > 4 else "")
    return f"`{path}` is not on the main chain: {len(values)} values cross there ({shown})"


def blocks(gm: fx.GraphModule, limit: int = SEARCH_LIMIT) -> list[Cut]:
    """The cut before each block, in graph order.

    The blocks are those of `residuals` (an `is_residual_block` module, a residual stack layer
    `<stack>.layers.<n>`, or the module whose forward adds a detected residual); a block is cut
    before its first node. A model without residuals has one block per parameterised layer:
    each called module owning parameters (and each module whose forward reads its own
    parameters), cut before its first node. Blocks whose start is not a chain cut (more than one
    value crosses there) are left out, as are repeats of one position.
    """
    chain = _Chain(gm)
    paths = [res.block for res in residuals(gm, limit)]
    if not paths:
        for node in chain.nodes:
            if node.op == "call_module":
                module = gm.get_submodule(str(node.target))
                if next(module.parameters(), None) is not None:
                    paths.append(str(node.target))
            elif node.op == "get_attr":
                owner = str(node.target).rpartition(".")[0]
                if owner:
                    paths.append(owner)
    positions = sorted({chain.starts[p] for p in paths if p in chain.starts})
    return [chain.cut(i) for i in positions if chain.is_cut(i)]


# --------------------------------------------------------------------------- splits


def equal_split(gm: fx.GraphModule, k: int) -> list[Cut] | str:
    """k − 1 cuts giving K modules of (nearly) equal numbers of blocks, or why not.

    Module 0 starts with the stem and holds the first block too, so the cuts are chosen among
    `blocks(gm)[1:]`. Where the blocks do not divide evenly the earlier modules get one more.
    """
    cuts = blocks(gm)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        return f"the number of modules must be a positive integer, not {k!r}"
    if k == 1:
        return []
    if k > len(cuts):
        return f"cannot cut {k} modules: the model has {len(cuts)} block(s)"
    size, extra = divmod(len(cuts), k)
    out: list[Cut] = []
    at = 0
    for m in range(k - 1):
        at += size + (1 if m < extra else 0)
        out.append(cuts[at])
    return out


def _example_batch(gm: fx.GraphModule) -> int:
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if node.op == "placeholder" and isinstance(meta, TensorMetadata) and len(meta.shape):
            return max(1, int(meta.shape[0]))
    return 1


def _meta_bytes(meta: Any, batch: int, example: int) -> int:
    if isinstance(meta, TensorMetadata):
        numel = 1
        for d in meta.shape:
            numel *= int(d)
        size = torch.empty((), dtype=meta.dtype).element_size()
        return -(-numel * size * batch // example)
    if isinstance(meta, (list, tuple)):
        return sum(_meta_bytes(m, batch, example) for m in meta)
    if isinstance(meta, dict):
        return sum(_meta_bytes(m, batch, example) for m in meta.values())
    return 0


def node_bytes(gm: fx.GraphModule, batch: int) -> list[int]:
    """Bytes of each node's output tensor(s), scaled from the traced example batch to `batch`.

    Read from `tensor_meta` (ShapeProp); the example batch is the first placeholder's leading
    dimension and every activation is taken as proportional to it. Parameters (get_attr nodes)
    and the output node count 0: they are not activations a module stores.
    """
    example = _example_batch(gm)
    return [0 if node.op in ("get_attr", "output")
            else _meta_bytes(node.meta.get("tensor_meta"), batch, example)
            for node in gm.graph.nodes]


def _bounds(cuts: list[Cut], n: int) -> list[int]:
    return [0, *sorted(c.index for c in cuts), n]


def module_bytes(gm: fx.GraphModule, cuts: list[Cut], batch: int) -> list[int]:
    """Activation bytes of each of the len(cuts) + 1 modules (sums of `node_bytes`)."""
    sizes = node_bytes(gm, batch)
    edges = _bounds(cuts, len(sizes))
    return [sum(sizes[a:b]) for a, b in itertools.pairwise(edges)]


_CHAINS: weakref.WeakKeyDictionary[fx.GraphModule, tuple[int, _Chain]] = weakref.WeakKeyDictionary()


def _chain_of(gm: fx.GraphModule) -> _Chain:
    """The graph's chain facts, made once per graph (and again if its node count changes)."""
    got = _CHAINS.get(gm)
    n = len(gm.graph.nodes)
    if got is None or got[0] != n:
        got = _CHAINS[gm] = (n, _Chain(gm))
    return got[1]


def crossing_node(gm: fx.GraphModule, cut: Cut) -> int:
    """The position of the value that crosses `cut` (a module's input)."""
    chain = _chain_of(gm)
    node = chain.crossing(cut.index)
    if node is None:
        raise ValueError(f"`{cut.path}` is not a cut of this graph")
    return chain.index[node]


def crossing_shape(gm: fx.GraphModule, cut: Cut) -> tuple[int, ...]:
    """The shape of one example of the value that crosses `cut` (a module's output)."""
    node = _chain_of(gm).crossing(cut.index)
    if node is None:
        raise ValueError(f"`{cut.path}` is not a cut of this graph")
    return tuple(int(d) for d in node.meta["tensor_meta"].shape[1:])


def balanced_split(gm: fx.GraphModule, k: int, batch: int, costs: list[int] | None = None,
                   head: Callable[[Cut], int] | None = None,
                   entry: Callable[[Cut], int] | None = None) -> list[Cut] | str:
    """k − 1 block cuts minimising the largest module's activation bytes, or why not.

    The candidates are `blocks(gm)[1:]` (as in `equal_split`); the pieces between consecutive
    candidates are indivisible units. A module weighs the `costs` of its nodes (default
    `node_bytes`; mrc.techniques.modules.cost measures what autograd saves) plus, when `head`
    is given, the cost of the auxiliary head at the cut that ends it (the last module has the
    model's own head, among its nodes) and, when `entry` is given, the cost of its input at the
    cut that starts it (saved again by its first op: the previous module's graph is freed by
    then). The least feasible bound is found by binary search on
    the byte count with the greedy check (fill each module while it fits), so it costs
    O(blocks · log bytes). If the greedy needs fewer than k modules, the heaviest modules are
    split further at their middle candidate.
    """
    every = blocks(gm)
    cands = every[1:]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        return f"the number of modules must be a positive integer, not {k!r}"
    if k == 1:
        return []
    if k > len(every):
        return f"cannot cut {k} modules: the model has {len(every)} block(s)"
    sizes = costs if costs is not None else node_bytes(gm, batch)
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)
    edges = [0, *(c.index for c in cands), len(sizes)]
    units = [prefix[b] - prefix[a] for a, b in itertools.pairwise(edges)]
    # the head a module ending after unit u carries (none after the last unit: the model's own)
    heads = [head(c) for c in cands] + [0] if head is not None else [0] * len(units)
    entries = [0] + [entry(c) for c in cands] if entry is not None else [0] * len(units)

    def greedy(bound: int) -> list[int] | None:
        """Unit indices u where a module starts (cut before candidate u - 1), or None."""
        starts, load = [], 0
        for u, w in enumerate(units):
            if entries[u] + w + heads[u] > bound:
                return None
            if load + w + heads[u] > bound:
                starts.append(u)
                load = entries[u]
            load += w
        return starts

    lo = max(e + w + h for e, w, h in zip(entries, units, heads, strict=True))
    hi = sum(units) + max(heads) + max(entries)
    while lo < hi:
        mid = (lo + hi) // 2
        found = greedy(mid)
        if found is not None and len(found) <= k - 1:
            hi = mid
        else:
            lo = mid + 1
    chosen = set(greedy(lo) or [])
    while len(chosen) < k - 1:  # more modules than the bound needs: split the heaviest further
        bounds = [0, *sorted(chosen), len(units)]
        spans = [(sum(units[a:b]), a, b) for a, b in itertools.pairwise(bounds) if b - a > 1]
        _, a, b = max(spans)
        half, load, split = sum(units[a:b]) / 2, 0, a + 1
        for u in range(a, b - 1):
            load += units[u]
            split = u + 1
            if load >= half:
                break
        chosen.add(split)
    return [cands[u - 1] for u in sorted(chosen)]


def split_modules(gm: fx.GraphModule, cuts: list[Cut], taps: bool = True) -> list[fx.GraphModule]:
    """The K = len(cuts) + 1 modules of `gm`, cut at `cuts` (chain cuts of this very graph).

    Module k is an fx.GraphModule sharing gm's submodules and parameters; it takes one input
    (the model input for k = 0, else the value crossing cut k) and returns `(out, taps)`: `out`
    the value crossing cut k + 1 (the model's output for the last module) and `taps` the tuple of
    branch values r_m of the residuals whose add lies in module k, in graph order (empty when
    `taps` is False). Parameters read by get_attr are read again in each module that uses them.
    A branch that an in-place add (`+=`, `add_`) overwrites is tapped as a clone taken before it.
    Chaining the modules computes exactly gm's forward. Raises ValueError for a bad cut.
    """
    chain = _Chain(gm)
    nodes = chain.nodes
    ordered = sorted(cuts, key=lambda c: c.index)
    crossing: list[fx.Node] = []
    for cut in ordered:
        if not (0 <= cut.index < len(nodes)) or nodes[cut.index].name != cut.node:
            raise ValueError(f"cut `{cut.path}` (node `{cut.node}`) is not a position of this graph")
        value = chain.crossing(cut.index) if chain.first <= cut.index < chain.out else None
        if value is None:
            raise ValueError(f"cut `{cut.path}` (node `{cut.node}`) is not on the main chain")
        crossing.append(value)
    if len({c.index for c in ordered}) != len(ordered):
        raise ValueError("two cuts at one position would make an empty module")
    tap_of: dict[str, str] = {}
    if taps:
        tap_of = {res.add: res.branch for res in residuals(gm)}
    edges = _bounds(ordered, len(nodes))
    named = {node.name: node for node in nodes}
    out: list[fx.GraphModule] = []
    for k, (start, end) in enumerate(itertools.pairwise(edges)):
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        if k > 0:
            entry = crossing[k - 1]
            env[entry] = graph.placeholder(entry.name)
            env[entry].meta = dict(entry.meta)

        def lookup(arg: fx.Node, env: dict[fx.Node, fx.Node] = env, graph: fx.Graph = graph) -> fx.Node:
            if arg not in env:
                if arg.op != "get_attr":
                    raise ValueError(f"node `{arg.name}` is read across a cut")
                env[arg] = graph.node_copy(arg)
            return env[arg]

        tapped: list[fx.Node] = []
        result: Any = None
        for node in nodes[start:end]:
            if node.op == "get_attr":
                continue  # copied where first used
            if node.op == "output":
                result = fx.node.map_arg(node.args[0], lookup)
                continue
            branch = tap_of.get(node.name)
            if branch is not None:
                value = lookup(named[branch])
                inplace = node.target in (operator.iadd, torch.Tensor.add_, "add_")
                if inplace and node.args[0] is named[branch]:
                    value = graph.call_function(torch.clone, (value,))
                tapped.append(value)
            env[node] = graph.node_copy(node, lookup)
        if k < len(ordered):
            result = lookup(crossing[k])
        graph.output((result, tuple(tapped)))
        # quiet: a user error inside a module is told at the user's line, with no fx code dump
        out.append(quiet(fx.GraphModule(gm, graph, f"{type(gm).__name__}Module{k}")))
    return out
