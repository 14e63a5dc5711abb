"""Bound program → the initial schedule graph (the naive schedule, before any pass).

The builder knows no technique by name: it asks each technique of the registry
(mrc/techniques, in order) through its `Expansion` (mrc/techniques/base.py):

* its *rates*: the period of a replica is the least common multiple of every rate (each
  partition's `every`, module-wise training's multiplier interval), and a step's signature is
  which of those clocks start on it;
* its *stages*: the stages the run is split into and the step expansion each uses (module-wise
  training's regimes); otherwise one stage of the plain step (mrc/techniques/multirate/expand.py);
* its *replicas*: how several replicas of the model share the schedule (brains: each at its own
  rate, merged when they land together), which stretches the period and joins their steps;
  otherwise one replica;
* the ops it adds at the end of each replica's step (`after_step`);
* its *tables*: what it keeps on the graph for passes and lowering.

The steps that share a signature share one step pattern, expanded once, so building costs
O(period) signatures plus O(patterns × ops), never O(period × ops).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from mrc.binding import Bound
from mrc.ir.cadence import cadence_of
from mrc.ir.graph import Pattern, ScheduleGraph, Stage, lcm
from mrc.ir.ops import EMPTY, Batch, Op, Rule, Scope
from mrc.target import Target
from mrc.techniques import techniques
from mrc.techniques.base import Expansion, ReplicaStep, Replication, StagePlan, StepExpander, resolve
from mrc.techniques.multirate.expand import expand_step, partition_lr, partition_table, rule_of


def expansions() -> list[tuple[str, Expansion]]:
    """(technique, its expansion) of every technique that has one, in registry order."""
    return [(t.name, resolve(t.expand)) for t in techniques() if t.expand]


def rates_of(bound: Bound) -> list[int]:
    """Every technique's rates for this bound program, in registry order."""
    return [r for _, e in expansions() if e.rates is not None for r in e.rates(bound)]


def period_of(bound: Bound) -> int:
    """The least common multiple of every technique's rates, stretched by the replicas'."""
    return replication_of(bound).period(lcm(rates_of(bound)))


def rules_of(bound: Bound) -> dict[str, tuple[Rule, float]]:
    """Each partition's integrator rule and learning rate (one replica: the model itself)."""
    out = {}
    for p in bound.partitions:
        comp = p.spec.optimizer or bound.program.optimizer
        out[p.name] = (rule_of(comp), partition_lr(p, comp))
    return out


class OneReplica:
    """The model itself, on the global step: no technique replicates it."""

    def __init__(self, bound: Bound) -> None:
        self.rules = rules_of(bound)

    def period(self, inner: int) -> int:
        return inner

    def signature(self, t: int, step: Callable[[int], Hashable]) -> Hashable:
        return step(t)

    def expand(self, pattern: Pattern, t: int, step: ReplicaStep) -> None:
        step(pattern, EMPTY, t, Batch(), self.rules)


def _only(what: str, found: list[tuple[str, object]]) -> None:
    if len(found) > 1:
        raise ValueError(f"techniques {found[0][0]} and {found[1][0]} both give the schedule its {what}")


def replication_of(bound: Bound) -> Replication:
    """The technique's replication of the model (one technique at most), else one replica."""
    found = [(n, r) for n, e in expansions() if e.replicas is not None for r in (e.replicas(bound),) if r is not None]
    _only("replicas", found)
    return found[0][1] if found else OneReplica(bound)


def stage_plans(bound: Bound) -> tuple[list[StagePlan], int]:
    """The technique's stages and laps (one technique at most), else one stage of the plain step."""
    found = [(n, s) for n, e in expansions() if e.stages is not None for s in (e.stages(bound),) if s is not None]
    _only("stages", found)
    return found[0][1] if found else ([StagePlan("train")], 1)


def build_graph(bound: Bound, target: Target) -> ScheduleGraph:
    """The naive schedule for `target` (the machine it runs on); see the module docstring."""
    program = bound.program
    rates = rates_of(bound)
    replication = replication_of(bound)
    period = replication.period(lcm(rates))
    plans, laps = stage_plans(bound)
    stages = [build_stage(bound, period, plan, rates, replication) for plan in plans]
    graph = ScheduleGraph(stages, partition_table(bound), bound.layers, target,
                          getattr(program.train, "kernels", "auto"), rule_of(program.schedule), laps=laps,
                          cadence=cadence_of(program.train))
    for t in techniques():  # every table of every technique, in registry order (JSON writes them so)
        for ref in t.tables:
            kind = resolve(ref)
            graph.set_table(kind, kind.empty())
    for _, e in expansions():
        if e.tables is not None:
            for kind, value in e.tables(bound).items():
                graph.set_table(kind, value)
    graph.verify()
    return graph


def build_stage(bound: Bound, period: int, plan: StagePlan, rates: list[int], replication: Replication) -> Stage:
    """One stage: each step of the period expanded once per distinct signature (which of the
    techniques' clocks start on it, for each replica)."""
    expander: StepExpander = plan.step or expand_step
    tails = [e.after_step for _, e in expansions() if e.after_step is not None]

    def step_sig(n: int) -> Hashable:
        return tuple(n % r == 0 for r in rates)

    def one(pattern: Pattern, scope: Scope, n: int, batch: Batch, rules: dict[str, tuple[Rule, float]]) -> list[Op]:
        ends = expander(pattern, bound, scope, n, batch, rules)
        for tail in tails:
            ends = tail(pattern, bound, scope, n, ends)
        return ends

    index: dict[Hashable, int] = {}
    patterns: list[Pattern] = []
    steps: dict[int, list[int]] = {}
    pattern_of = []
    for t in range(period):
        key = replication.signature(t, step_sig)
        if key not in index:
            index[key] = len(patterns)
            pattern = Pattern()
            replication.expand(pattern, t, one)
            patterns.append(pattern)
        i = index[key]
        steps.setdefault(i, []).append(t)
        pattern_of.append(i)
    for i, p in enumerate(patterns):
        p.steps = tuple(steps[i])
    return Stage(plan.name, period, patterns, tuple(pattern_of), plan.length,
                 "steps" if plan.length is None else "epochs")
