"""Bound program → the initial schedule graph (the naive schedule, before any pass).

Today's specs are one stage whose period is the least common multiple of every rate (each
partition's `every`, times each brain's `every`). Each step of the period gets a signature —
which partitions' intervals start on it, for each replica, and which brains land together — and
the steps that share a signature share one step pattern, expanded once by the techniques
(mrc/techniques/multirate for partitions and drift, random_subsets for held-out subsets, brains
for replica scopes and merges). So building costs O(period) signatures plus O(patterns × ops),
never O(period × ops).
"""

from __future__ import annotations

from collections.abc import Hashable

from mrc.binding import Bound
from mrc.ir.cadence import cadence_of
from mrc.ir.graph import Pattern, ScheduleGraph, StackInfo, Stage, lcm
from mrc.ir.ops import EMPTY, Batch, Op, Rule, Scope
from mrc.techniques.brains.expand import brain_batch, brain_rules, landing, merge_rule, replica_table
from mrc.techniques.brains.ops import Merge
from mrc.techniques.modules.expand import expand_modules_step, multiplier_every, stage_plans
from mrc.techniques.multirate.expand import expand_step, partition_lr, partition_table, rule_of, signature


def period_of(bound: Bound) -> int:
    """The least common multiple of every partition's rate (and of module-wise training's
    multiplier interval), times each brain's."""
    inner = lcm([*(p.spec.every for p in bound.partitions), multiplier_every(bound)])
    if bound.program.brains:
        return lcm(b.every * inner for b in bound.program.brains)
    return inner


def device_of(bound: Bound) -> str:
    """The device the spec trains on: `auto` is CUDA when one is present."""
    import torch

    wanted = bound.program.train.device
    return "cuda" if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()) else "cpu"


def _rules(bound: Bound) -> dict[str, tuple[Rule, float]]:
    out = {}
    for p in bound.partitions:
        comp = p.spec.optimizer or bound.program.optimizer
        out[p.name] = (rule_of(comp), partition_lr(p, comp))
    return out


def build_graph(bound: Bound) -> ScheduleGraph:
    """The naive schedule; see the module docstring."""
    program = bound.program
    brains = program.brains
    period = period_of(bound)
    merge = merge_rule(program.merge)
    if bound.modules is not None:
        plans, laps = stage_plans(bound)
        stages = [build_stage(bound, period, plan.name, plan.length, plan.training) for plan in plans]
    else:
        stages, laps = [build_stage(bound, period, "train", None, None)], 1
    graph = ScheduleGraph(stages, partition_table(bound), replica_table(bound) if brains else {},
                          bound.layers, device_of(bound), getattr(program.train, "kernels", "auto"),
                          merge if brains else None, rule_of(program.schedule),
                          modules=dict(bound.modules.infos) if bound.modules is not None else {}, laps=laps,
                          stacks=stack_table(bound), placement=getattr(bound, "placement", None),
                          precision=getattr(program.train, "precision", "32"))
    graph.cadence = cadence_of(program.train)
    if brains:
        from mrc.techniques.brains.stack import obstacle

        graph.stack_obstacle = stack_obstacle(bound) or (
            obstacle(bound.graph_module) if bound.graph_module is not None else "the model is not traced")
    graph.verify()
    return graph


def build_stage(bound: Bound, period: int, name: str, length: int | None,
                training: frozenset[int] | None) -> Stage:
    """One stage: each step of the period expanded once per distinct signature. `training`:
    the modules the stage trains (module-wise training; None: a plain step)."""
    program = bound.program
    brains = program.brains
    parts = list(bound.partitions)
    rules = {b.name: brain_rules(bound, b) for b in brains} if brains else {"": _rules(bound)}
    merge = merge_rule(program.merge)
    every = multiplier_every(bound)

    def step_sig(n: int) -> Hashable:
        return (signature(parts, n), n % every == 0)

    def sig(t: int) -> Hashable:
        if not brains:
            return step_sig(t)
        stepping = tuple(step_sig(t // b.every) if t % b.every == 0 else None for b in brains)
        arriving = landing(brains, t) if merge is not None else ()
        return stepping, arriving if len(arriving) >= 2 else ()

    def one(pattern: Pattern, scope: Scope, n: int, batch: Batch, rule_for: dict[str, tuple[Rule, float]]) -> list[Op]:
        if training is None:
            return expand_step(pattern, bound, scope, n, batch, rule_for)
        return expand_modules_step(pattern, bound, scope, n, batch, rule_for, training)

    def expand(t: int) -> Pattern:
        pattern = Pattern()
        if not brains:
            one(pattern, EMPTY, t, Batch(), rules[""])
            return pattern
        tails: list[Op] = []
        for b in brains:
            if t % b.every == 0:
                batch = brain_batch(bound, b)
                tails += one(pattern, batch.scope, t // b.every, batch, rules[b.name])
        arriving = landing(brains, t)
        if merge is not None and len(arriving) >= 2:
            pattern.add(Merge(EMPTY, arriving, merge), pattern.after(tails))
        return pattern

    index: dict[Hashable, int] = {}
    patterns: list[Pattern] = []
    steps: dict[int, list[int]] = {}
    pattern_of = []
    for t in range(period):
        key = sig(t)
        if key not in index:
            index[key] = len(patterns)
            patterns.append(expand(t))
        i = index[key]
        steps.setdefault(i, []).append(t)
        pattern_of.append(i)
    for i, p in enumerate(patterns):
        p.steps = tuple(steps[i])
    return Stage(name, period, patterns, tuple(pattern_of), length, "steps" if length is None else "epochs")


def stack_table(bound: Bound) -> dict[str, StackInfo]:
    """The stacks solved by MGRIT, with where their layers lie in the graph's layer list."""
    index = {layer: i for i, layer in enumerate(bound.layers)}
    out = {}
    for st in bound.stacks:
        spec = st.spec
        where = [i for layer, i in index.items() if layer.startswith(st.path + ".")]
        if not where:
            raise ValueError(f"the MGRIT stack `{st.path}` holds no parameterised layer")
        out[st.path] = StackInfo(min(where), max(where), st.steps, st.h, st.kind, st.first_node, st.last_node,
                                 spec.levels, tuple(spec.coarsening), tuple(spec.relax), spec.forward_iters,
                                 spec.backward_iters, spec.forward_tol, spec.backward_tol, spec.warm_start)
    return out


def stack_obstacle(bound: Bound) -> str:
    """Why the brains' integrators cannot run stacked ("" when they can): one SGD-family rule,
    the same for every brain up to its step size, no partitions, and batches of one size (a brain
    with its own batch order and every > 1 is at another place in its epoch than a brain on the
    shared order, so an epoch's short last batch would meet a full one)."""
    from mrc.optim.families import sgd_like

    program = bound.program
    if program.mgrit:
        return "the MGRIT solve runs each brain's stack on its own copy"
    if program.modules is not None:
        return "module-wise brains train each brain's modules on its own copy"
    if program.partitions:
        return "each brain runs its own partition schedule"
    comps = [b.optimizer or program.optimizer for b in program.brains]
    names = {c.name for c in comps}
    if not all(sgd_like(n) for n in names):
        return f"the batched update is SGD-momentum, and the brains use {', '.join(sorted(names))}"
    rest = {rule_of(c) for c in comps}
    if len(rest) > 1:
        return "the brains' integrators differ in more than their step size"
    # on step t a brain reads batch t of the shared order, or batch t // every of its own: brains
    # whose positions in their epochs differ can step together on a short last batch and a full one
    strides = {b.every if b.data == "own" else 1 for b in program.brains}
    data = getattr(bound, "data", None)
    if len(strides) > 1 and data is not None and data.loaders is None and not data.drop_last \
            and data.batch_size > 0 and data.train_size % data.batch_size:
        n, size = data.train_size, data.batch_size
        return (f"brains with their own batch order (`data = own`) and `every` > 1 can step together "
                f"on batches of different sizes ({n} training examples in batches of {size} end each "
                f"epoch with {n % size}); `drop_last = true` lets them run batched")
    return ""
