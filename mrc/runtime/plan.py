"""Schedule graph → Plan: per step of the period, a short program prepared once.

Lowering decides everything the runtime would otherwise re-decide per step: which segments run
with autograd (a frozen prefix runs under `torch.no_grad` through a torch.fx split), which
parameters are differentiated, which optimizer each update group calls, which partitions drift
and which random subsets are resampled. The runtime only loops: `plan.step(t, x, y)`.

Optimizer state belongs to partitions, not to steps: each distinct integrator (rule) gets one
torch optimizer with one parameter group per partition, created once. An update group steps its
rule's optimizer; torch's optimizers skip parameters without a gradient, and gradients of
partitions that are differentiated but do not update on a step are cleared first, so a slow
partition's state only moves on its own steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from mrc.binding import Bound
from mrc.graph import Backward, Drift, Forward, Resample, ScheduleGraph, Update, UpdateGroup
from mrc.program import Component, SelectRandom


class NoGrad(nn.Module):
    """Runs the wrapped segment without autograd: nothing before it is differentiated, so no
    activation needs to be kept."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any) -> Any:
        with torch.no_grad():
            return self.inner(*args)


def split_at(gm: fx.GraphModule, root: nn.Module, layers: tuple[str, ...], n: int) -> nn.Module:
    """The traced model cut before the first node that uses a parameter of layers[n:]; the part
    before the cut runs without autograd. Parameters stay those of `root`."""
    from torch.fx.passes.split_module import split_module

    live = set(layers[n:])
    nodes = list(gm.graph.nodes)

    def touches(node: fx.Node) -> bool:
        if node.op == "call_module":
            t = str(node.target)
            return any(layer == t or layer.startswith(t + ".") for layer in live)
        if node.op == "get_attr":
            return str(node.target).rpartition(".")[0] in live
        return False

    cut = next(i for i, node in enumerate(nodes) if touches(node))
    index = {node: i for i, node in enumerate(nodes)}
    split = split_module(gm, root, lambda node: 0 if index[node] < cut else 1)
    split.submod_0 = NoGrad(split.submod_0)
    return split


@dataclass
class GroupRunner:
    """One update group: the rule's optimizer, plus the drift partitions whose step it holds.
    For a fused rule, `updating`/`drifting` are the partitions of its segment table."""

    optimizer: Any
    rule: str
    held: tuple[str, ...] = ()
    fused: bool = False
    updating: tuple[str, ...] = ()
    drifting: tuple[str, ...] = ()


@dataclass
class Phase:
    """Forward, loss, backward and updates at one gradient point of a step."""

    forward: nn.Module | None
    inputs: list[torch.Tensor] | None  # parameters to differentiate; None: all that need it
    clear: list[torch.Tensor]  # differentiated but not updated here: their grads are dropped
    updates: tuple[GroupRunner, ...]
    zero: tuple[tuple[Any, tuple[str, ...]], ...] = ()  # fused rules: gradient spans to zero


@dataclass
class StepProgram:
    phases: tuple[Phase, ...]
    drifts: tuple[tuple[str, float], ...] = ()
    resamples: tuple[str, ...] = ()
    drift_only: tuple[GroupRunner, ...] = ()  # fused rules that only drift on this step


@dataclass
class Plan:
    """The executable form of a schedule graph."""

    period: int
    module: nn.Module
    steps: tuple[StepProgram, ...]
    optimizers: dict[str, Any]
    base_lrs: dict[str, list[float]]
    schedule: Callable[[int], float]
    label_smoothing: float
    grad_clip: float
    params: dict[str, list[torch.Tensor]]
    part_lr: dict[str, float] = field(default_factory=dict)
    drift: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    subsets: dict[str, Any] = field(default_factory=dict)
    fused: dict[str, Any] = field(default_factory=dict)

    def step(self, t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Run global step `t` on a batch; return the loss at the step's first gradient point."""
        sp = self.steps[t % self.period]
        mult = self.schedule(t)
        for name, opt in self.optimizers.items():
            for group, base in zip(opt.param_groups, self.base_lrs[name], strict=True):
                group["lr"] = base * mult
        for rule in self.fused.values():
            rule.mult = mult
        for name in sp.resamples:  # the held-out subset rejoins for this step's gradient
            self.subsets[name].restore()
        first: torch.Tensor | None = None
        for phase in sp.phases:
            if phase.forward is None:
                continue
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            for rule, names in phase.zero:
                rule.zero_spans(names)
            loss = F.cross_entropy(phase.forward(x), y, label_smoothing=self.label_smoothing)
            if phase.inputs is None:
                loss.backward()
            else:
                torch.autograd.backward(loss, inputs=phase.inputs)
            for p in phase.clear:
                p.grad = None
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
            for runner in phase.updates:
                self._update(runner, t)
            if first is None:
                first = loss.detach()
        for runner in sp.drift_only:
            runner.optimizer.step_partitions((), runner.drifting)
        for name, fraction in sp.drifts:
            with torch.no_grad():
                torch._foreach_add_(self.params[name], self.drift[name], alpha=fraction)
        for name in sp.resamples:
            subset = self.subsets[name]
            subset.resample(t // subset.every)
        return first

    def reset_state(self) -> None:
        """Forget every integrator's state (a brain merge with `momentum = reset`)."""
        for opt in self.optimizers.values():
            if hasattr(opt, "state") and isinstance(opt.state, dict):
                opt.state.clear()
        for rule in self.fused.values():
            for buf in (getattr(rule, "buf", None), getattr(rule, "m", None), getattr(rule, "v", None)):
                if buf is not None:
                    buf.zero_()
            if hasattr(rule, "started"):
                rule.started.clear()
            if hasattr(rule, "steps"):
                rule.steps = dict.fromkeys(rule.steps, 0)
        with torch.no_grad():
            for ds in self.drift.values():
                for d in ds:
                    d.zero_()

    def finish(self) -> None:
        """End of training: random subsets held at zero get their values back for good."""
        for subset in self.subsets.values():
            subset.finish()

    def _update(self, runner: GroupRunner, t: int) -> None:
        if runner.fused:
            runner.optimizer.step_partitions(runner.updating, runner.drifting)
            return
        if not runner.held:
            runner.optimizer.step()
            return
        # Linear drift: the integrator computes the partition's whole step now, but the
        # partition moves by 1/k of it on each of the k steps of its interval.
        with torch.no_grad():
            saved = {n: [p.detach().clone() for p in self.params[n]] for n in runner.held}
            runner.optimizer.step()
            for n in runner.held:
                for p, before, delta in zip(self.params[n], saved[n], self.drift[n], strict=True):
                    torch.sub(p, before, out=delta)
                    p.copy_(before)

    def learning_rates(self, t: int) -> dict[str, float]:
        """Each partition's learning rate at step t (for the metrics log)."""
        mult = self.schedule(t)
        return {part: lr * mult for part, lr in self.part_lr.items()}

    def full_weights(self) -> Any:
        """A context in which held-out random subsets are restored (for evaluation and saving)."""
        from contextlib import ExitStack

        stack = ExitStack()
        for subset in self.subsets.values():
            stack.enter_context(subset.restored())
        return stack

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": {n: o.state_dict() for n, o in {**self.optimizers, **self.fused}.items()},
                "drift": {n: [d.clone() for d in ds] for n, ds in self.drift.items()},
                "subsets": {n: s.state_dict() for n, s in self.subsets.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in {**self.optimizers, **self.fused}.items():
            opt.load_state_dict(state["optimizers"][name])
        with torch.no_grad():
            for name, ds in self.drift.items():
                for d, saved in zip(ds, state["drift"][name], strict=True):
                    d.copy_(saved)
        for name, subset in self.subsets.items():
            subset.load_state_dict(state["subsets"][name])


def _base_lr(comp: Component) -> float:
    from mrc.optim import OPTIMIZERS

    if "lr" in comp.kwargs:
        return float(comp.kwargs["lr"])
    entry = OPTIMIZERS.get(comp.name)
    param = entry.param("lr") if entry else None
    return float(param.default) if param is not None and not param.required else 1e-3


def rule_kernels(graph: ScheduleGraph) -> dict[str, str]:
    """The kernel the graph's update groups chose for each rule (`select-kernels`)."""
    out: dict[str, str] = {}
    for op in graph.ops():
        if isinstance(op, UpdateGroup):
            out.setdefault(op.rule, op.kernel)
    return out


def lower(bound: Bound, graph: ScheduleGraph, total_steps: int) -> Plan:
    """Build the Plan for `graph`: optimizers, parameter groups and per-step programs."""
    from mrc.optim import build_optimizer, build_schedule
    from mrc.runtime.fused import ADAM_RULES, FUSED_RULES, FusedAdam, FusedSGD
    from mrc.runtime.subset import RandomSubsetSGD

    program = bound.program
    gm = bound.graph_module
    named = dict(bound.model.named_parameters())
    parts = {p.name: p for p in bound.partitions}
    params = {name: [named[n] for n in part.params] for name, part in parts.items()}
    lr_of: dict[str, float] = {}
    for op in graph.ops():
        if isinstance(op, Update | UpdateGroup):
            for p in ((op.partition,) if isinstance(op, Update) else op.partitions):
                comp = parts[p].spec.optimizer or program.optimizer
                lr_of[p] = op.lr if op.lr is not None else _base_lr(comp) * op.scale
    kernels = rule_kernels(graph)
    device = next(iter(named.values())).device if named else torch.device("cpu")
    # one optimizer per rule, one parameter group per partition; random subsets get their own
    optimizers: dict[str, Any] = {}
    fused: dict[str, Any] = {}
    base_lrs: dict[str, list[float]] = {}
    part_lr: dict[str, float] = {}
    rule_of: dict[str, str] = {}
    subsets: dict[str, Any] = {}
    by_rule: dict[str, list[str]] = {}
    for name, part in parts.items():
        comp = part.spec.optimizer or program.optimizer
        lr = lr_of.get(name, _base_lr(comp) * part.spec.every)
        part_lr[name] = lr
        if isinstance(part.spec.selector, SelectRandom):
            sel = part.spec.selector
            subsets[name] = RandomSubsetSGD(params[name], lr=lr, every=part.spec.every,
                                            fraction=sel.fraction, per=sel.per,
                                            seed=program.train.seed, salt=name,
                                            **{k: v for k, v in comp.kwargs.items() if k != "lr"})
            optimizers[f"subset:{name}"] = subsets[name]
            base_lrs[f"subset:{name}"] = [lr]
            rule_of[name] = f"subset:{name}"
            continue
        rule = comp.describe()
        by_rule.setdefault(rule, []).append(name)
        rule_of[name] = rule
    for rule, names in by_rule.items():
        comp = parts[names[0]].spec.optimizer or program.optimizer
        kernel = kernels.get(rule, "torch.optim")
        if kernel == "triton" and device.type != "cuda":
            kernel = "torch"  # compiled for a GPU, run on the CPU: the same update in torch
        tensors = [p for n in names for p in params[n]]
        uniform = len({(p.dtype, p.device) for p in tensors}) == 1
        if kernel in ("torch", "triton") and comp.name in ADAM_RULES and uniform and \
                tensors[0].dtype in (torch.float32, torch.bfloat16, torch.float16):
            kw = dict(comp.kwargs)
            betas = tuple(kw.get("betas", (0.9, 0.999)))
            fused[rule] = FusedAdam({n: (params[n], lr_of.get(n, part_lr[n])) for n in names},
                                    betas=(float(betas[0]), float(betas[1])), eps=float(kw.get("eps", 1e-8)),
                                    weight_decay=float(kw.get("weight_decay", 0.0)),
                                    decoupled=comp.name == "adamw", kernel=kernel)
            continue
        if kernel in ("torch", "triton") and comp.name in FUSED_RULES and uniform:
            kw = {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False,
                  **{k: v for k, v in comp.kwargs.items() if k != "lr"}}
            fused[rule] = FusedSGD(
                {n: (params[n], lr_of.get(n, part_lr[n]),
                     parts[n].spec.every if parts[n].spec.drift != "none" and parts[n].spec.every > 1 else 0)
                 for n in names},
                momentum=float(kw["momentum"]), dampening=float(kw["dampening"]),
                weight_decay=float(kw["weight_decay"]), nesterov=bool(kw["nesterov"]), kernel=kernel)
            continue
        groups = [{"params": params[n], "lr": part_lr[n]} for n in names]
        optimizers[rule] = build_optimizer(comp.name, groups, dict(comp.kwargs))
        base_lrs[rule] = [g["lr"] for g in groups]
    drift = {name: [torch.zeros_like(p) for p in params[name]]
             for name, part in parts.items()
             if part.spec.drift != "none" and part.spec.every > 1 and rule_of[name] not in fused}
    all_names = tuple(parts)
    segments: dict[int, nn.Module] = {}

    def forward_for(fwds: list[Forward]) -> nn.Module:
        if len(fwds) == 1:
            return gm
        n = int(fwds[0].segment.partition(":")[2].rstrip("]"))
        if n not in segments:
            segments[n] = split_at(gm, bound.model, bound.layers, n)
        return segments[n]

    steps = []
    for t in range(graph.period):
        ops = graph.at(t)
        drifting_now = [op.partition for op in ops if isinstance(op, Drift)]
        fused_drifts = {r: tuple(n for n in drifting_now if rule_of[n] == r) for r in fused}
        drift_done: set[str] = set()
        phases = []
        for phase in sorted({getattr(op, "phase", 0) for op in ops if hasattr(op, "phase")}):
            here = [op for op in ops if getattr(op, "phase", -1) == phase]
            fwds = [op for op in here if isinstance(op, Forward)]
            bwd = next((op for op in here if isinstance(op, Backward)), None)
            ups = [op for op in here if isinstance(op, Update | UpdateGroup)]
            updated = [p for op in ups for p in ((op.partition,) if isinstance(op, Update)
                                                 else op.partitions)]
            wrt = bwd.wrt if bwd else ()
            inputs = None if set(wrt) == set(all_names) else [x for n in wrt for x in params[n]]
            clear = [x for n in wrt if n not in updated and rule_of[n] not in fused for x in params[n]]
            zero = tuple((fused[r], tuple(n for n in wrt if rule_of[n] == r))
                         for r in fused if any(rule_of[n] == r for n in wrt))
            runners: dict[str, GroupRunner] = {}
            for op in ups:
                names_ = (op.partition,) if isinstance(op, Update) else op.partitions
                held = (op.partition,) if isinstance(op, Update) and op.drift else (
                    op.drift if isinstance(op, UpdateGroup) else ())
                for n in names_:
                    rule = rule_of[n]
                    if rule in fused:
                        r = runners.setdefault(rule, GroupRunner(fused[rule], rule, fused=True))
                        r.updating = (*r.updating, n)
                        continue
                    r = runners.setdefault(rule, GroupRunner(optimizers[rule], rule))
                    if n in held:
                        r.held = (*r.held, n)
            for rule, r in runners.items():
                if r.fused and rule not in drift_done:  # this rule's drift rides along
                    r.drifting = tuple(n for n in fused_drifts[rule] if n not in r.updating)
                    drift_done.add(rule)
            phases.append(Phase(forward_for(fwds) if fwds else None, inputs, clear,
                                tuple(runners.values()), zero))
        drifts = tuple((op.partition, op.fraction) for op in ops
                       if isinstance(op, Drift) and rule_of[op.partition] not in fused)
        drift_only = tuple(GroupRunner(fused[r], r, fused=True, drifting=names)
                           for r, names in fused_drifts.items() if names and r not in drift_done)
        resamples = tuple(op.partition for op in ops if isinstance(op, Resample))
        steps.append(StepProgram(tuple(phases), drifts, resamples, drift_only))
    schedule = build_schedule(program.schedule.name, total_steps, dict(program.schedule.kwargs))
    return Plan(graph.period, gm, tuple(steps), optimizers, base_lrs, schedule,
                program.train.label_smoothing, program.train.grad_clip, params,
                part_lr, drift, subsets, fused)
