"""Bound program → the initial schedule graph of one period (the naive schedule).

Every step runs the whole model with autograd and back-propagates to every partition; then the
partitions whose rate divides the step update (a partition with `every = k` moves on steps
0, k, 2k, … of the period, as in the seed's algorithms, where the slow step comes first), partitions
with linear drift move by 1/k of their last step on each of the k steps of their interval, and
random subsets are resampled at the start of their interval. Passes then prune and group this.

With `multirate(first_fast_gradient = after_slow)` (the seed's literal no-drift loop), a step on
which slow partitions (every > 1, no drift) update runs in two phases: the slow partitions are
differentiated and updated first, then the model runs again for the other partitions' gradient at
the moved point.
"""

from __future__ import annotations

from mrc.binding import Bound, BoundPartition
from mrc.graph import Backward, Drift, Forward, Loss, Merge, Op, Resample, ScheduleGraph, Update, lcm


def period_of(bound: Bound) -> int:
    """The least common multiple of every partition's (or brain's) rate."""
    if bound.program.brains:
        return lcm(b.every for b in bound.program.brains)
    return lcm(p.spec.every for p in bound.partitions)


def build_brains_graph(bound: Bound) -> ScheduleGraph:
    """Brains: brain i (rate k_i) steps on global steps t with t % k_i == 0, landing at time
    t + k_i; after global step t, the brains whose time is t + 1 (k_i divides t + 1) have reached
    the same time, and two or more of them are merged."""
    program = bound.program
    brains = program.brains
    period = period_of(bound)
    graph = ScheduleGraph(period)
    numel = sum(p.numel for p in bound.partitions)
    for b in brains:
        comp = b.optimizer or program.optimizer
        graph.partitions[b.name] = {"tensors": sum(len(p.params) for p in bound.partitions),
                                    "numel": numel, "every": b.every, "rule": comp.describe(),
                                    "data": b.data}
    merge = program.merge
    smoothing = program.train.label_smoothing
    for step in range(period):
        ups: list[Op] = []
        for b in brains:
            if step % b.every:
                continue
            comp = b.optimizer or program.optimizer
            fwd = graph.add(Forward(step, b.name, (b.name,)))
            loss = graph.add(Loss(step, "cross_entropy", smoothing, of=b.name), [fwd])
            bwd = graph.add(Backward(step, (b.name,), of=b.name), [loss])
            ups.append(graph.add(Update(step, b.name, comp.describe(), float(b.every), b.lr), [bwd]))
        landing = tuple(b.name for b in brains if (step + 1) % b.every == 0)
        if merge is not None and len(landing) >= 2:
            graph.add(Merge(step, landing, merge.rule), ups)
    graph.meta["layers"] = list(bound.layers)
    graph.meta["params"] = {b.name: [n for p in bound.partitions for n in p.params] for b in brains}
    graph.meta["brains"] = True
    graph.meta["device"] = device_of(bound)
    reason = batch_obstacle(bound)
    graph.meta["batchable"] = reason is None
    graph.meta["notes"] = [f"brains run one after another: {reason}" if reason else
                           "brains that step together run as one batched computation"]
    if program.partitions:
        parts = ", ".join(f"{p.name} (every {p.spec.every}{', drift' if p.spec.drift != 'none' else ''})"
                          for p in bound.partitions)
        graph.meta["notes"].append(f"within each brain, on its own steps: partitions {parts}")
    graph.verify()
    return graph


def rule_of(bound: Bound, partition: str) -> str:
    part = next(p for p in bound.partitions if p.name == partition)
    comp = part.spec.optimizer or bound.program.optimizer
    return comp.describe()


def _is_random(part: BoundPartition) -> bool:
    from mrc.program import SelectRandom

    return isinstance(part.spec.selector, SelectRandom)


def _drifts(part: BoundPartition) -> bool:
    """Linear drift over an interval of one step is no drift at all (k = 1 is plain SGD)."""
    return part.spec.drift != "none" and part.spec.every > 1


def batch_obstacle(bound: Bound) -> str | None:
    """Why the brains cannot run batched (None when they can): the model must have a batched
    form (mrc.runtime.batched) and every brain the same SGD-family integrator up to its lr."""
    from mrc.runtime.batched import BrainStack, NotBatchable

    program = bound.program
    if program.partitions:
        return "each brain runs its own partition schedule"
    comps = [b.optimizer or program.optimizer for b in program.brains]
    names = {c.name for c in comps}
    if not names <= {"sgd", "momentum", "nesterov"}:
        return f"the batched update is SGD-momentum, and the brains use {', '.join(sorted(names))}"
    rest = {tuple(sorted((k, str(v)) for k, v in c.kwargs.items() if k != "lr")) for c in comps}
    if len(names) > 1 or len(rest) > 1:
        return "the brains' integrators differ in more than their step size"
    try:
        BrainStack(bound.graph_module, [bound.model.state_dict()])
    except NotBatchable as err:
        return str(err)
    return None


def build_graph(bound: Bound) -> ScheduleGraph:
    """The naive period; see the module docstring."""
    if bound.program.brains:
        return build_brains_graph(bound)
    period = period_of(bound)
    graph = ScheduleGraph(period)
    parts = bound.partitions
    names = tuple(p.name for p in parts)
    for part in parts:
        info = {"tensors": len(part.params), "numel": part.numel, "every": part.spec.every,
                "rule": rule_of(bound, part.name)}
        if _drifts(part):
            info["drift"] = part.spec.drift
        if _is_random(part):
            info["random"] = part.spec.selector.describe()
        graph.partitions[part.name] = info
    smoothing = bound.program.train.label_smoothing
    literal = bound.program.first_fast_gradient == "after_slow"
    for step in range(period):
        # a random-subset partition updates every step: its held-out subset at the start of the
        # interval (slow, step every·h) and the rest of its elements on every step (fast)
        updating = [p for p in parts if step % p.spec.every == 0 or _is_random(p)]
        slow_first = [p for p in updating if p.spec.every > 1 and not _drifts(p)
                      and not _is_random(p)]
        phases = [slow_first, [p for p in updating if p not in slow_first]] \
            if literal and slow_first and len(slow_first) < len(updating) else [updating]
        last: list[Op] = []
        for phase, members in enumerate(phases):
            fwd = graph.add(Forward(step, "model", names, phase), last)
            loss = graph.add(Loss(step, "cross_entropy", smoothing, phase), [fwd])
            bwd = graph.add(Backward(step, names, phase), [loss])
            last = [graph.add(Update(step, p.name, rule_of(bound, p.name),
                                     1.0 if _is_random(p) else float(p.spec.every), p.spec.lr,
                                     _drifts(p), phase), [bwd])
                    for p in members]
        tail = last
        for p in parts:
            if _drifts(p):
                tail = [*tail, graph.add(Drift(step, p.name, 1.0 / p.spec.every), last)]
        for p in parts:
            if _is_random(p) and step % p.spec.every == 0:
                graph.add(Resample(step, p.name), tail)
    graph.meta["layers"] = list(bound.layers)
    graph.meta["params"] = {p.name: list(p.params) for p in parts}
    graph.meta["device"] = device_of(bound)
    graph.verify()
    return graph


def device_of(bound: Bound) -> str:
    """The device the spec trains on: `auto` is CUDA when one is present."""
    import torch

    wanted = bound.program.train.device
    return "cuda" if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()) else "cpu"
