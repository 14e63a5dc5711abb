"""Program → Bound: build the data and the model, trace it with torch.fx, resolve selectors.

Everything that can only be known once user code has run — a missing data file, a factory that
raises, a model that does not trace, a selector that matches no parameter, two partitions that
claim one parameter (or one element) — is reported here as a diagnostic at the spec's span. The
partitions' selectors are resolved by their technique (mrc/techniques/multirate/bind.py). Each
technique of the registry (mrc/techniques) that binds something — module-wise training's cuts and
auxiliary heads, MGRIT's stacks, the placement on processes — does so in its `bind` hook, in the
registry's order, and its result is `Bound.parts[technique]`.

A model that torch.fx cannot trace (data-dependent control flow, say) still binds — once its
forward has run on an example batch — with `graph_module=None`: it trains as it is (plainly, with
brains, with partitions by parameter name), and every statement that needs the trace to cut the
model (a technique's `bind` asks `report_untraced`; `depth(…)` selectors here) is an error at
its own span naming the module that cannot be traced. `layers` is then empty, so no pass cuts
the model either (freeze-prefix leaves the forward whole).
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from mrc.diagnostics import Reporter, Span
from mrc.program import Component, Program
from mrc.techniques import techniques
from mrc.techniques.base import resolve
from mrc.techniques.multirate.bind import BoundPartition, by_ancestor, resolve_partitions

if TYPE_CHECKING:
    from mrc.models import TraceFailure


@dataclass
class Bound:
    """A program together with its data, its model and its traced graph."""

    program: Program
    data: Any  # mrc.data.DataBundle
    model: nn.Module
    graph_module: fx.GraphModule | None
    """The traced model; None for a model torch.fx cannot trace (it then runs as it is)."""
    partitions: tuple[BoundPartition, ...]
    layers: tuple[str, ...]
    """Paths of the modules that own parameters, in the order the traced graph first uses them
    (empty for an untraced model: their order is not known)."""
    parts: dict[str, Any] = field(default_factory=dict)
    """Each technique's part of the binding, by technique name (only the techniques the spec
    uses): module-wise training's `BoundModules`, MGRIT's stacks, the placement of a run of
    several processes (mrc/techniques/*/bind.py)."""
    example: torch.Tensor | None = None
    """The example batch the model was traced on (as the model sees inputs)."""
    world: int = 1
    """The processes the run is bound for."""
    trace_failure: TraceFailure | None = None
    """Why torch.fx could not trace the model (None: traced)."""

    @property
    def runnable(self) -> nn.Module:
        """What a step runs: the traced graph, or the model itself when it was not traced."""
        return self.graph_module if self.graph_module is not None else self.model

    def report_untraced(self, what: str, span: Span | None, r: Reporter) -> None:
        """Report that `what` (a statement that cuts the model) needs the trace this model lacks."""
        failure = self.trace_failure
        if failure is not None:
            r.error(f"{what}, and the model cannot be traced by torch.fx: {failure.message}", span,
                    hint=failure.hint or None)

    def partition_of(self) -> dict[str, str]:
        """Parameter name → the (first) partition that holds it (or some of its elements)."""
        out: dict[str, str] = {}
        for part in self.partitions:
            for p in part.params:
                out.setdefault(p, part.name)
        return out


def build_data(program: Program, r: Reporter) -> Any:
    """The run's `DataBundle` with its evaluation sets, or None (each problem reported at the
    span of the statement, or the `augment` value, it comes from)."""
    from mrc.data import DataError, load_data
    from mrc.data.augment import AugmentError
    from mrc.data.loader import FloatLabels
    from mrc.usercode import UserCodeError

    comp = program.data
    try:
        bundle = load_data(comp.name, dict(comp.kwargs), program.train.seed, program.base_dir,
                           program.loss.task)
    except AugmentError as err:  # at the list item it names, when the checker kept its span
        at = comp.arg_spans.get(f"augment.{getattr(err, 'index', '')}") or comp.arg_spans.get("augment")
        r.error(err.message, at or comp.span)
        return None
    except FloatLabels as err:
        r.error(err.message, comp.span, hint="float targets need a regression loss, e.g. `loss mse` "
                "(or `loss bce_with_logits` for 0/1 labels of several classes)")
        return None
    except (DataError, UserCodeError) as err:
        r.error(getattr(err, "message", str(err)), comp.span)
        return None
    except (ValueError, OSError) as err:
        r.error(f"cannot load data `{comp.name}`: {err}", comp.span)
        return None
    return bundle if build_evals(program, bundle, r) else None


def build_evals(program: Program, bundle: Any, r: Reporter) -> bool:
    """Load every `eval` set into `bundle.evals`; whether all of them loaded."""
    from mrc.data import DataError, load_eval
    from mrc.usercode import UserCodeError

    ok = True
    for ev in program.evals:
        try:
            bundle.evals[ev.name] = load_eval(bundle, ev.source, dict(ev.kwargs),
                                              program.train.seed, program.base_dir)
        except (DataError, UserCodeError) as err:
            r.error(f"evaluation set `{ev.name}`: {getattr(err, 'message', str(err))}", ev.span)
            ok = False
        except (ValueError, OSError) as err:
            r.error(f"cannot load evaluation set `{ev.name}`: {err}", ev.span)
            ok = False
    return ok


def build_model(program: Program, in_shape: tuple[int, ...], classes: int, r: Reporter) -> nn.Module | None:
    """Build the spec's model with the initialisation seed. A user factory is called with the
    spec's arguments, plus `in_shape` and `classes` where its signature names them explicitly —
    never through `**kwargs`, so a torchvision-shaped `resnet18(*, weights=None, **kwargs)` is
    called with `num_classes=10` alone. An exception it raises is told at its file:line."""
    from mrc.models import build_model as build_builtin
    from mrc.usercode import UserCodeError, call_user, load_callable

    comp = program.model
    torch.manual_seed(program.train.seed % 2**64)  # torch takes 64-bit seeds, as mrc.data does
    try:
        if comp.user:
            fn = load_callable(comp.name, program.base_dir)
            kwargs = dict(comp.kwargs)
            params = _accepted(fn)
            for key, value in (("in_shape", in_shape), ("classes", classes)):
                if key in params and key not in kwargs:
                    kwargs[key] = value
            model = call_user(fn, comp.name, **kwargs)
            if not isinstance(model, nn.Module):
                r.error(f"{comp.name} returned {type(model).__name__}, not a torch.nn.Module",
                        comp.span)
                return None
        else:
            model = build_builtin(comp.name, in_shape, classes, dict(comp.kwargs))
    except UserCodeError as err:
        r.error(err.message, comp.span)
        return None
    except (ValueError, TypeError, RuntimeError, OverflowError, MemoryError) as err:
        # e.g. `hidden=[10**20]`: torch cannot allocate the tensors
        r.error(f"cannot build model `{comp.name}`: {err}", comp.span)
        return None
    return model


def _accepted(fn: Any) -> set[str]:
    """The keyword arguments `fn`'s signature names (not `*args` or `**kwargs`)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name for name, p in sig.parameters.items() if p.kind in named}


def load_init(program: Program, model: nn.Module, r: Reporter, training: bool = True) -> None:
    """Load initial weights (e.g. from a pretraining run), skipping excluded or reshaped tensors.

    A file that does not exist yet is an error only when training: `mrc check` and `mrc graph`
    of a fine-tuning spec work before its pretraining run has been made.
    """
    init = program.init
    if init is None:
        return
    if not init.path.is_file():
        report = r.error if training else r.warning
        report(f"cannot read initial weights: no file {init.written}", init.span,
               hint="train the run that writes it first (its --out DIR holds final.pt)")
        return
    from mrc.safeload import WeightsError, read_weights

    try:
        state = read_weights(init.path)  # weights_only: a planted file runs no code
    except WeightsError as err:  # a corrupt or foreign file: one line naming it
        r.error(f"cannot read initial weights from {err}", init.span,
                hint="give a state_dict written by torch.save, e.g. the final.pt of an mrc run")
        return
    if not isinstance(state, dict):
        r.error(f"{init.path} does not hold a state_dict", init.span)
        return
    own = model.state_dict()
    keep = {}
    for key, tensor in state.items():
        if any(fnmatch.fnmatchcase(key, pat) for pat in init.exclude):
            continue
        if key in own and own[key].shape == tensor.shape:
            keep[key] = tensor
        elif init.strict:
            why = "is not in the model" if key not in own else (
                f"has shape {tuple(tensor.shape)}, the model's {tuple(own[key].shape)}")
            r.error(f"initial weight `{key}` {why}", init.span,
                    hint="use `exclude=[…]` or `strict=false` to skip it")
            return
    missing = [k for k in own if k not in keep and not any(
        fnmatch.fnmatchcase(k, pat) for pat in init.exclude)]
    if init.strict and missing:
        r.error(f"initial weights lack `{missing[0]}`" + (f" and {len(missing) - 1} more"
                if len(missing) > 1 else ""), init.span)
        return
    if not keep:
        r.error(f"no tensor of {init.path} fits the model", init.span)
        return
    model.load_state_dict(keep, strict=False)


def trace(program: Program, model: nn.Module, example: torch.Tensor,
          r: Reporter) -> tuple[fx.GraphModule | None, TraceFailure | None]:
    """(the traced model, None); (None, the TraceFailure) for a model torch.fx cannot trace but
    whose forward runs on `example`; (None, None) after reporting a forward that raises."""
    from mrc.models import ForwardError, TraceFailure, check_forward, trace_model
    from mrc.usercode import STOPS, stopped

    try:
        try:
            return trace_model(model, example), None
        except TraceFailure as failure:
            check_forward(model, example)  # it runs as it is: train it so
            return None, failure
    except ForwardError as err:
        r.error(err.message, program.model.span, hint=err.hint or None)
    except STOPS as err:  # the model's own forward must not end mrc with its exit status
        r.error(f"the model's forward {stopped(err)} while it was traced", program.model.span)
    return None, None


def untraced_selectors(program: Program, failure: TraceFailure, r: Reporter) -> None:
    """Report each `depth(…)` selector, for a model torch.fx cannot trace (the message says
    which module could not be traced and why; the hint how to select instead)."""
    why = f"the model cannot be traced by torch.fx: {failure.message}"
    for part in program.partitions:
        for sel in _depth_selectors(part.selector):
            r.error(f"`{sel.describe()}` counts layers in the order the traced graph uses them, "
                    f"and {why}", sel.span,
                    hint='select by name instead: `module("…")`, `params("…")`, `type("…")`')


def _depth_selectors(sel: Any) -> list[Any]:
    from mrc.program import Select, SelectRandom, SelectSample, SelectSet

    if isinstance(sel, SelectSet):
        return _depth_selectors(sel.left) + _depth_selectors(sel.right)
    if isinstance(sel, SelectRandom | SelectSample):
        return _depth_selectors(sel.of)
    return [sel] if isinstance(sel, Select) and sel.kind == "depth" else []


def layer_order(gm: fx.GraphModule, model: nn.Module) -> tuple[str, ...]:
    """Paths of the parameter-owning modules in the order the traced graph first uses them.

    A `call_module` node uses every owner at or below its module, in path order; a `get_attr`
    node the owner of its parameter. Owners are indexed by each of their ancestors once, so the
    walk is linear in nodes plus owners (times path depth), not nodes × owners.
    """
    owners = sorted({name.rpartition(".")[0] for name, _ in model.named_parameters()})
    below = by_ancestor(owners)
    order: dict[str, None] = {}  # insertion-ordered set
    walked: set[str] = set()
    for node in gm.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            target = str(node.target)
            path = target if node.op == "call_module" else target.rpartition(".")[0]
            if path not in walked:  # a second call of a module adds nothing new
                walked.add(path)
                order.update(dict.fromkeys(below.get(path, ())))
    order.update(dict.fromkeys(owners))
    return tuple(order)


def bind(program: Program, r: Reporter, training: bool = True, world: int = 1) -> Bound | None:
    """Build data and model, load initial weights, trace, resolve partitions; with a `world`
    of several processes, place the work on them (mrc/techniques/distributed/bind.py)."""
    data = build_data(program, r)
    if data is None:
        return None
    model = build_model(program, tuple(data.in_shape), int(data.classes), r)
    if model is None:
        return None
    load_init(program, model, r, training)
    dtype = torch.float64 if program.train.dtype == "float64" else torch.float32
    model = model.to(dtype)
    example = data.example(2).to(dtype)  # as the model sees inputs (streamed data: read once)
    gm, failure = trace(program, model, example, r)
    if gm is None:
        if failure is None:
            return None
        untraced_selectors(program, failure, r)
        if r.failed:
            return None
    from mrc.losses import check_binding

    targets = data.example_targets(2)  # streamed data: the examples read when they were loaded
    if not check_binding(program, gm if gm is not None else model, example, targets, int(data.classes), r):
        return None
    bound = Bound(program, data, model, gm, (), layer_order(gm, model) if gm is not None else (),
                  example=example, world=world, trace_failure=failure)
    for t in techniques():
        if t.bind:
            part = resolve(t.bind)(bound, r)
            if r.failed:
                return None
            if part is not None:
                bound.parts[t.name] = part
    if gm is not None and bound.parts:
        bound.layers = layer_order(gm, model)  # a technique's modules (auxiliary heads) come last
    partitions = resolve_partitions(program, model, bound.layers, r)
    for t in techniques():
        if t.split and not r.failed:
            partitions = resolve(t.split)(bound, partitions, r)
    if r.failed:
        return None
    bound.partitions = partitions
    return bound


def span_of(comp: Component | None) -> Span | None:
    return comp.span if comp else None
