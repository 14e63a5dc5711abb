"""The checked program: what a spec means, with names resolved and values typed.

`mrc.check` turns the AST into a `Program`; `mrc.binding` then resolves its selectors against a
traced model. Records are frozen; each keeps the span it came from so later stages can still point
at the spec when something goes wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrc.diagnostics import Span


@dataclass(frozen=True, slots=True)
class Component:
    """A built-in or user callable with its checked keyword arguments.

    `name` is the built-in's name or, when `user` is true, the reference `"file.py:factory"` /
    `"package.module:factory"` (or a data file path) exactly as written.
    """

    name: str
    kwargs: Mapping[str, Any]
    span: Span
    user: bool = False
    arg_spans: Mapping[str, Span] = field(default_factory=dict)

    def describe(self) -> str:
        """`name(args)` with the arguments the spec gave (defaults left out), in parameter order."""
        shown = self.arg_spans if self.arg_spans or self.user else self.kwargs
        args = ", ".join(f"{k}={_fmt(self.kwargs[k])}" for k in shown if k in self.kwargs)
        name = f'"{self.name}"' if self.user else self.name
        return f"{name}({args})"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, str):
        return v
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if v is None:
        return "none"
    if isinstance(v, Mapping) and "kind" in v:  # a data transform: patch(size=3, …)
        args = ", ".join(f"{k}={_fmt(x)}" for k, x in v.items() if k != "kind")
        return f"{v['kind']}({args})"
    return str(v)


# --- selectors ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Select:
    """A leaf selector. kind: params (name glob), module (path glob), type (class name),
    partition (the parameters of an earlier partition, by name), weight, bias, all, rest,
    depth (lo, hi over parameterised modules in graph order)."""

    kind: str
    span: Span
    pattern: str = ""
    lo: int | None = None
    hi: int | None = None

    def describe(self) -> str:
        if self.kind == "partition":
            return self.pattern
        if self.kind in ("params", "module", "type"):
            return f'{self.kind}("{self.pattern}")'
        if self.kind == "depth":
            return f"depth({self.lo}, {'end' if self.hi is None else self.hi})"
        return self.kind


@dataclass(frozen=True, slots=True)
class SelectRandom:
    """A random subset of the elements selected by `of`: a fraction, per tensor or global."""

    fraction: float
    per: str
    of: Selector
    span: Span

    def describe(self) -> str:
        return f"random({self.fraction:g}, per={self.per}, of={self.of.describe()})"


@dataclass(frozen=True, slots=True)
class SelectSet:
    """Set algebra on selectors: op is `|` (union), `&` (intersection) or `-` (difference)."""

    op: str
    left: Selector
    right: Selector
    span: Span

    def describe(self) -> str:
        return f"({self.left.describe()} {self.op} {self.right.describe()})"


@dataclass(frozen=True, slots=True)
class SelectSample:
    """A fixed random subset of the elements selected by `of`, drawn once from the run's seed
    and the partition's name (element-level partitions; unlike `random`, never redrawn)."""

    fraction: float
    per: str
    of: Selector
    span: Span

    def describe(self) -> str:
        return f"sample({self.fraction:g}, per={self.per}, of={self.of.describe()})"


Selector = Select | SelectRandom | SelectSample | SelectSet


# --- statements -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Partition:
    """A named set of parameters and how it is integrated.

    every: the partition updates once per `every` steps (its rate);
    lr: an explicit step size (None: every × the base learning rate, the seed's h_S = k·h_F);
    drift: "none" or "linear" (the seed's two multirate algorithms);
    optimizer: its own integrator (None: the spec's optimizer).
    """

    name: str
    selector: Selector
    span: Span
    every: int = 1
    lr: float | None = None
    drift: str = "none"
    optimizer: Component | None = None


@dataclass(frozen=True, slots=True)
class Brain:
    """A copy of the network on its own time-scale: step size every·h (or `lr`), one step per
    `every` steps of the fastest clock. `data`: `shared` (the batch of the global step it steps
    on) or `own` (its own batch order, from a seed of its own)."""

    name: str
    span: Span
    every: int = 1
    lr: float | None = None
    data: str = "shared"
    optimizer: Component | None = None


@dataclass(frozen=True, slots=True)
class Merge:
    """How brains that reach the same time are merged: rule mean | weighted | best | ema, and
    what happens to their optimizer state (momentum keep | reset | average)."""

    rule: str
    span: Span
    weights: tuple[float, ...] = ()
    metric: str = "val_loss"
    decay: float = 0.9
    momentum: str = "keep"


@dataclass(frozen=True, slots=True)
class Modules:
    """Module-wise training (seeds/module-wise-trgl.md): how the network is cut, the auxiliary
    classifier of each module, the transport regularization and the regime.

    split: `equal` | `balanced` (with `count` modules) | `at` (cut before each path of `at`);
    aux: `linear` | `mlp` | `conv` with `aux_args`; transport: `none` (VanGL) | `fixed` |
    `doubled` (τ/2 for the first half of the modules) | `multipliers` (λ = 2τ driven by the
    method of multipliers: λ0, h, every); regime: `parallel` | `sequential` (each module `epochs`
    epochs in turn) | `laps` (`laps` laps of sequential training, `epochs`/`laps` epochs each);
    epochs None: the spec's `train(epochs)`. optimizers: a module's own integrator, by module name
    (`m0`, `m1`, …)."""

    span: Span
    split: str
    count: int = 0
    at: tuple[str, ...] = ()
    at_spans: tuple[Span, ...] = ()
    split_span: Span | None = None
    aux: str = "linear"
    aux_args: Mapping[str, Any] = field(default_factory=dict)
    aux_span: Span | None = None
    transport: str = "none"
    tau: float = 0.1
    lambda0: float = 1.0
    h: float = 0.1
    every: int = 10
    transport_span: Span | None = None
    regime: str = "parallel"
    epochs: int | None = None
    laps: int = 1
    regime_span: Span | None = None
    optimizers: Mapping[str, Component] = field(default_factory=dict)
    optimizer_spans: Mapping[str, Span] = field(default_factory=dict)

    @property
    def modules(self) -> int:
        """K, the number of modules."""
        return len(self.at) + 1 if self.split == "at" else self.count


@dataclass(frozen=True, slots=True)
class Distributed:
    """How a run of several processes shares the work (mrc/techniques/distributed): `mode`
    (data | brains | layers | pipeline), the backend and the collective timeout in seconds; a
    pipeline's micro-batches per batch and its buffers (sync | stale)."""

    mode: str
    span: Span
    mode_span: Span
    backend: str = "auto"
    timeout: float = 300.0
    micro_batches: int = 1
    buffers: str = "sync"
    spans: Mapping[str, Span] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Mgrit:
    """Layer-parallel training of the residual stack at module path `stack` by multigrid in
    time (seeds/layer-parallel-mgrit.md): `levels`, the coarsening factor and relaxation per
    level transition (one value: the same for all), iterations and tolerance of the forward and
    the adjoint solve (tolerance 0: exactly that many iterations), each solve's initial guess
    (the previous step's states, for one-shot training, or others), and the serial buffer layers
    at both ends."""

    stack: str
    span: Span
    stack_span: Span
    levels: int = 0
    """0: automatic (mrc.techniques.mgrit.grid.auto_levels), resolved when the stack's depth is known."""
    coarsening: tuple[int, ...] = (4,)
    relax: tuple[str, ...] = ("FCF",)
    forward_iters: int = 2
    backward_iters: int = 1
    forward_tol: float = 0.0
    backward_tol: float = 0.0
    warm_start: str = "shifted"
    """Each solve's initial guess: previous | shifted | coarse | off (mrc/techniques/mgrit/guess.py)."""
    spans: Mapping[str, Span] = field(default_factory=dict)
    on_divergence: str = "warn"
    """What a diverging solve does: warn, more_iterations or serial (mrc/techniques/mgrit/check.py)."""
    check_every: int = 0
    """Every this many steps the solves run twice their iterations to measure the convergence
    factor (0: never)."""
    buffer: int = 0
    """The layers at each end of the stack propagated serially around the MGRIT solve of the middle."""


@dataclass(frozen=True, slots=True)
class SweepSpace:
    """One searched setting: `key` (a `--set` key) and its space — `kind` choice (the values'
    source texts, `choices`; a plain list is a choice, and a grid's axis), uniform, loguniform
    (floats in [lo, hi]) or int (lo … hi by `step`)."""

    key: str
    kind: str
    span: Span
    choices: tuple[str, ...] = ()
    lo: float = 0.0
    hi: float = 0.0
    step: int = 1


@dataclass(frozen=True, slots=True)
class Sweep:
    """A hyper-parameter search over `spaces`: `method` grid | random | bayes (optuna's
    GridSampler, RandomSampler, TPESampler), `trials` (None: the whole grid, or `mrc sweep
    --trials`), `seed`, the `metric` to optimise in `direction`, and `pruning` none | median |
    hyperband with its arguments. `sites`: where the spec writes each key's value (for best.mrs)."""

    method: str
    span: Span
    spaces: tuple[SweepSpace, ...]
    trials: int | None = None
    seed: int = 0
    metric: str = "val_acc"
    direction: str = "maximize"
    pruning: str = "none"
    pruning_args: Mapping[str, Any] = field(default_factory=dict)
    sites: Mapping[str, tuple[str, Span]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TrainSettings:
    """The `train(…)` settings. kernels: how update groups and MGRIT solves run — `auto`
    (Triton where it runs, else torch), `torch`, `triton` or `torch.optim`; threads: torch
    intra-op threads (0: chosen for the model's size); precision: `32` (float32 throughout),
    `bf16` (forwards under bfloat16 autocast) or `16-mixed` (float16 autocast with a gradient
    scaler, CUDA only) — parameters and optimizer state stay float32."""

    epochs: int | None = None
    steps: int | None = None
    seed: int = 0
    eval_every: int = 0
    log_every: int = 10
    label_smoothing: float = 0.0
    device: str = "auto"
    dtype: str = "float32"
    checkpoint_every: int = 0
    grad_clip: float = 0.0
    kernels: str = "auto"
    threads: int = 0
    eval_batch: int = 0
    precision: str = "32"
    span: Span | None = None


@dataclass(frozen=True, slots=True)
class EvalSet:
    """`eval NAME = SOURCE`: a named set evaluated beside the validation split at every
    evaluation. source: a built-in (`clean`, `patch_only`, see `mrc.data.EVAL_SOURCES`) or, when
    `user` is true, a data file or `"file.py:factory"` called with `kwargs`."""

    name: str
    source: str
    span: Span
    source_span: Span
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    user: bool = False


EVAL_METRICS = ("loss", "acc")
"""What is measured on every evaluation set: `NAME.loss` and `NAME.acc`."""


@dataclass(frozen=True, slots=True)
class LossSpec:
    """The `loss` statement: a built-in of `mrc.losses.LOSSES` with every setting (defaults
    filled) or, when `user` is true, the reference `"file.py:fn"` / `"pkg.mod:fn"` as written
    with the keyword arguments it is called with; `task` is what it implies of the targets
    (classification, regression, multilabel). Without a statement: cross-entropy with
    `train(label_smoothing)`."""

    name: str = "cross_entropy"
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    task: str = "classification"
    user: bool = False
    span: Span | None = None


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """`metric NAME = "file.py:fn" { mode = min, ARG = … }`: a user metric fn(output, target,
    **kwargs) → a number (the batch's mean over its examples), reported as `val_NAME` and
    `SET.NAME`; `mode` says whether larger (`max`) or smaller (`min`) is better. `where`: the
    folder a file reference is taken from."""

    name: str
    ref: str
    span: Span
    where: str = ""
    mode: str = "max"
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EarlyStopping:
    """metric: `val_loss`, `val_acc`, `val_NAME` of a user metric, or `SET.loss` / `SET.acc` /
    `SET.NAME` of an evaluation set; `mode`: `min` for losses, `max` for accuracies, a user
    metric's own (see `mrc.losses.metric_mode`)."""

    metric: str
    patience: int
    min_delta: float
    restore_best: bool
    span: Span
    mode: str = "min"


@dataclass(frozen=True, slots=True)
class Init:
    """Initial weights loaded from a state_dict file (e.g. a pretraining run's final.pt)."""

    path: Path
    exclude: tuple[str, ...]
    strict: bool
    span: Span
    written: str = ""
    """The path as the spec wrote it (for messages)."""


@dataclass(frozen=True, slots=True)
class Program:
    """A checked spec."""

    file: str
    base_dir: Path
    model: Component
    data: Component
    optimizer: Component
    schedule: Component
    train: TrainSettings
    partitions: tuple[Partition, ...] = ()
    early_stopping: EarlyStopping | None = None
    init: Init | None = None
    evals: tuple[EvalSet, ...] = ()
    lets: Mapping[str, Any] = field(default_factory=dict)
    brains: tuple[Brain, ...] = ()
    merge: Merge | None = None
    modules: Modules | None = None
    mgrit: tuple[Mgrit, ...] = ()
    sweep: Sweep | None = None
    distributed: Distributed | None = None
    loss: LossSpec = field(default_factory=LossSpec)
    metrics: tuple[MetricSpec, ...] = ()
    first_fast_gradient: str = "shared"
    """Multirate gradient point: `shared` (one backward per step) or `after_slow` (the seed's
    literal loop: fast gradients taken after the slow partitions moved)."""
    parts: Mapping[str, Any] = field(default_factory=dict)
    """What the statements of techniques this class has no field for (plugins, mrc/techniques)
    checked, by technique name (`Checker.parts`)."""

    @property
    def name(self) -> str:
        return Path(self.file).stem
