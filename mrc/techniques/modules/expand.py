"""Module-wise training in the schedule graph: the regimes as stages, a step as K local problems.

One step of a replica, for the modules it trains (the `training` set of its stage): module k's
forward reads the detached output of module k−1 (the batch, for m0) and tracks module k's
partitions; its classifier (`aux_head`, or the model's own head in the last segment) gives the
logits of its `local_loss`; its backward differentiates its own partitions only, and runs before
module k+1's forward (an order edge: module k's activations are freed first); its partitions
update at their own rates (multirate inside a module: `every`, drift). A module before the stage's
first trained one runs without autograd and in eval mode (sequential regimes: frozen modules,
whose batch-norm statistics stay as trained); modules after the
last trained one do not run at all.

Regimes (seeds/module-wise-trgl.md): `parallel` is one stage training every module; `sequential`
is K stages, stage k training module k for `epochs` epochs; `laps` is those K stages with
epochs/laps epochs each, run `laps` times (`ScheduleGraph.laps`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any

from mrc.binding import Bound
from mrc.ir.graph import Pattern
from mrc.ir.ops import Backward, Batch, Forward, Op, Rule, Scope, Update, Value
from mrc.ir.tables import TableKind
from mrc.losses import op_fields
from mrc.techniques.base import Expansion, StagePlan
from mrc.techniques.modules.bind import BoundModules
from mrc.techniques.modules.ops import AuxHead, LocalLoss
from mrc.techniques.modules.tables import MODULES
from mrc.techniques.multirate.bind import BoundPartition
from mrc.techniques.multirate.expand import drifts, updating
from mrc.techniques.multirate.ops import Drift


def modules_of(bound: Bound) -> BoundModules:
    """The bound modules (`Bound.parts["modules"]`, mrc/techniques/modules/bind.py)."""
    return bound.parts["modules"]


def stage_plans(bound: Bound) -> tuple[list[StagePlan], int] | None:
    """The stages of the regime, each with the modules it trains, and how many laps they run
    (None without module-wise training)."""
    mods = bound.parts.get("modules")
    if mods is None:
        return None
    spec = mods.spec
    k = len(mods.names)
    if spec.regime == "parallel":
        return [StagePlan("train", None, partial(expand_modules_step, training=frozenset(range(k))))], 1
    epochs = spec.epochs or bound.program.train.epochs or 1
    laps = spec.laps if spec.regime == "laps" else 1
    return [StagePlan(n, epochs // laps, partial(expand_modules_step, training=frozenset({i})))
            for i, n in enumerate(mods.names)], laps


def multiplier_every(bound: Bound) -> int:
    """The multiplier update's interval (1 when the transport is not driven by multipliers)."""
    mods = bound.parts.get("modules")
    return mods.spec.every if mods is not None and mods.spec.transport == "multipliers" else 1


def rates(bound: Bound) -> tuple[int, ...]:
    """The multiplier update's clock (none without module-wise training)."""
    return (multiplier_every(bound),) if "modules" in bound.parts else ()


def tables(bound: Bound) -> Mapping[TableKind[Any], Any]:
    """The modules' table (none without module-wise training)."""
    mods = bound.parts.get("modules")
    return {MODULES: dict(mods.infos)} if mods is not None else {}


def module_parts(bound: Bound) -> dict[str, list[BoundPartition]]:
    """Each module's partitions (`NAME@mk`: the module that owns its parameters), in partition
    order."""
    mods = modules_of(bound)
    out: dict[str, list[BoundPartition]] = {n: [] for n in mods.names}
    for p in bound.partitions:
        out[mods.owner[p.params[0]]].append(p)
    return out


def _layer_index(bound: Bound) -> dict[str, int]:
    index = modules_of(bound).layer_index
    if not index:
        index.update({layer: j for j, layer in enumerate(bound.layers)})
    return index


def layer_span(bound: Bound, i: int) -> tuple[int, int | None]:
    """Module i's [start, stop) in the graph's layer list (its first parameterised layer; stop
    None for the last module)."""
    mods = modules_of(bound)
    index = _layer_index(bound)

    def first(m: int) -> int:
        own = [index[layer] for layer in mods.infos[mods.names[m]].layers
               if layer in index and not layer.startswith("aux.")]
        return min(own) if own else 0

    start = 0 if i == 0 else first(i)
    stop = None if i == len(mods.names) - 1 else first(i + 1)
    return start, stop


def expand_modules_step(pattern: Pattern, bound: Bound, scope: Scope, n: int, batch: Batch,
                        rule_for: dict[str, tuple[Rule, float]], training: frozenset[int]) -> list[Op]:
    """Add one module-wise step of replica `scope` (its own step n) to `pattern`; see the module
    docstring. Returns the ops the step ends with."""
    mods = modules_of(bound)
    spec = mods.spec
    program = bound.program
    parts = module_parts(bound)
    k_last = len(mods.names) - 1
    loss_fields = op_fields(program)
    every = multiplier_every(bound)
    batch_op = pattern.add(batch)
    prev: Op = batch_op
    prev_bwd: Op | None = None
    tail: list[Op] = []
    for i in range(max(training) + 1):
        name = mods.names[i]
        ms = replace(scope, module=name, module_index=i)
        own = parts[name]
        trains = i in training
        grad = tuple(p.name for p in own) if trains else ()
        start, stop = layer_span(bound, i)
        ins = [(prev, Value("batch") if i == 0 else Value("detached"))]
        if prev_bwd is not None:
            ins += pattern.after([prev_bwd])
        fwd = pattern.add(Forward(ms, start, stop, grad, frozen=i < min(training)), ins)
        prev = fwd
        if not trains:
            continue
        logits: Op = fwd
        if i < k_last:
            info = mods.infos[name]
            logits = pattern.add(AuxHead(ms, info.head, info.aux), [(fwd, Value("activation"))])
        multipliers = (spec.lambda0, spec.h, float(spec.every)) if spec.transport == "multipliers" else ()
        tau = 0.0 if multipliers else mods.taus[i]
        loss_ins = [(logits, Value("logits")), (batch_op, Value("batch"))]
        if (tau or multipliers) and logits is not fwd:  # one edge per pair: the logits edge
            loss_ins.append((fwd, Value("activation")))  # of the last module brings its taps too
        loss = pattern.add(LocalLoss(ms, tau=tau, multipliers=multipliers,
                                     update_multiplier=bool(multipliers) and n % every == 0, **loss_fields), loss_ins)
        if not grad:
            continue
        bwd = pattern.add(Backward(ms, grad, "autograd", program.train.grad_clip), [(loss, Value("loss"))])
        prev_bwd = bwd
        moved = []
        for p in updating(own, n):
            rule, lr = rule_for[p.name]
            moved.append(pattern.add(Update(ms, p.name, rule, lr, drifts(p), every=p.spec.every),
                                     [(bwd, Value("grads", (p.name,)))]))
        tail += moved
        for p in own:
            if drifts(p):
                tail.append(pattern.add(Drift(ms, p.name, p.spec.every), pattern.after(moved)))
    return tail


EXPANSION = Expansion(rates=rates, stages=stage_plans, tables=tables)
