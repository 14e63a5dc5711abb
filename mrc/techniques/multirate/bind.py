"""Binding of partitions (multirate, random subsets, element partitions): selectors resolved
against the traced model to concrete parameters — and, for `sample(…)`, to element masks.

Parameter globs, module paths and types, weights and biases, depth ranges over parameterised
layers in traced order, earlier partitions by name, and set algebra; every partition is checked
for emptiness, overlap (at element level for element partitions) and coverage, each problem a
diagnostic at its selector's span. `sample(fraction, per, of)` resolves to a boolean mask per
tensor, drawn once from the run's seed and the partition's name (`sample_seed`), so a resumed run
or a second compile draws the same elements; `rest` takes every element no earlier partition
claimed.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from mrc.diagnostics import Note, Reporter
from mrc.program import Partition, Program, Select, Selector, SelectRandom, SelectSample, SelectSet
from mrc.registry import did_you_mean


@dataclass(frozen=True, slots=True)
class BoundPartition:
    """A partition resolved to concrete parameter names (in the model's own order).

    masks: per parameter, the boolean mask of the elements it holds, or None for the whole
    tensor (element-level partitions: `sample`, or a `rest` after one); numel counts elements.
    """

    name: str
    params: tuple[str, ...]
    numel: int
    spec: Partition
    masks: tuple[torch.Tensor | None, ...] = ()

    def mask_of(self) -> dict[str, torch.Tensor]:
        """The tensors this partition holds only in part, with their masks."""
        return {n: m for n, m in zip(self.params, self.masks, strict=False) if m is not None}


def default_partition(program: Program) -> Partition:
    """The implicit single partition of a spec that declares none."""
    return Partition("all", Select("all", program.model.span), program.model.span)


def by_ancestor(paths: list[str]) -> dict[str, list[str]]:
    """Module path → the given paths equal to it or below it (`p` or `p.…`), in the given order.
    The root "" is an ancestor of nothing but itself, as `startswith(path + ".")` has it."""
    out: dict[str, list[str]] = {}
    for path in paths:
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            out.setdefault(".".join(parts[:i]), []).append(path)
    return out


class _Resolver:
    def __init__(self, model: nn.Module, layers: tuple[str, ...], r: Reporter) -> None:
        self.names = [n for n, _ in model.named_parameters()]
        self.modules = dict(model.named_modules())
        self.layers = layers
        self.r = r
        self.resolved: dict[str, tuple[str, ...]] = {}
        # indexed once, so that each selector costs O(matches), not O(modules × parameters)
        self.owned: dict[str, list[str]] = {}  # module path → the parameters it holds itself
        for n in self.names:
            self.owned.setdefault(n.rpartition(".")[0], []).append(n)
        self.below = by_ancestor([n for n in self.names if "." in n])  # module → params under it

    def resolve(self, sel: Selector) -> set[str]:
        if isinstance(sel, SelectSet):
            left, right = self.resolve(sel.left), self.resolve(sel.right)
            return {"|": left | right, "&": left & right, "-": left - right}[sel.op]
        if isinstance(sel, SelectRandom | SelectSample):
            return self.resolve(sel.of)
        kind = sel.kind
        if kind == "all":
            return set(self.names)
        if kind == "bias":
            return {n for n in self.names if n.rpartition(".")[2] == "bias"}
        if kind == "weight":
            return {n for n in self.names if n.rpartition(".")[2] != "bias"}
        if kind == "params":
            return {n for n in self.names if fnmatch.fnmatchcase(n, sel.pattern)}
        if kind == "module":
            paths = [m for m in self.modules if m and fnmatch.fnmatchcase(m, sel.pattern)]
            return {n for m in paths for n in self.below.get(m, ()) if n != m}
        if kind == "type":
            owners = [m for m, mod in self.modules.items()
                      if any(c.__name__ == sel.pattern for c in type(mod).__mro__)]
            return {n for m in owners for n in self.owned.get(m, ())}
        if kind == "partition":
            return set(self.resolved.get(sel.pattern, ()))
        if kind == "depth":
            return {n for m in self.layers[slice(sel.lo, sel.hi)] for n in self.owned.get(m, ())}
        raise AssertionError(kind)

    def explain_empty(self, sel: Selector) -> str | None:
        """A hint for a selector that matched nothing."""
        if isinstance(sel, Select) and sel.kind in ("module", "params"):
            pool = [m for m in self.modules if m] if sel.kind == "module" else self.names
            guess = did_you_mean(sel.pattern, pool)
            if guess:
                return f'did you mean `{sel.kind}("{guess}")`?'
            shown = ", ".join(f"`{m}`" for m in pool[:8])
            return f"the model's {'modules' if sel.kind == 'module' else 'parameters'} include {shown}"
        if isinstance(sel, Select) and sel.kind == "type":
            types = sorted({type(m).__name__ for m in self.modules.values()})
            guess = did_you_mean(sel.pattern, types)
            return f'did you mean `type("{guess}")`?' if guess else f"module types here: {', '.join(types)}"
        if isinstance(sel, Select) and sel.kind == "depth":
            return f"the model has {len(self.layers)} parameterised layers (0…{len(self.layers) - 1})"
        return None


def sample_seed(seed: int, partition: str) -> int:
    """The seed of a `sample` partition's draw: the run's seed and the partition's name."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:sample:{partition}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def draw_sample(sel: SelectSample, names: list[str], shapes: list[torch.Size], seed: int,
                partition: str) -> list[torch.Tensor]:
    """The masks of a `sample` selector over its tensors (in the model's order), drawn once."""
    from mrc.techniques.random_subsets.masks import random_subset_masks

    return random_subset_masks(shapes, sel.fraction, sample_seed(seed, partition),
                               per_tensor=sel.per == "tensor")


class _Claims:
    """Which elements of which tensors the partitions resolved so far hold."""

    def __init__(self) -> None:
        self.taken: dict[str, torch.Tensor | None] = {}  # None: the whole tensor
        self.owners: dict[str, list[tuple[Partition, torch.Tensor | None]]] = {}

    def free(self, n: str) -> torch.Tensor | bool:
        """The unclaimed elements of `n`: True (all of it), False (none) or their mask."""
        if n not in self.taken:
            return True
        t = self.taken[n]
        if t is None or bool(t.all()):
            return False
        return ~t

    def clash(self, n: str, mask: torch.Tensor | None) -> tuple[Partition, int] | None:
        """The first earlier partition holding an element of `mask` in `n`, and how many."""
        for part, held in self.owners.get(n, ()):
            if held is None and mask is None:
                return part, 0  # two whole tensors: the message names the tensor
            both = held if mask is None else mask if held is None else held & mask
            count = int(both.sum())
            if count:
                return part, count
        return None

    def claim(self, part: Partition, n: str, mask: torch.Tensor | None) -> None:
        self.owners.setdefault(n, []).append((part, mask))
        if mask is None or n not in self.taken:
            self.taken[n] = None if mask is None else mask.clone()
        else:
            t = self.taken[n]
            self.taken[n] = None if t is None else t | mask


def resolve_partitions(program: Program, model: nn.Module, layers: tuple[str, ...],
                       r: Reporter) -> tuple[BoundPartition, ...]:
    """Resolve every partition; report empty, overlapping and missing coverage (per element
    where partitions hold parts of tensors)."""
    specs = list(program.partitions) or [default_partition(program)]
    res = _Resolver(model, layers, r)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    claims = _Claims()
    bound: list[BoundPartition] = []
    for part in specs:
        masks: list[torch.Tensor | None]
        if isinstance(part.selector, Select) and part.selector.kind == "rest":
            chosen, masks = [], []
            for n in res.names:
                free = claims.free(n)
                if free is False:
                    continue
                chosen.append(n)
                masks.append(None if isinstance(free, bool) else free)
            if not chosen:
                r.warning(f"partition `{part.name}` (`rest`) is empty: every parameter is already "
                          "in another partition", part.selector.span)
                continue
        else:
            chosen_set = res.resolve(part.selector)
            if not chosen_set:
                r.error(f"partition `{part.name}` selects no parameter: "
                        f"`{part.selector.describe()}` matches nothing", part.selector.span,
                        hint=res.explain_empty(_first_empty(part.selector, res)))
                continue
            chosen = [n for n in res.names if n in chosen_set]
            masks = [None] * len(chosen)
            if isinstance(part.selector, SelectSample):
                drawn = draw_sample(part.selector, chosen, [shapes[n] for n in chosen],
                                    program.train.seed, part.name)
                keep = [(n, m) for n, m in zip(chosen, drawn, strict=True) if bool(m.any())]
                if not keep:
                    r.error(f"partition `{part.name}` holds no element: "
                            f"`{part.selector.describe()}` draws none of "
                            f"{sum(shapes[n].numel() for n in chosen)} elements", part.selector.span,
                            hint="raise the fraction")
                    continue
                chosen = [n for n, _ in keep]
                masks = [None if bool(m.all()) else m for _, m in keep]
            clash = [(n, c) for n, m in zip(chosen, masks, strict=True)
                     if (c := claims.clash(n, m)) is not None]
            if clash:
                (n0, (other, count)), more = clash[0], len(clash) - 1
                what = f"{count} element{'s' if count != 1 else ''} of `{n0}`" if count else f"`{n0}`"
                tail = f" and {more} more tensor{'s' if more != 1 else ''}" if more else ""
                r.error(f"partitions `{other.name}` and `{part.name}` both claim {what}{tail}",
                        part.selector.span,
                        notes=[Note(f"`{other.name}` is defined here", other.selector.span)],
                        hint="a parameter belongs to one partition; narrow a selector with `-`"
                        if not count else "an element belongs to one partition; take the "
                        "elements a `sample` leaves with `rest`")
                continue
        for n, m in zip(chosen, masks, strict=True):
            claims.claim(part, n, m)
        res.resolved[part.name] = tuple(chosen)
        numel = sum(shapes[n].numel() if m is None else int(m.sum())
                    for n, m in zip(chosen, masks, strict=True))
        bound.append(BoundPartition(part.name, tuple(chosen), numel, part, tuple(masks)))
    left = [n for n in res.names if claims.free(n) is not False]
    if left and not r.failed:
        partial = [n for n in left if n in claims.taken]
        shown = ", ".join(f"`{n}`" for n in left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
        first = specs[0]
        what = (f"{len(left)} parameter{'s are' if len(left) > 1 else ' is'}"
                + (f" ({len(partial)} of them in part)" if partial else ""))
        r.error(f"{what} in no partition: {shown}",
                first.span, hint="add `partition other = rest` to collect them")
    return tuple(bound)


def _first_empty(sel: Selector, res: _Resolver) -> Selector:
    """The innermost sub-selector that matches nothing (for a precise hint)."""
    if isinstance(sel, SelectSet):
        for side in (sel.left, sel.right):
            if not res.resolve(side):
                return _first_empty(side, res)
    if isinstance(sel, SelectRandom | SelectSample):
        return _first_empty(sel.of, res)
    return sel
