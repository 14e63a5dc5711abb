"""Binding of module-wise training: the cuts on the traced model, the auxiliary heads, each
module's parameters, and the partitions split by module.

The split (`equal`, `balanced`, `at`) is found on the fx graph (mrc/techniques/modules/fxsplit.py);
a cut that is not on the model's main chain, or more modules than blocks, is a diagnostic at the
split's span (at the path's own span for `at`). Module k < K−1 gets an auxiliary classifier built
for the shape of its output (mrc/techniques/modules/heads.py) as `aux.k` of the model — so
selectors can name it (`module("aux.*")`) and a checkpoint holds it — while the last module uses
the model's own head. Each parameter belongs to the module whose segment uses it; every
partition is split into one partition per module it touches, `NAME@mk`, with the module's
optimizer where the partition has none of its own: from here on the graph's partitions never
cross a module boundary, so each module's backward and updates are those of its partitions.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from mrc.diagnostics import Reporter
from mrc.program import Modules, Program
from mrc.techniques.modules.tables import ModuleInfo
from mrc.techniques.multirate.bind import BoundPartition

AUX = "aux"
"""The attribute of the model that holds the auxiliary heads (`aux.0`, `aux.1`, …)."""


@dataclass
class BoundModules:
    """The modules of a bound spec: their names (m0 …), where they start (cuts, from the
    split), their table rows (mrc.techniques.modules.tables.ModuleInfo), the owner of each parameter, the τ of
    each module and the auxiliary heads (in the model as `aux`)."""

    spec: Modules
    names: tuple[str, ...]
    cuts: tuple[object, ...]  # fxsplit.Cut
    infos: dict[str, ModuleInfo]
    owner: dict[str, str]
    taus: tuple[float, ...]
    heads: nn.ModuleList
    layer_index: dict[str, int] = field(default_factory=dict)
    """Position of each layer in the bound layer list (filled by the expansion, once)."""

    def partition_name(self, partition: str, module: str) -> str:
        return f"{partition}@{module}"


def module_taus(spec: Modules, k: int) -> tuple[float, ...]:
    """τ of each module: fixed τ; doubled: τ/2 for the first ⌊K/2⌋ modules and τ for the rest
    (the authors' code); multipliers: λ0/2 (λ = 2τ) at the start; none: 0."""
    if spec.transport == "fixed":
        return (spec.tau,) * k
    if spec.transport == "doubled":
        return tuple(spec.tau / 2 if i < k // 2 else spec.tau for i in range(k))
    if spec.transport == "multipliers":
        return (spec.lambda0 / 2,) * k
    return (0.0,) * k


def bind(bound: Any, r: Reporter) -> BoundModules | None:
    """The technique's binding (`Bound.parts["modules"]`): the modules of a `modules` statement
    cut from the traced model, their heads attached to it (None: no statement, or reported)."""
    program = bound.program
    if program.modules is None:
        return None
    if bound.graph_module is None:
        bound.report_untraced("module-wise training (`modules`) cuts the model into modules at its traced graph",
                              program.modules.span, r)
        return None
    return bind_modules(program, bound.model, bound.graph_module, bound.example, int(bound.data.classes),
                        bound.data.batch_size, bound.layers, r)


def split(bound: Any, parts: tuple[BoundPartition, ...], r: Reporter) -> tuple[BoundPartition, ...]:
    """The technique's split of the resolved partitions: one per module (none to split without modules)."""
    mods = bound.parts.get("modules")
    return parts if mods is None else split_partitions(parts, mods, bound.model, r)


def bind_modules(program: Program, model: nn.Module, gm: fx.GraphModule, example: torch.Tensor,
                 classes: int, batch: int, layers: tuple[str, ...], r: Reporter) -> BoundModules | None:
    """Cut the model, build and attach the heads, and find each module's parameters."""
    from mrc.techniques.modules import cost, fxsplit
    from mrc.techniques.modules.heads import build_head

    spec = program.modules
    assert spec is not None
    span = spec.split_span or spec.span
    costs = node_costs(gm, example, batch, spec.transport != "none")  # the split's and the table's
    if spec.split == "at":
        cuts = []
        for path, pspan in zip(spec.at, spec.at_spans, strict=True):
            got = fxsplit.cut_at(gm, path)
            if isinstance(got, str):
                r.error(got, pspan)
                return None
            cuts.append(got)
        order = sorted(cuts, key=lambda c: c.index)
        if [c.index for c in order] != [c.index for c in cuts] or len({c.index for c in cuts}) < len(cuts):
            r.error("the cut points must be distinct and in the order the model runs them", span,
                    hint="order: " + ", ".join(f'"{c.path}"' for c in order))
            return None
    else:
        head = head_cost(spec, gm, classes, batch, example.dtype)
        got = (fxsplit.equal_split(gm, spec.count) if spec.split == "equal"
               else fxsplit.balanced_split(gm, spec.count, batch, costs, head, input_cost(gm, batch)))
        if isinstance(got, str):
            r.error(got, span)
            return None
        cuts = list(got)
    if hasattr(model, AUX):
        r.error(f"the model already has an attribute `{AUX}`, where module-wise training keeps its "
                "auxiliary heads", program.model.span)
        return None
    k = len(cuts) + 1
    names = tuple(f"m{i}" for i in range(k))
    pieces = fxsplit.split_modules(gm, cuts, taps=False)
    index = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    bounds = [c.index for c in cuts]
    residuals = [0] * k
    for res in fxsplit.residuals(gm):
        residuals[_module_at(index[res.add], bounds)] += 1
    if spec.transport != "none":
        bare = [names[i] for i in range(k) if residuals[i] == 0]
        if bare:
            r.error(f"transport regularization needs residual blocks, and module {bare[0]} has none "
                    "(the transport cost is the squared norm of its blocks' residual branches)",
                    spec.transport_span or spec.span,
                    hint="cut elsewhere, or use `transport = none` (VanGL)")
            return None
    shapes = [fxsplit.crossing_shape(gm, c) for c in cuts]  # each module's output (traced meta)
    heads = nn.ModuleList()
    with torch.random.fork_rng():
        torch.manual_seed((program.train.seed * 1_000_003 + 17) % 2**63)
        for i in range(k - 1):
            try:
                heads.append(build_head(spec.aux, dict(spec.aux_args), shapes[i], classes))
            except ValueError as err:
                r.error(f"module {names[i]}: {err}", spec.aux_span or spec.span)
                return None
    heads.to(example.dtype)
    model.add_module(AUX, heads)
    gm.add_module(AUX, heads)
    owner: dict[str, str] = {}
    name_of = {id(p): n for n, p in model.named_parameters()}
    for i, piece in enumerate(pieces):
        for p in piece.parameters():
            n = name_of[id(p)]
            if owner.get(n, names[i]) != names[i]:
                r.error(f"parameter `{n}` is used by modules {owner[n]} and {names[i]}: shared weights "
                        "cannot be split into modules", span)
                return None
            owner[n] = names[i]
    for i, head in enumerate(heads):
        for n, _ in head.named_parameters():
            owner[f"{AUX}.{i}.{n}"] = names[i]
    edges = [0, *(c.index for c in cuts), len(costs)]
    sizes = [sum(costs[a:b]) for a, b in itertools.pairwise(edges)]
    for i, h in enumerate(heads):
        sizes[i] += cost.head_bytes(h, shapes[i], batch, example.dtype)
    entry = input_cost(gm, batch)
    for i, c in enumerate(cuts):
        sizes[i + 1] += entry(c)
    count = dict.fromkeys(names, 0)
    for n, p in model.named_parameters():
        if n in owner:
            count[owner[n]] += p.numel()
    per_layer: dict[str, list[str]] = {n: [] for n in names}
    layer_owner: dict[str, str] = {}
    for p, m in owner.items():  # a layer belongs to the module of its (first) parameter
        layer_owner.setdefault(p.rpartition(".")[0], m)
    for layer in layers:
        if layer in layer_owner:
            per_layer[layer_owner[layer]].append(layer)
    for i in range(k - 1):
        per_layer[names[i]].append(f"{AUX}.{i}")
    taus = module_taus(spec, k)
    aux_text = spec.aux + ("(" + ", ".join(f"{a}={v}" for a, v in spec.aux_args.items()) + ")"
                           if spec.aux_args else "")
    infos = {names[i]: ModuleInfo("" if i == 0 else cuts[i - 1].node, "" if i == 0 else cuts[i - 1].path,
                                  tuple(per_layer[names[i]]), count[names[i]], int(sizes[i]), residuals[i],
                                  f"{AUX}.{i}" if i < k - 1 else "model", aux_text if i < k - 1 else "",
                                  taus[i])
             for i in range(k)}
    return BoundModules(spec, names, tuple(cuts), infos, owner, taus, heads)


def node_costs(gm: fx.GraphModule, example: torch.Tensor, batch: int, transport: bool) -> list[int]:
    """Each node's activation bytes at `batch`: what autograd saves while it runs, and with the
    transport term each residual branch once more (mean(r²) keeps r for its gradient)."""
    from mrc.techniques.modules import cost, fxsplit

    costs = cost.saved_bytes(gm, example, batch)
    if transport:
        index = {n.name: i for i, n in enumerate(gm.graph.nodes)}
        sizes = fxsplit.node_bytes(gm, batch)
        for res in fxsplit.residuals(gm):
            costs[index[res.add]] += sizes[index[res.branch]]
    return costs


def input_cost(gm: fx.GraphModule, batch: int) -> Callable[[object], int]:
    """The bytes of a module's input at the cut that starts it: its first op saves it again
    (the earlier module's graph, which saved it first, is freed by then)."""
    from mrc.techniques.modules import fxsplit

    sizes = fxsplit.node_bytes(gm, batch)
    chain = fxsplit.crossing_node

    def at(cut: object) -> int:
        return sizes[chain(gm, cut)]  # type: ignore[arg-type]
    return at


def head_cost(spec: Modules, gm: fx.GraphModule, classes: int, batch: int,
              dtype: torch.dtype) -> Callable[[object], int]:
    """The activation bytes of the auxiliary head a module ending at a cut would carry (built
    and measured once per feature shape; 0 where no head fits the features)."""
    from mrc.techniques.modules import cost, fxsplit
    from mrc.techniques.modules.heads import build_head

    cache: dict[tuple[int, ...], int] = {}

    def at(cut: object) -> int:
        shape = fxsplit.crossing_shape(gm, cut)  # type: ignore[arg-type]
        if shape not in cache:
            try:
                with torch.random.fork_rng():
                    h = build_head(spec.aux, dict(spec.aux_args), shape, classes)
                cache[shape] = cost.head_bytes(h, shape, batch, dtype)
            except ValueError:
                cache[shape] = 0
        return cache[shape]
    return at


def _module_at(position: int, bounds: list[int]) -> int:
    """The module that holds node `position`, given the cut positions (bisection)."""
    import bisect

    return bisect.bisect_right(bounds, position)


def split_partitions(parts: tuple[BoundPartition, ...], mods: BoundModules, model: nn.Module,
                     r: Reporter) -> tuple[BoundPartition, ...]:
    """Each partition as one partition per module it touches (`NAME@mk`), with the module's own
    optimizer where the partition names none."""
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    out = []
    for part in parts:
        for name in mods.names:
            keep = [i for i, p in enumerate(part.params) if mods.owner.get(p) == name]
            if not keep:
                continue
            params = tuple(part.params[i] for i in keep)
            masks = tuple(part.masks[i] for i in keep) if part.masks else ()
            spec = part.spec
            own = mods.spec.optimizers.get(name)
            if own is not None and spec.optimizer is None:
                spec = dataclasses.replace(spec, optimizer=own)
            numel = sum(int(m.sum()) if m is not None else sizes[p] for p, m in
                        zip(params, masks or (None,) * len(params), strict=True))
            out.append(BoundPartition(mods.partition_name(part.name, name), params, numel, spec, masks))
    stray = sorted({p for part in parts for p in part.params} - set(mods.owner))
    if stray:
        r.error(f"parameter `{stray[0]}` is used by no module of the split", mods.spec.span)
    return tuple(out)
