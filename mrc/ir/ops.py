"""The ops of the schedule graph (IR version 2): immutable records, one class per kind.

An op says what happens at one point of a training step: draw the batch, run a segment of the
model, score it, back-propagate, move a group of partitions, and the techniques' own kinds. Each
op carries a `Scope` (which replica, module-wise stage, multigrid level and iteration it belongs to —
empty where that does not apply) and every field its lowering needs: the loss and its settings,
each update's rule with its hyper-parameters, learning rates and kernel, the drift fraction, the
merge rule. Nothing is left to be re-read from the spec at run time.

Kinds register themselves in `OP_KINDS` with `@op_kind`; each kind brings its own `verify` (the
invariants of one op in its step pattern) and its text form. Ops carry no step number: a step
pattern (mrc.ir.graph.Pattern) holds them once for every step of the period that runs them.
Techniques add their kinds the same way, each in its own `ops.py` (mrc/techniques/NAME/ops.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from mrc.ir.graph import Pattern


class GraphError(Exception):
    """An invariant of the schedule graph does not hold."""


@dataclass(frozen=True, slots=True, order=True)
class Scope:
    """Where an op belongs. replica: the brain(s) it runs for (several for a batched op);
    module: a module-wise stage of the network; level/iteration: an MGRIT hierarchy; rank: the
    process that runs it in a run of several (-1: every process runs it); module_index: the
    module's position in the network (module-wise training: 0 for `m0`; -1 elsewhere)."""

    replica: tuple[str, ...] = ()
    module: str = ""
    level: int = -1
    iteration: int = -1
    rank: int = -1
    module_index: int = -1

    @property
    def empty(self) -> bool:
        return self == EMPTY

    def key(self) -> str:
        """The scope's part of an op id: `@fast`, `@fast+slow`, `@m2`, `@L1.i0` (empty: '')."""
        out = ""
        if self.replica:
            out += "@" + "+".join(self.replica)
        if self.module:
            out += f"@{self.module}"
        if self.level >= 0:
            out += f"@L{self.level}" + (f".i{self.iteration}" if self.iteration >= 0 else "")
        if self.rank >= 0:
            out += f"@r{self.rank}"
        return out

    def text(self) -> str:
        parts = []
        if self.replica:
            parts.append(("brains=" if len(self.replica) > 1 else "brain=") + ",".join(self.replica))
        if self.module:
            parts.append(f"module={self.module}")
        if self.level >= 0:
            parts.append(f"level={self.level}")
        if self.iteration >= 0:
            parts.append(f"iteration={self.iteration}")
        if self.rank >= 0:
            parts.append(f"rank={self.rank}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"replica": list(self.replica), "module": self.module, "level": self.level,
                               "iteration": self.iteration}
        if self.rank >= 0:  # placed ops only (one-process graphs read as before)
            out["rank"] = self.rank
        if self.module_index >= 0:
            out["module_index"] = self.module_index
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scope:
        return cls(tuple(data.get("replica", ())), data.get("module", ""), data.get("level", -1),
                   data.get("iteration", -1), data.get("rank", -1), data.get("module_index", -1))


EMPTY = Scope()


@dataclass(frozen=True, slots=True)
class Value:
    """What flows along an edge: `batch` (inputs and targets), `activation`, `detached` (an
    activation cut from autograd: a module boundary), `logits`, `loss`, `grads` (of the listed
    partitions), `params` (the listed partitions' new values), or `order` (nothing: run after)."""

    kind: str
    partitions: tuple[str, ...] = ()

    KINDS: ClassVar[tuple[str, ...]] = ("batch", "activation", "detached", "logits", "loss", "grads",
                                        "params", "order")

    def text(self) -> str:
        return self.kind + (f"{{{', '.join(self.partitions)}}}" if self.partitions else "")


ORDER = Value("order")


RECORDS: dict[str, type] = {}
"""Value records that ops carry (Rule, a technique's MergeRule, …), by name, for JSON."""


def record(cls: type) -> type:
    """Register a frozen value record (with `to_json`/`from_json`) so op JSON can carry it."""
    RECORDS[cls.__name__] = cls
    return cls


@record
@dataclass(frozen=True, slots=True)
class Rule:
    """An integrator with its hyper-parameters (all of them, defaults filled in), except the
    learning rate, which each update carries per partition. `shown` are the arguments the spec
    wrote (for printing)."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()
    shown: tuple[str, ...] = field(default=(), compare=False)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)

    def text(self) -> str:
        from mrc.program import _fmt

        shown = [(k, v) for k, v in self.args if k in self.shown]
        return f"{self.name}(" + ", ".join(f"{k}={_fmt(v)}" for k, v in shown) + ")"

    def to_json(self) -> dict[str, Any]:
        return {"record": "Rule", "name": self.name, "args": [[k, _jsonable(v)] for k, v in self.args],
                "shown": list(self.shown)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rule:
        return cls(data["name"], tuple((k, _hashable(v)) for k, v in data["args"]), tuple(data["shown"]))


OP_KINDS: dict[str, type[Op]] = {}
O = TypeVar("O", bound="type[Op]")


def op_kind(cls: O) -> O:
    """Register an op class by its `kind`."""
    if cls.kind in OP_KINDS:
        raise ValueError(f"op kind `{cls.kind}` registered twice")
    OP_KINDS[cls.kind] = cls
    return cls


@dataclass(frozen=True, slots=True)
class Op:
    """Base of every op: its scope. Subclasses set `kind` and `rank` (the order of kinds within
    a step, for a stable listing) and implement `text`; `verify` checks the op in its pattern."""

    kind: ClassVar[str] = "op"
    rank: ClassVar[int] = 0
    pure: ClassVar[bool] = False
    """An op that only computes a value for its successors (no side effect): passes may drop it
    when nothing reads its value."""
    scope: Scope = EMPTY

    @property
    def id(self) -> str:
        phase = getattr(self, "phase", 0)
        return f"{self.kind}{self.key()}{self.scope.key()}{f'#{phase}' if phase else ''}"

    def key(self) -> str:
        return ""

    def text(self) -> str:
        raise NotImplementedError

    def partitions_used(self) -> tuple[str, ...]:
        """The partitions this op names (checked against the graph's partition table)."""
        return ()

    def verify(self, pattern: Pattern) -> None:
        """Invariants of this op within its step pattern; raise GraphError."""

    def attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_json() if hasattr(v, "to_json") else _jsonable(v)
        return out

    @classmethod
    def from_attrs(cls, data: dict[str, Any]) -> Op:
        args: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            v = data[f.name]
            if f.name == "scope":
                v = Scope.from_json(v)
            else:
                v = decode(v)
            args[f.name] = v
        return cls(**args)


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if hasattr(v, "to_json"):
        return v.to_json()
    return v


def decode(v: Any) -> Any:
    """A JSON value back to what an op holds: tuples for lists, records by their tag."""
    if isinstance(v, dict) and "record" in v:
        return RECORDS[v["record"]].from_json(v)
    return _hashable(v)


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


def names(items: tuple[str, ...]) -> str:
    return "{" + ", ".join(items) + "}"


def _need(pattern: Pattern, op: Op, test: Callable[[Op], bool], what: str) -> None:
    if not any(test(a) for a in pattern.ancestors(op)):
        raise GraphError(f"{op.id}: {what}")


# ---- the core kinds: plain training (mrc/techniques/core) -----------------------------------


@op_kind
@dataclass(frozen=True, slots=True)
class Batch(Op):
    """The step's batch for a scope. source `shared`: the batch the data order gives this global
    step; `own`: the n-th batch of an order of its own (seeded with `stream`), n being the
    replica's own step count (the global step divided by `stride`)."""

    kind: ClassVar[str] = "batch"
    rank: ClassVar[int] = 0
    source: str = "shared"
    stride: int = 1
    stream: int = 0

    def text(self) -> str:
        if self.source == "shared":
            return "batch"
        return f"batch own(stream={self.stream}, every={self.stride})"


def covering(layers: tuple[str, ...], start: int, stop: int) -> list[str]:
    """The fewest module paths whose layers are exactly layers[start:stop], in order: each layer
    is named by its shortest ancestor all of whose layers lie in the range."""
    def prefixes(name: str) -> list[str]:
        parts = name.split(".")
        return [".".join(parts[:n]) for n in range(1, len(parts) + 1)]

    total = Counter(p for name in layers for p in prefixes(name))  # layers under each path
    inside = Counter(p for name in layers[start:stop] for p in prefixes(name))
    out: list[str] = []
    for name in layers[start:stop]:
        prefix = next(p for p in prefixes(name) if inside[p] == total[p])
        if not out or out[-1] != prefix:
            out.append(prefix)
    return out


@op_kind
@dataclass(frozen=True, slots=True)
class Forward(Op):
    """Run layers [start, stop) of the model (stop None: to the end) on its input edge.
    `grad` lists the partitions autograd tracks through it; empty: it runs without autograd
    (no activations kept). `frozen`: the layers run in eval mode (a trained module that a later
    stage only reads: its batch-norm statistics stay as trained). `autocast`: the dtype the
    layers compute in under torch.autocast (`bf16`, `fp16`; empty: the parameters' own)."""

    kind: ClassVar[str] = "forward"
    rank: ClassVar[int] = 2
    start: int = 0
    stop: int | None = None
    grad: tuple[str, ...] = ()
    phase: int = 0
    frozen: bool = False
    autocast: str = ""

    def key(self) -> str:
        if self.start == 0 and self.stop is None:
            return ""
        return f"[{self.start}:{'' if self.stop is None else self.stop}]"

    @property
    def segment(self) -> str:
        if self.start == 0 and self.stop is None:
            return "model"
        return f"model[{self.start or ''}:{'' if self.stop is None else self.stop}]"

    def named(self, layers: tuple[str, ...]) -> str:
        """`text()` with the layer range named by module path where the graph knows its layers'
        names: `forward model[stem, layer1.0]`, `forward model[layer2, layer3.0]` (the fewest
        whole sub-networks that make up the range; `a … b` when that takes more than three)."""
        stop = len(layers) if self.stop is None else self.stop
        if not layers or (self.start == 0 and self.stop is None) or not 0 <= self.start < stop <= len(layers):
            return self.text()
        groups = covering(layers, self.start, stop)
        span = ", ".join(groups) if len(groups) <= 3 else f"{groups[0]} … {groups[-1]}"
        return self.text().replace(f"forward {self.segment} ", f"forward model[{span}] ", 1)

    def text(self) -> str:
        mode = f"grad {names(self.grad)}" if self.grad else "no_grad"
        cast = f" autocast={self.autocast}" if self.autocast else ""
        return f"forward {self.segment} [{mode}{', frozen' if self.frozen else ''}]{cast}"

    def partitions_used(self) -> tuple[str, ...]:
        return self.grad

    def verify(self, pattern: Pattern) -> None:
        ins = [v.kind for _, v in pattern.inputs(self)]
        if not any(k in ("batch", "activation", "detached") for k in ins):
            raise GraphError(f"{self.id}: a forward needs a batch or an activation as input")


@op_kind
@dataclass(frozen=True, slots=True)
class Loss(Op):
    """Score the logits on its input edge against the batch's targets: the loss `fn` with its
    settings, the mean over the batch; `terms` names further terms added to it (auxiliary and
    transport losses, later).

    `fn` is a built-in of `mrc.losses.LOSSES` (`label_smoothing` and `args` its settings) or,
    when `where` is set, a user function `"file.py:fn"` / `"pkg.mod:fn"` (resolved from the
    folder `where`) called with `args` as keyword arguments. `task` (classification, regression,
    multilabel) is what the loss implies about the targets and which metrics evaluation reports."""

    kind: ClassVar[str] = "loss"
    rank: ClassVar[int] = 3
    fn: str = "cross_entropy"
    label_smoothing: float = 0.0
    terms: tuple[str, ...] = ()
    phase: int = 0
    args: tuple[tuple[str, Any], ...] = ()
    task: str = "classification"
    where: str = ""

    def describe(self) -> str:
        """The loss with the settings that differ from the default: `cross_entropy(label_smoothing=0.1)`,
        `smooth_l1(beta=0.5)`, `"my_loss.py:fn"(scale=2)`."""
        from mrc.program import _fmt

        shown = ([("label_smoothing", self.label_smoothing)] if self.label_smoothing else []) + [
            (k, v) for k, v in self.args if v is not None]
        name = f'"{self.fn}"' if self.where else self.fn
        return name + (f"({', '.join(f'{k}={_fmt(v)}' for k, v in shown)})" if shown else "")

    def text(self) -> str:
        return f"loss {self.describe()}" + (f" + {' + '.join(self.terms)}" if self.terms else "")

    def verify(self, pattern: Pattern) -> None:
        ins = {v.kind for _, v in pattern.inputs(self)}
        if "logits" not in ins or "batch" not in ins:
            raise GraphError(f"{self.id}: a loss needs logits and the batch's targets as inputs")


@op_kind
@dataclass(frozen=True, slots=True)
class Backward(Op):
    """The gradients of the partitions in `wrt` (fresh, not accumulated) by `method`
    (`autograd`; a custom adjoint later), with their norm clipped to `clip` when > 0.
    `scaled`: the loss is multiplied by the run's loss scale before differentiating, and the
    gradients are unscaled (and checked for inf/nan) before clipping and before any update reads
    them; a step whose gradients are not finite skips its updates (float16 mixed precision)."""

    kind: ClassVar[str] = "backward"
    rank: ClassVar[int] = 4
    wrt: tuple[str, ...] = ()
    method: str = "autograd"
    clip: float = 0.0
    phase: int = 0
    scaled: bool = False

    def text(self) -> str:
        clip = f" clip={self.clip:g}" if self.clip else ""
        return f"backward wrt {names(self.wrt)}{clip}{' scaled' if self.scaled else ''}"

    def partitions_used(self) -> tuple[str, ...]:
        return self.wrt

    def verify(self, pattern: Pattern) -> None:
        if not any(v.kind == "loss" for _, v in pattern.inputs(self)):
            raise GraphError(f"{self.id}: a backward needs the loss of its step as input")
        tracked = set().union(*(a.grad for a in pattern.ancestors(self) if isinstance(a, Forward)
                                and a.scope == self.scope))
        missing = [p for p in self.wrt if p not in tracked]
        if missing:
            raise GraphError(f"{self.id}: differentiates {missing} but no forward before it tracks them")


@op_kind
@dataclass(frozen=True, slots=True)
class Update(Op):
    """Move one partition with its integrator `rule` at learning rate `lr` (the base rate the
    schedule multiplies; h_S = k·h for a partition updated every k steps). `held`: the step is
    spread over the partition's interval of `every` steps by drift ops (linear drift)."""

    kind: ClassVar[str] = "update"
    rank: ClassVar[int] = 5
    partition: str = ""
    rule: Rule = Rule("sgd")
    lr: float = 0.0
    held: bool = False
    phase: int = 0
    every: int = 1

    def key(self) -> str:
        return f".{self.partition}"

    def text(self) -> str:
        return f"update {self.partition} {self.rule.text()} lr={self.lr:g}" + (" (held for drift)" if self.held else "")

    def partitions_used(self) -> tuple[str, ...]:
        return (self.partition,)

    def verify(self, pattern: Pattern) -> None:
        _verify_grads(pattern, self, (self.partition,))


@op_kind
@dataclass(frozen=True, slots=True)
class UpdateGroup(Op):
    """Updates of one step that share an integrator, run as one call: `partitions` with their
    learning rates `lrs` (one per replica and partition, replica-major, for an op of several replicas),
    on `kernel` (triton | torch | torch.optim | subset.torch | subset.triton | stacked). `held`:
    partitions whose step is spread by linear drift; `drifting`: partitions of the same rule that
    are not updated here but take their drift step in this same call (fused kernels);
    `intervals`: the drift interval k of each held or drifting partition (a fused kernel moves it
    by 1/k of its step per step)."""

    kind: ClassVar[str] = "update_group"
    rank: ClassVar[int] = 5
    name: str = ""
    partitions: tuple[str, ...] = ()
    rule: Rule = Rule("sgd")
    lrs: tuple[float, ...] = ()
    kernel: str = "torch.optim"
    held: tuple[str, ...] = ()
    drifting: tuple[str, ...] = ()
    phase: int = 0
    intervals: tuple[tuple[str, int], ...] = ()

    def key(self) -> str:
        return f".{self.name}"

    def interval(self, partition: str) -> int:
        """The drift interval k of a held or drifting partition (1: it does not drift here)."""
        return dict(self.intervals).get(partition, 1)

    def text(self) -> str:
        lrs = ", ".join(f"{lr:g}" for lr in self.lrs)
        every = dict(self.intervals)

        def spread(parts: tuple[str, ...]) -> str:
            return names(tuple(f"{n} every {every[n]}" if n in every else n for n in parts))
        held = f" held for drift {spread(self.held)}" if self.held else ""
        drifting = f" + drift {spread(self.drifting)}" if self.drifting else ""
        return (f"update_group {self.name} {names(self.partitions)} {self.rule.text()} lr=[{lrs}] "
                f"kernel={self.kernel}{held}{drifting}")

    def partitions_used(self) -> tuple[str, ...]:
        return (*self.partitions, *self.drifting)

    def verify(self, pattern: Pattern) -> None:
        want = len(self.partitions) * max(1, len(self.scope.replica))
        if len(self.lrs) != want:
            raise GraphError(f"{self.id}: {want} learning rates expected (one per brain and partition), "
                             f"{len(self.lrs)} given")
        if not set(self.held) <= set(self.partitions):
            raise GraphError(f"{self.id}: holds {sorted(set(self.held) - set(self.partitions))} it does not update")
        spread = {*self.held, *self.drifting}
        if {n for n, _ in self.intervals} != spread or any(k < 1 for _, k in self.intervals):
            raise GraphError(f"{self.id}: needs the drift interval (≥ 1) of exactly its held and drifting "
                             f"partitions {sorted(spread)}, has {list(self.intervals)}")
        _verify_grads(pattern, self, self.partitions)


def _verify_grads(pattern: Pattern, op: Op, parts: tuple[str, ...]) -> None:
    have = set().union(*(a.wrt for a in pattern.ancestors(op) if isinstance(a, Backward)
                         and (a.scope == op.scope or not op.scope.replica or
                              set(op.scope.replica) <= set(a.scope.replica))))
    missing = [p for p in parts if p not in have]
    if missing:
        raise GraphError(f"{op.id}: updates {missing} without a backward that computes their gradient")


__all__ = ["EMPTY", "OP_KINDS", "ORDER", "RECORDS", "Backward", "Batch", "Forward", "GraphError", "Loss", "Op",
           "Rule", "Scope", "Update", "UpdateGroup", "Value", "decode", "op_kind", "record"]
