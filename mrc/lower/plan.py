"""Schedule graph → Plan: each op kind has one lowering; a step program is the lowerings of a
step pattern's ops in the pattern's canonical (topological) order.

A lowering is registered by op kind (`@lowers("forward")`) and turns one op into a callable
`fn(env)` prepared once: its networks, tensors and integrators are looked up at lowering time, so
a step only runs the callables. Lowering reads nothing but the graph and the bound model's
tensors (and the data, for batches of their own): the loss and its settings, each update's rule
with its hyper-parameters, learning rates and kernel, drift fractions, merge rules and batch
routing all come from the ops. `Plan.step(t, x, y)` runs global step t.

State lives in `Lowering` (the context the lowerings share): the replicas (the model, or the
copies of it a technique trains side by side), the integrators (one per replica and rule, created the
first time an update group of that rule is lowered, over every partition that rule moves
anywhere in the graph), drift buffers and random subsets. The Plan checkpoints all of it. What
a technique's lowerings share (its cut segments, its metrics rows, its solves) is one typed
record per technique, `ctx.state_of(Record)`; the run's seed comes in a `RunRecord`.

Techniques reach the training loop only through the Plan's `Hooks`, which their lowerings fill:
the models an evaluation scores besides the final one, their summary.json entries, the files
written at the end, their part of each metrics record and of the progress line, warnings, and
the syncs that make a rank's copy of the state whole. The runtime (mrc/runtime) names no technique.

Element-level partitions (several partitions holding disjoint elements of one tensor) read
their masks from the binding (`Lowering.masks_of`); a checkpoint records a digest of them, and
loading one whose elements were drawn otherwise is an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

import torch
from torch import nn

from mrc.ir.graph import Pattern, ScheduleGraph
from mrc.ir.ops import Op, UpdateGroup
from mrc.lower import precision
from mrc.techniques.distributed.tables import PLACEMENT


class LoweringError(ValueError):
    """The graph asks for something its lowering cannot do; the message says what (one line:
    `mrc train` shows it without a traceback and exits 2)."""


class Env:
    """What one step's op callables share: the global step, the stage's clock (the step within
    the stage's own run, over its laps: what its patterns and schedule follow), the schedule's
    multiplier, the batch, each op's output value (by op id) and the losses of the step
    (replica, tensor)."""

    __slots__ = ("clock", "examples", "losses", "mult", "t", "values", "weight", "x", "y")

    def __init__(self) -> None:
        self.weight = 1.0
        """This rank's share of the step's reported loss in a run of several processes (a data
        shard's fraction of the batch, say): the run's loss is Σ_ranks weight·loss / Σ weight."""
        self.t = 0
        self.clock = 0
        self.mult = 1.0
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.examples: torch.Tensor | None = None
        """The training examples of the batch (their indices in the training split, a CPU int64
        tensor), set by the loop only where a lowering asks for them (`Hooks.examples`)."""
        self.values: dict[str, Any] = {}
        self.losses: list[tuple[str, torch.Tensor]] = []


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What the lowering takes from the run rather than from the graph, decided once by the
    caller of `lower`: the run's seed (the integrators' noise and random-subset draws hash it)."""

    seed: int = 0


T = TypeVar("T")
StepFn = Callable[[Env], None]
LowerFn = Callable[[Any, Pattern, "Lowering"], StepFn | None]
"""A lowering: the op's callable, or None for an op that runs inside another op's callable (the
phases of an MGRIT solve run inside the forward and backward of their stack)."""
When = Callable[[Any, "Lowering"], bool]
LOWERINGS: dict[str, LowerFn] = {}
VARIANTS: dict[str, list[tuple[When, LowerFn]]] = {}


def lowers(kind: str, when: When | None = None) -> Callable[[LowerFn], LowerFn]:
    """Register the lowering of op kind `kind`; with `when`, a variant a technique adds, used
    for the ops it accepts (e.g. update groups on its kernel, or ops of stacked replicas)."""
    def register(fn: LowerFn) -> LowerFn:
        if when is not None:
            VARIANTS.setdefault(kind, []).append((when, fn))
        elif kind in LOWERINGS:
            raise ValueError(f"op kind `{kind}` has two lowerings")
        else:
            LOWERINGS[kind] = fn
        return fn
    return register


def variants_of(kind: str) -> list[tuple[When, LowerFn]]:
    """The variants of op kind `kind` in the order of the techniques that registered them (the
    registry's, mrc.techniques), ties in registration order: an earlier technique's variant is
    tried first, whatever order their code was imported in."""
    from mrc.techniques import module_rank

    return sorted(VARIANTS.get(kind, ()), key=lambda wf: module_rank(wf[1].__module__))


def lowering_of(op: Op, ctx: Lowering) -> LowerFn:
    """The lowering of one op: the first variant that accepts it (`variants_of`), else its kind's."""
    for when, fn in variants_of(op.kind):
        if when(op, ctx):
            return fn
    fn = LOWERINGS.get(op.kind)
    if fn is None:
        raise LoweringError(f"op kind `{op.kind}` has no lowering (is its technique loaded? "
                            "see mrc.techniques.load_all)")
    return fn


Scalars = Callable[[Any, dict[str, Any]], dict[str, Any]]
"""A technique's TensorBoard scalars of its entry in a metrics record: (entry, whole record) →
{tag: value}; values that are not numbers are left out (mrc/runtime/tensorboard.py)."""


@dataclass(frozen=True)
class Finished:
    """A finished run, as a technique's summary scores it: the final model, the evaluation
    batch size, the run's scoring (mrc.losses.Scoring) and its data (mrc.data.stream.Feed)."""

    model: nn.Module
    batch: int
    scoring: Any
    feed: Any

    def splits(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
        """The training split (as evaluation sees it) and the validation split, in memory;
        None where the data is streamed."""
        feed = self.feed
        if not feed.in_memory:
            return None
        return (feed.train_eval_x(), feed.train_y), (feed.val_x, feed.val_y)


@dataclass
class Hooks:
    """How a technique's lowerings reach the training loop, which names no technique.

    eval_models: further models each evaluation scores beside the final one, by group:
    `{group: {name: model}}` (each brain); an evaluation record and the summary hold
    `{group: {name: measures}}`. summaries: summary.json entries by key, each scored from the
    `Finished` run of a run that did not diverge (None: no entry). artifacts: files written at
    the end of a run that did not diverge: each gets the final model's state dict, takes out
    what is not the model's own (auxiliary heads), and gives {path in the run directory: state}.
    metrics: providers merged into each metrics record; scalars: each record entry's TensorBoard
    tags, by key. progress: providers of the technique's part of the progress line. warnings:
    raised as ops run (shown, then cleared, at the next log). syncs: what makes this rank's copy
    of the state whole before it is read (evaluation, saving, checkpoints). examples: why a
    lowering reads each step's example indices (`Env.examples`; "": none does), for the loop's
    error where the batches' examples are unknown."""

    eval_models: list[Callable[[], dict[str, dict[str, nn.Module]]]] = field(default_factory=list)
    summaries: dict[str, Callable[[Finished], Any]] = field(default_factory=dict)
    artifacts: list[Callable[[dict[str, torch.Tensor]], dict[str, dict[str, torch.Tensor]]]] = \
        field(default_factory=list)
    metrics: list[Callable[[], dict[str, Any]]] = field(default_factory=list)
    scalars: dict[str, Scalars] = field(default_factory=dict)
    progress: list[Callable[[], str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    syncs: list[Callable[[], None]] = field(default_factory=list)
    examples: str = ""


@dataclass
class Lowering:
    """The context of one lowering: the graph, the bound model and data, and the state the
    ops' lowerings create and share (see the module docstring)."""

    graph: ScheduleGraph
    bound: Any  # mrc.binding.Bound
    total_steps: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    replicas: Any = None  # mrc.lower.replicas.Replicas
    integrators: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    drift: dict[tuple[str, str], list[torch.Tensor]] = field(default_factory=dict)
    subsets: dict[tuple[str, str], Any] = field(default_factory=dict)
    segments: dict[tuple[str, int], tuple[nn.Module, nn.Module]] = field(default_factory=dict)
    owners: dict[tuple[str, str], UpdateGroup] = field(default_factory=dict)
    lrs: dict[str, float] = field(default_factory=dict)
    masks: dict[tuple[str, str], list[torch.Tensor | None]] = field(default_factory=dict)
    run: RunRecord = field(default_factory=RunRecord)
    """The run's record: its seed."""
    techniques: dict[type, Any] = field(default_factory=dict)
    """What each technique's lowerings share and build once, as one typed record per technique
    (`state_of`)."""
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    """Tensors a technique's ops keep across steps (module-wise multipliers): checkpointed."""
    hooks: Hooks = field(default_factory=Hooks)
    """What the techniques' lowerings give the training loop (see `Hooks`)."""
    world: Any = None
    """mrc.runtime.world.World: this process among the run's (set by `lower`)."""
    foreign: dict[str, Any] = field(default_factory=dict)
    """Saved states of the integrators other processes run (a pipeline's stages, replicas on
    other ranks), by key as `Plan.state_dict` writes them, gathered by a technique's sync: a
    checkpoint written by rank 0 holds every rank's."""
    scaler: Any = None
    """mrc.lower.precision.LossScaler: the loss scale of `scaled` backwards (None: none)."""

    def state_of(self, kind: type[T]) -> T:
        """The lowering state of one technique: its record of type `kind` (a dataclass whose
        fields all have defaults), made on first use and shared by its lowerings."""
        got = self.techniques.get(kind)
        if got is None:
            got = self.techniques[kind] = kind()
        return got

    def masks_of(self, replica: str, partition: str) -> list[torch.Tensor | None]:
        """Per tensor of `partition` (as `replicas.params` lists them) the boolean mask of the
        elements it holds, on the tensor's device, or None where it holds the whole tensor."""
        key = (replica, partition)
        cached = self.masks.get(key)
        if cached is None:
            info = self.graph.partitions[partition]
            params = self.replicas.params(self.graph, replica, partition)
            held: dict[str, torch.Tensor] = {}
            if info.partial:
                bp = next((b for b in self.bound.partitions if b.name == partition), None)
                held = bp.mask_of() if bp is not None else {}
                missing = [t for t in info.partial if t not in held]
                if missing:
                    raise LoweringError(f"partition {partition} holds part of `{missing[0]}`, but "
                                        "the binding has no mask for it")
            cached = [held[t].to(p.device) if t in held else None
                      for t, p in zip(info.params, params, strict=True)] if info.partial else [None] * len(params)
            self.masks[key] = cached
        return cached

    def __post_init__(self) -> None:
        for op in self.graph.ops():
            if isinstance(op, UpdateGroup):
                for r in op.scope.replica or ("",):
                    for n in op.partitions:
                        self.owners.setdefault((r, n), op)
                per = len(op.partitions)
                for i, r in enumerate(op.scope.replica or ("",)):
                    for n, lr in zip(op.partitions, op.lrs[i * per:(i + 1) * per], strict=True):
                        self.lrs.setdefault(f"{r}.{n}" if r else n, lr)

    def groups_of(self, replica: str, rule: Any, kernel: str, rank: int = -1) -> list[str]:
        """Every partition that an update group of `rule` on `kernel` moves in `replica` (on
        process `rank`, for updates placed on one: an integrator never spans processes), in the
        partition table's order (the integrator's layout)."""
        names = {n for (r, n), op in self.owners.items() if r == replica and op.rule == rule and op.kernel == kernel
                 and (rank < 0 or op.scope.rank == rank)}
        return [n for n in self.graph.partitions if n in names]

    def lr_of(self, replica: str, partition: str) -> float:
        return self.lrs[f"{replica}.{partition}" if replica else partition]


@dataclass
class StepProgram:
    """The callables of one step pattern, with the ops they came from (for traces)."""

    fns: tuple[StepFn, ...]
    ops: tuple[Op, ...]


@dataclass
class Segment:
    """A stretch of global steps [start, stop) that runs one stage: `clock0` is the stage's
    clock at `start` (laps continue a stage's clock where its previous lap left it)."""

    start: int
    stop: int
    stage: int
    clock0: int
    schedule: Callable[[int], float]


def stage_steps(graph: ScheduleGraph, steps_per_epoch: int) -> list[int] | None:
    """Each stage's length in steps, or None when the schedule is one stage as long as the run."""
    if all(s.length is None for s in graph.stages):
        return None
    return [(s.length or 0) * (steps_per_epoch if s.unit == "epochs" else 1) for s in graph.stages]


def placed_world(graph: ScheduleGraph) -> int:
    """The number of processes the schedule is compiled for (1: one)."""
    return graph.target.world


def staged_total(graph: ScheduleGraph, steps_per_epoch: int) -> int | None:
    """The run's length in steps that the stages fix (None: the run's own length)."""
    lengths = stage_steps(graph, steps_per_epoch)
    return None if lengths is None else sum(lengths) * graph.laps


class Plan:
    """The executable form of a schedule graph: `step(t, x, y)` runs global step t."""

    def __init__(self, graph: ScheduleGraph, ctx: Lowering, programs: list[list[StepProgram]],
                 segments: list[Segment]) -> None:
        self.graph = graph
        self.ctx = ctx
        self.hooks = ctx.hooks
        self.programs_of = programs
        self.segments = segments
        self.env = Env()
        self.trace: TextIO | None = None
        self.steps_run = 0
        """Steps this Plan has run (a sync that finds no step since the last one skips)."""
        self._loss = ctx.replicas.step_loss
        self._rates = [[{**ctx.lrs, **_pattern_rates(p)} for p in stage.patterns] for stage in graph.stages]
        self._eval_cast = precision.training_autocast(graph)
        self._locate(0)

    def _locate(self, t: int) -> None:
        """Point the step's shortcuts at the segment (stage) that runs global step t."""
        import bisect

        i = max(0, bisect.bisect_right([s.start for s in self.segments], t) - 1)
        seg = self.segments[i]
        stage = self.graph.stages[seg.stage]
        self._seg = seg
        self._lo, self._hi = seg.start, seg.stop
        self.stage = seg.stage
        self.period = stage.period
        self.pattern_of = stage.pattern_of
        self.programs = self.programs_of[seg.stage]
        self.schedule = seg.schedule
        self._clock = seg.clock0 - seg.start

    def clock(self, t: int) -> int:
        """The stage clock of global step t."""
        if not self._lo <= t < self._hi:
            self._locate(t)
        return t + self._clock

    @property
    def module(self) -> nn.Module:
        return self.ctx.replicas.module

    def step(self, t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Run global step `t` on a batch; return its loss (the replicas' `step_loss`: the
        first gradient point's, or the mean over the copies of the model that stepped)."""
        env = self.env
        if not self._lo <= t < self._hi:
            self._locate(t)
        clock = t + self._clock
        env.t, env.clock, env.x, env.y = t, clock, x, y
        env.weight = 1.0
        env.mult = self.schedule(clock)
        env.losses.clear()
        program = self.programs[self.pattern_of[clock % self.period]]
        if self.trace is None:
            for fn in program.fns:
                fn(env)
        else:
            for fn, op in zip(program.fns, program.ops, strict=True):
                self.trace.write(f"{t} {op.id} {op.kind} {op.scope.text() or '-'}\n")
                fn(env)
        env.values.clear()
        self.steps_run += 1
        return self._loss(env)

    def learning_rates(self, t: int) -> dict[str, float]:
        """Each partition's (each replica's partition's) learning rate at step t, as it runs: the
        rate of its update on that step (or on its last step with one) times the schedule."""
        clock = self.clock(t)
        mult = self.schedule(clock)
        rates = self._rates[self.stage][self.pattern_of[clock % self.period]]
        return {name: lr * mult for name, lr in rates.items()}

    # ---- the techniques' hooks (see `Hooks`) ---------------------------------------------

    def technique_progress(self) -> str:
        """The techniques' part of the progress line (MGRIT residuals, say)."""
        return "  ".join(p() for p in self.hooks.progress if p())

    def drain_warnings(self) -> list[str]:
        """The warnings raised since the last call (the first three, and how many more)."""
        out = list(self.hooks.warnings)
        self.hooks.warnings.clear()
        if len(out) > 3:
            out = [*out[:3], f"… and {len(out) - 3} more like these since the last log"]
        return out

    def technique_metrics(self) -> dict[str, Any]:
        """The techniques' entries of a metrics record (module-wise: each module's loss,
        transport, τ/λ; each brain's loss)."""
        out: dict[str, Any] = {}
        for provider in self.hooks.metrics:
            out.update(provider())
        return out

    def eval_models(self) -> dict[str, dict[str, nn.Module]]:
        """The models an evaluation scores besides the final one, by group (see `Hooks`)."""
        out: dict[str, dict[str, nn.Module]] = {}
        for provider in self.hooks.eval_models:
            out.update(provider())
        return out

    def summaries(self, finished: Finished) -> dict[str, Any]:
        """The techniques' summary.json entries of a run that did not diverge."""
        out = {}
        for key, summarize in self.hooks.summaries.items():
            entry = summarize(finished)
            if entry is not None:
                out[key] = entry
        return out

    def artifacts(self, state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """The techniques' files (path in the run directory → state) of a run that did not
        diverge; each takes out of `state` (the final model's) what is not the model's own."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for write in self.hooks.artifacts:
            out.update(write(state))
        return out

    def processes(self) -> dict[str, Any] | None:
        """How a run of several processes shares the work, for its summary: the world's size,
        the placement's mode and the backend (None in one process)."""
        placed, world = self.graph.table(PLACEMENT), self.ctx.world
        if not world.active or placed is None:
            return None
        return {"size": world.size, "mode": placed.mode, "backend": world.backend}

    # ---- the runtime's view of the state -----------------------------------------------

    def evaluation_precision(self) -> contextlib.AbstractContextManager[Any]:
        """The context evaluation runs the models in: the autocast the graph's forwards train in
        (read from the ops, as the precision pass wrote it), nothing where they have none."""
        return precision.evaluation_context(self._eval_cast, self.ctx.device)

    def full_weights(self) -> contextlib.AbstractContextManager[None]:
        """A context in which held-out random subsets are restored (evaluation, saving)."""
        stack = contextlib.ExitStack()
        for subset in self.ctx.subsets.values():
            stack.enter_context(subset.restored())
        return stack

    def synchronize(self) -> None:
        """Make this rank's copy of the state whole (before evaluating or saving it)."""
        for sync in self.hooks.syncs:
            sync()

    def finish(self) -> None:
        """End of training: random subsets held at zero get their values back for good."""
        for subset in self.ctx.subsets.values():
            subset.finish()

    def final_model(self) -> nn.Module:
        """The model the run produces: the model itself, or one made from its copies (merged)."""
        return self.ctx.replicas.final_model()

    def checkpointed_models(self) -> list[nn.Module]:
        """The models whose parameters a checkpoint of this plan holds."""
        return self.ctx.replicas.checkpointed()

    def attach(self, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
               val_y: torch.Tensor) -> None:
        """The data on the training device (own-order batches and `best` merges read it)."""
        self.ctx.replicas.attach(train_x, train_y, val_x, val_y)

    def state_dict(self) -> dict[str, Any]:
        ctx = self.ctx
        return {"integrators": {**ctx.foreign,
                                **{repr(k): v.state_dict() for k, v in ctx.integrators.items()}},
                "drift": {repr(k): [d.clone() for d in ds] for k, ds in ctx.drift.items()},
                "subsets": {repr(k): s.state_dict() for k, s in ctx.subsets.items()},
                "replicas": ctx.replicas.state_dict(),
                "state": {k: v.detach().clone() for k, v in ctx.state.items()},
                "element_masks": self.mask_digest(),
                **({"scaler": ctx.scaler.state_dict()} if ctx.scaler is not None else {})}

    def mask_digest(self) -> str:
        """A digest of every element-level partition's masks ("" when there are none): a
        resumed run re-draws them from the seed and checks they are the checkpoint's."""
        import hashlib

        h = hashlib.sha256()
        some = False
        for part in getattr(self.ctx.bound, "partitions", ()):
            for name, mask in part.mask_of().items():
                some = True
                h.update(f"{part.name}:{name}:{tuple(mask.shape)}:".encode())
                h.update(mask.cpu().numpy().tobytes())
        return h.hexdigest() if some else ""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ctx = self.ctx
        saved = state.get("element_masks", "")
        if saved != self.mask_digest():
            raise ValueError("the checkpoint's element-level partitions hold other elements than "
                             "this run draws (a different seed or partition names?)")
        ctx.replicas.load_state_dict(state["replicas"])
        for k, v in ctx.integrators.items():
            v.load_state_dict(state["integrators"][repr(k)])
        with torch.no_grad():
            for k, ds in ctx.drift.items():
                for d, saved in zip(ds, state["drift"][repr(k)], strict=True):
                    d.copy_(saved)
        for k, s in ctx.subsets.items():
            s.load_state_dict(state["subsets"][repr(k)])
        if ctx.scaler is not None and "scaler" in state:
            ctx.scaler.load_state_dict(state["scaler"])
        with torch.no_grad():
            for k, v in state.get("state", {}).items():
                if k in ctx.state and ctx.state[k].shape == v.shape:
                    ctx.state[k].copy_(v)  # lowerings may hold this very tensor
                else:  # state an op creates as it runs (an MGRIT solve's warm-start states)
                    ctx.state[k] = v.to(ctx.device).clone()

    def integrators(self, replica: str) -> Iterator[Any]:
        """The integrators of one replica (for a technique that resets or averages their state)."""
        for key, integ in self.ctx.integrators.items():
            if key[0] == replica:
                yield integ


def cpu_copy(value: Any) -> Any:
    """`value` with every tensor in it copied to the CPU (to hand it to another process)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(cpu_copy(v) for v in value)
    return value


def _pattern_rates(pattern: Pattern) -> dict[str, float]:
    """The learning rates the update groups of one step pattern run at, by (brain.)partition."""
    out = {}
    for op in pattern.of_kind(UpdateGroup):
        per = len(op.partitions)
        for i, r in enumerate(op.scope.replica or ("",)):
            for n, lr in zip(op.partitions, op.lrs[i * per:(i + 1) * per], strict=True):
                out[f"{r}.{n}" if r else n] = lr
    return out


def run_record(bound: Any) -> RunRecord:
    """The record of a run bound from a program: the seed its model and data were made with."""
    program = getattr(bound, "program", None)
    return RunRecord(program.train.seed if program is not None else 0)


def lower(graph: ScheduleGraph, bound: Any, total_steps: int, device: torch.device | str = "cpu",
          world: Any = None, run: RunRecord | None = None) -> Plan:
    """Build the Plan of `graph` for a run of `total_steps` steps on `device`, with the
    lowerings registered so far (`mrc.lower.lower` registers every technique's first).

    run: the run's record (default: the seed the model and data were bound with).

    world: this process among the run's (default: the one it joined, `mrc.runtime.world`). An
    op placed on another rank (scope rank ≥ 0, not this one) is not lowered here: its rank
    runs it."""
    from mrc.lower.replicas import Replicas
    from mrc.optim import build_schedule
    from mrc.runtime import world as worlds

    ctx = Lowering(graph, bound, total_steps, torch.device(device))
    ctx.run = run if run is not None else run_record(bound)
    ctx.world = world if world is not None else worlds.current()
    if graph.target.world != ctx.world.size:
        raise LoweringError(f"the schedule is placed on {graph.target.world} processes, but this run has "
                            f"{ctx.world.size}")
    ctx.replicas = Replicas.build(graph, bound, ctx.device)
    ctx.replicas.prepare(ctx)
    programs = []
    for stage in graph.stages:
        per_stage = []
        for pattern in stage.patterns:
            fns, ops = [], []
            for op in pattern.ops():
                if op.scope.rank >= 0 and op.scope.rank != ctx.world.rank:
                    continue  # another process runs it
                fn = lowering_of(op, ctx)(op, pattern, ctx)
                if fn is None:  # an op that another op's callable runs (an MGRIT solve's phases)
                    continue
                fns.append(precision.wrap(fn, op, pattern, ctx))
                ops.append(op)
            fns = precision.guard(fns, ops, pattern, ctx)
            per_stage.append(StepProgram(tuple(fns), tuple(ops)))
        programs.append(per_stage)
    sched = graph.lr_schedule

    def schedule_over(steps: int) -> Callable[[int], float]:
        return build_schedule(sched.name, max(1, steps), sched.kwargs) if sched else (lambda t: 1.0)

    lengths = stage_steps(graph, bound.data.steps_per_epoch()) if bound is not None else None
    if lengths is None:
        if len(graph.stages) != 1:
            raise LoweringError(f"a schedule of {len(graph.stages)} stages needs each stage's length")
        segments = [Segment(0, 2**62, 0, 0, schedule_over(total_steps))]
    else:
        # each stage's schedule spans its own run (all its laps): a module trained in turn gets
        # the whole learning-rate schedule, not a slice of the run's
        schedules = [schedule_over(n * graph.laps) for n in lengths]
        segments, t = [], 0
        for lap in range(graph.laps):
            for i, n in enumerate(lengths):
                segments.append(Segment(t, t + n, i, lap * n, schedules[i]))
                t += n
        segments[-1].stop = 2**62
    plan = Plan(graph, ctx, programs, segments)
    ctx.replicas.plan = plan
    return plan
