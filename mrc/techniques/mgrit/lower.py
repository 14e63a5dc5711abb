"""Lowerings of layer-parallel training: the stack becomes one autograd Function whose forward
and backward run the MGRIT solve's phases, as the graph lists them.

A forward whose segment holds a stack runs a copy of its traced segment in which the stack's
nodes are replaced (an fx rewrite, once per replica and segment) by a `SolveModule`: its forward
is `_Solve.apply(y0, …stack parameters)`, whose forward runs the forward solve — the graph's
forward-region ops of this step pattern, each a phase of `mrc.techniques.mgrit.solver.MGRIT`,
iteration by iteration until the iterations or the tolerance say stop — and returns the last
state y_N; its backward runs the adjoint solve about the forward's fine states (the adjoint-region
ops) and returns λ_0 for the layers before the stack and, for the stack's parameters, the
fine-level gradients (∂Φ_n/∂θ_n)ᵀ λ_{n+1}, so the layers around the stack train by ordinary
autograd and the stack's partitions by whatever rule the graph gives them. The phase ops
themselves lower to nothing: their forward's callable runs them (and traces them as they run).

Across ranks (`distributed layers`: the phase ops carry each rank's layer block, written by the
`layers` placer, mrc/techniques/mgrit/place.py) the solves are `mrc.techniques.mgrit.ranks`'s:
each rank solves its block, y_N and λ_0 are broadcast so every rank runs the layers around the
stack identically, the backward returns the gradients of the rank's own adjoint block only, and
the `mgrit_sum_grads` op after the backward sums them over the ranks. Warm starts stay per block;
`Plan.synchronize()` gathers them whole into the lowering's state, so a checkpoint holds what one
process's does and a resumed rank starts from its block of it.

Each solve starts from the guess `warm_start` names (mrc/techniques/mgrit/guess.py): the previous
step's states (one-shot training; kept in the lowering's state, so checkpointed), them shifted by
the change of y_0, a serial sweep of the coarsest level, or u_n = y_0 (forward) and λ_n = g
(adjoint). With `buffer = B` the first and last B layers are propagated serially around the
solve of the middle N − 2B (mrc/techniques/mgrit/buffers.py), forward and in the adjoint.
Evaluation and the saved model run the stack serially (the traced model is left as it is).
Each step's residual norms per iteration and convergence factors go to the metrics; a factor
above 1 is a warning naming the step.

Convergence control (`on_divergence`, `check_every`): the graph holds every path a step may take
(ops marked `when=…`, mrc/techniques/mgrit/ops.py), and the `Runner` of each step pattern reads
them all. On a check step (every `check_every`-th: global steps K−1, 2K−1, …, so that a measure
never reads the cold start of step 0 unless K = 1) each solve runs twice its
current iterations (the ops `when=check`/`more`), and the ratio of its last two residuals is its
measured convergence factor. Above 1, `warn` warns; `more_iterations` doubles the iterations of
the later solves, up to the graph's (MORE_CAP× the spec's), and at that cap warns; `serial` makes
the stack run serially from the next step on (the `mgrit_serial` ops: its layers with autograd,
exactly serial training). The switch (`Control`) is kept in the lowering's state (`…/control`),
so a checkpoint keeps it, and goes to the metrics (`mode`, `forward_iters`, …) and the progress line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from mrc.ir.graph import Pattern
from mrc.ir.ops import Batch, Forward
from mrc.lower.plan import Env, Lowering, LoweringError, StepFn, lowers
from mrc.models.trace import stack_stretch
from mrc.techniques.core.lower import forward_callable, replica
from mrc.techniques.distributed.buckets import GradBucket
from mrc.techniques.mgrit.grid import MORE_CAP, Blocks
from mrc.techniques.mgrit.ops import (
    PHASES,
    Relax,
    SerialStack,
    SolvePhase,
    SolveSettings,
    SumStackGrads,
    iteration_phases,
)

KIND_PHASE = {cls.kind: name for name, cls in PHASES.items()}


@dataclass
class MgritState:
    """What the MGRIT lowerings share: each stack's settings, the kernels its solves run on in
    each replica, and the forwards that hold a solve (read once from the phase ops), each
    replica's solved model, its segments, the solves by (replica, stack), and whether their
    metrics are registered."""

    stacks: dict[str, SolveSettings] | None = None
    kernels: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    solved: set[Forward] = field(default_factory=set)
    models: dict[str, tuple[fx.GraphModule, dict[str, SolveModule]]] = field(default_factory=dict)
    segments: dict[tuple[str, int], tuple[nn.Module, nn.Module]] = field(default_factory=dict)
    solves: dict[tuple[str, str], StackSolve] = field(default_factory=dict)
    metrics_registered: bool = False


def mgrit_state(ctx: Lowering) -> MgritState:
    """The lowering's MGRIT state, with the stacks and the forwards that hold a solve read from
    the graph's phase ops (the first time)."""
    state = ctx.state_of(MgritState)
    if state.stacks is None:
        state.stacks = {}
        for p in ctx.graph.patterns():
            for op in p.ops():
                if isinstance(op, SolvePhase):
                    first = state.stacks.setdefault(op.stack, op.settings)
                    if (first.steps, first.h, first.kind) != (op.settings.steps, op.settings.h, op.settings.kind):
                        raise LoweringError(f"{op.id}: the solves of stack `{op.stack}` disagree on its steps, "
                                            "step size or block kind")
                    if not isinstance(op, SerialStack):  # the serial fallback runs no MGRIT kernel
                        state.kernels.setdefault((replica(op), op.stack), set()).add(op.kernel)
            for op in p.of_kind(Forward):
                if any(isinstance(s, SolvePhase) and s.solve == "forward" for s in p.succs(op)):
                    state.solved.add(op)
    return state


def _c_every(settings: Any) -> int:
    """The spacing of the fine level's C-points (its coarsening factor; 1 for a one-level solve)."""
    return settings.factor(0) if settings.levels > 1 else 1


@dataclass
class Control:
    """Where a stack's convergence control has switched it: serial propagation since step
    `serial_since` (−1: still MGRIT), its iterations doubled `doublings` times (more_iterations);
    kept in the lowering's state as the tensor [serial_since, doublings]. And this step's plan:
    whether it is a check step, and each solve's iterations."""

    serial_since: int = -1
    doublings: int = 0
    seen: tuple[int, int] | None = None
    """The state tensor last read (id and version): a resumed checkpoint replaces or overwrites it."""
    check: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    room: bool = True
    """Whether the graph holds the iterations of one more doubling (False: at the cap)."""
    acted: int = -1
    """The step the control last switched at (once per step, whichever solve diverged)."""


class StackSolve:
    """The MGRIT solves of one stack in one replica: its propagator, warm starts and the last
    step's residuals. The settings of each solve are its phase ops' (`Runner.settings`)."""

    def __init__(self, ctx: Lowering, r: str, path: str, settings: SolveSettings, stack: nn.Module,
                 kernel: str) -> None:
        from mrc.techniques.mgrit.propagate import propagator_for

        self.ctx, self.r, self.path = ctx, r, path
        self.steps = settings.steps
        self.warm_start = False
        """Whether the solve under way keeps its states for the next step's guess (its ops say)."""
        self.guess = "previous"
        """The solve under way's initial guess (`warm_start`: mrc/techniques/mgrit/guess.py)."""
        self.buffer = 0
        """The layers at each end that the solve under way propagates serially (mrc/techniques/mgrit/buffers.py)."""
        storage = ctx.replicas.storage.get(path) if not r else None  # the graph stacks it (mrc/lower/stacked.py)
        self.prop = propagator_for(stack, kernel, storage)
        self.params: list[nn.Parameter] = (storage.params() if storage is not None else
                                           [p for layer in stack.layers for p in layer.parameters()])
        """The solve's parameter inputs: the stack's stacked tensors, or every layer's own."""
        self.stacked_steps: nn.Module | None = None
        """Over stacked storage, the serial fallback runs the stack as serial training does, from
        the storage (its layers' own parameters get no gradient there: the optimizer moves the
        storage's)."""
        if storage is not None:
            from mrc.lower.stacked import StackedSteps

            self.stacked_steps = StackedSteps(storage)
        self.forward_settings: Any = None  # the last forward solve's (mrc.techniques.mgrit.solver.Settings)
        self.key = f"mgrit/{r}/{path}" if r else f"mgrit/{path}"
        self.states: torch.Tensor | None = None
        self.last: dict[str, list[float]] = {}
        self.step = 0
        # across ranks: the forward's blocks, the block warm starts, and which whole states were read
        self.blocks: Blocks = ()
        self.local: dict[str, torch.Tensor] = {}
        self.seen: dict[str, tuple[int, int]] = {}
        self.origins: dict[str, torch.Tensor] = {}
        """The first state (y_0, or g of the adjoint) each solve across ranks last started from."""
        self.synced = False
        self._adjoint_checked: Blocks | None = None
        self.control = Control()
        self.given = SolveSettings()
        """The settings of the step under way (its forward solve's ops): the convergence control's."""
        self.cache: Any = None
        """`warm_start = cache`: the stack's per-example states (mrc.techniques.mgrit.guess.ExampleCache)."""
        self._examples: tuple[torch.Tensor, int] | None = None
        self._examples_here: torch.Tensor | None = None
        """The step's examples (`Env.examples`) last read (and their version), and them on the states' device."""

    def _warm(self, which: str, like: torch.Tensor) -> torch.Tensor | None:
        if not self.warm_start:
            return None
        got = self.ctx.state.get(f"{self.key}/{which}")
        n = self.steps
        return got if got is not None and got.shape == (n + 1, *like.shape) else None

    def _guess(self, which: str, u0: torch.Tensor, prop: Any, settings: Any) -> tuple[torch.Tensor | None, int]:
        """The initial guess of the `which` solve of the middle (all the stack without buffers), in the
        solver's order (the adjoint's reversed), as `warm_start` says (mrc/techniques/mgrit/guess.py), and
        which points it holds (`MGRIT.start`'s `every`: the cache keeps the fine C-points only); None:
        every point starts at u0."""
        from mrc.techniques.mgrit.grid import coarsest_span
        from mrc.techniques.mgrit.guess import coarse_sweep, shifted

        if self.guess == "coarse":
            return coarse_sweep(prop, self.steps - 2 * self.buffer, coarsest_span(settings), u0), 1
        if self.guess == "cache":
            return self._cached(which, u0), _c_every(settings)
        whole = self._warm(which, u0)
        if whole is None:
            return None, 1
        every = _c_every(settings)  # the fine C-points: the only points of a guess a solve reads
        part = self._middle(which, whole, every)
        return (shifted(part, u0) if self.guess == "shifted" else part), every

    def _middle(self, which: str, whole: torch.Tensor, every: int) -> torch.Tensor:
        """Every `every`-th point of the middle (the stack without the buffers) of whole-stack states
        (forward order), in the `which` solve's order: the adjoint's reversed, its points n, n − every, …
        (only those are flipped)."""
        b, n = self.buffer, self.steps - 2 * self.buffer
        part = whole[b:b + n + 1] if b else whole
        return part[n % every::every].flip(0) if which == "adjoint" else part[::every]

    def _cached(self, which: str, u0: torch.Tensor) -> torch.Tensor | None:
        """`warm_start = cache`: each example's own states at the middle's fine C-points from the last step
        that solved it (`_keep`); the rows of examples not solved yet start at u0 (None: no row was solved yet)."""
        kept, mask = self._example_cache().rows(which, self._rows(u0))
        if kept is None:
            return None
        if mask is None:
            return kept
        return torch.where(mask.view(1, -1, *[1] * (u0.dim() - 1)), kept, u0.unsqueeze(0))

    def _example_cache(self) -> Any:
        """The stack's per-example cache (mrc.techniques.mgrit.guess.ExampleCache), made the first time."""
        from mrc.techniques.mgrit.guess import ExampleCache

        if self.cache is None:
            self.cache = ExampleCache(self.ctx.state, self.key, self.ctx.bound.data.train_size,
                                      f"`warm_start = cache` of the MGRIT stack `{self.path}`")
        return self.cache

    def _rows(self, like: torch.Tensor) -> torch.Tensor:
        """This step's training examples (`Env.examples`, set by the loop), on the states' device; one
        per row of `like` (y_0 or g)."""
        plan = self.ctx.replicas.plan
        examples = plan.env.examples if plan is not None else None
        if examples is None:
            raise LoweringError(f"`warm_start = cache` of the MGRIT stack `{self.path}` needs the training examples "
                                "of each step's batch: the training loop gives them (`Plan.env.examples`, an index "
                                "tensor set before each `Plan.step`)")
        if len(examples) != like.shape[0]:
            raise LoweringError(f"`warm_start = cache` of the MGRIT stack `{self.path}`: the solve's batch has "
                                f"{like.shape[0]} rows, the step's {len(examples)} examples")
        last = self._examples
        if last is None or last[0] is not examples or last[1] != examples._version:
            self._examples, self._examples_here = (examples, examples._version), examples.to(like.device)
        assert self._examples_here is not None
        return self._examples_here

    def _keep(self, which: str, states: torch.Tensor, settings: Any) -> None:
        """`warm_start = cache`: keep a solve's whole-stack states [N + 1, batch, …] — the forward's in
        forward order, the adjoint's λ in its solve's order (λ_N first) — at the middle's fine C-points
        (the only points of a guess a solve reads: `MGRIT.start`) as this step's examples' own."""
        b, n = self.buffer, self.steps - 2 * self.buffer
        points = states[b:b + n + 1:_c_every(settings)]
        self._example_cache().put(which, self._rows(states[0]), points)

    def _given(self, runner: Runner, which: str) -> None:
        given = self.given = runner.given[which]
        self.guess, self.buffer = given.warm_start, given.buffer
        self.warm_start = self.guess in ("previous", "shifted")

    def forward(self, y0: torch.Tensor, runner: Runner) -> torch.Tensor:
        from mrc.techniques.mgrit.buffers import Offset, serial_states
        from mrc.techniques.mgrit.solver import MGRIT

        self.prop.refresh()  # this step's weights
        self.step = self.ctx.replicas.plan.env.t if self.ctx.replicas.plan is not None else 0
        self.forward_settings = runner.settings_of("forward")
        self._given(runner, "forward")
        blocks = runner.blocks.get("forward", ())
        if blocks:
            return self._forward_ranks(y0, runner, blocks)
        self._plan(runner)
        b, n = self.buffer, self.steps
        head = serial_states(self.prop, 0, b, y0) if b else None
        start = y0 if head is None else head[-1]
        prop = Offset(self.prop, b) if b else self.prop
        solver = MGRIT(prop, n - 2 * b, self.forward_settings)
        solver.start(start, *self._guess("forward", start, prop, self.forward_settings))
        runner.run(solver, "forward", self.control.counts.get("forward"))
        if head is None:
            self.states = solver.states.detach()  # the solver's own tensor: the solver ends here
        else:
            tail = serial_states(self.prop, n - b, b, solver.states[-1])
            self.states = torch.cat([head[:-1], solver.states.detach(), tail[1:]])
        if self.warm_start:
            self.ctx.state[f"{self.key}/forward"] = self.states
        if self.guess == "cache":
            self._keep("forward", self.states, self.forward_settings)
        self._record("forward", solver)
        return self.states[-1].clone(memory_format=torch.contiguous_format)

    def backward(self, g: torch.Tensor, runner: Runner) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        from mrc.techniques.mgrit.buffers import Offset, serial_adjoint
        from mrc.techniques.mgrit.solver import MGRIT, Adjoint, lambdas

        assert self.states is not None
        settings = runner.settings_of("adjoint")
        self._given(runner, "adjoint")
        blocks = runner.blocks.get("adjoint", ())
        if blocks:
            return self._backward_ranks(g, runner, blocks)
        b, n = self.buffer, self.steps
        tail = serial_adjoint(self.prop, self.states[n - b:], n - b, g) if b else None
        end = g if tail is None else tail[0]
        middle = self.states if not b else self.states[b:n - b + 1]
        prop = Adjoint(Offset(self.prop, b) if b else self.prop, middle)
        solver = MGRIT(prop, n - 2 * b, settings)
        solver.start(end, *self._guess("adjoint", end, prop, settings))
        runner.run(solver, "adjoint", self.control.counts.get("adjoint"))
        lam = lambdas(solver).detach()  # a flipped copy of the solver's states
        if tail is not None:
            head = serial_adjoint(self.prop, self.states[:b + 1], 0, lam[0])
            lam = torch.cat([head[:-1], lam, tail[1:]])
        if self.warm_start:
            self.ctx.state[f"{self.key}/adjoint"] = lam
        if self.guess == "cache":  # kept in the adjoint solve's (reversed) order: no flips to read it back
            self._keep("adjoint", solver.states.detach() if tail is None else lam.flip(0), settings)
        self._record("adjoint", solver)
        saved = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        try:
            self.prop.param_grads(self.states, lam)
            grads = [p.grad for p in self.params]
        finally:
            for p, s in zip(self.params, saved, strict=True):
                p.grad = s
        return lam[0], grads

    # ---- across ranks (`distributed layers`, mrc/techniques/mgrit/ranks.py) ----------------

    def _forward_ranks(self, y0: torch.Tensor, runner: Runner, blocks: Blocks) -> torch.Tensor:
        """This rank's block of the forward solve; y_N on every rank."""
        from mrc.techniques.mgrit.ranks import last_state, rank_forward_solve

        world = self.ctx.world
        if len(blocks) != world.size:
            raise LoweringError(f"the MGRIT solve of `{self.path}` is split for {len(blocks)} ranks, the run has "
                                f"{world.size}")
        self.blocks = blocks
        a, b = blocks[world.rank]
        solver = rank_forward_solve(self.prop, self.steps, self.forward_settings, blocks, world, y0,
                                    self._warm_block("forward", y0, a, b))
        runner.run(solver, "forward")
        self.states = solver.states.detach().clone()  # the block's states y_a … y_b
        if self.warm_start:
            self.local["forward"] = self.states
            self._add_sync()
        self._record("forward", solver)
        return last_state(solver, y0)

    def _backward_ranks(self, g: torch.Tensor, runner: Runner,
                        blocks: Blocks) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """This rank's block of the adjoint solve: λ_0 on every rank, and the gradients of the block's
        layers (None for the others: the `mgrit_sum_grads` after the backward adds them up)."""
        from mrc.techniques.mgrit.grid import adjoint_blocks
        from mrc.techniques.mgrit.ranks import (
            adjoint_table,
            block_lambdas,
            block_param_grads,
            first_lambda,
            rank_adjoint_solve,
        )

        assert self.states is not None
        world, n = self.ctx.world, self.steps
        if blocks is not self._adjoint_checked:  # the graph's split, checked once
            want = adjoint_blocks(n, self.forward_settings, self.blocks)
            if blocks != want:
                raise LoweringError(f"the adjoint MGRIT solve of `{self.path}` is split as {list(blocks)}, not as "
                                    f"its reversed coarsest intervals {list(want)}")
            self._adjoint_checked = blocks
        rows, table = adjoint_table(n, self.forward_settings, self.blocks, blocks, world, self.states)
        a, b = blocks[world.rank]
        solver = rank_adjoint_solve(self.prop, n, runner.settings_of("adjoint"), blocks, world, rows, table, g,
                                    self._warm_block("adjoint", g, a, b))
        runner.run(solver, "adjoint")
        lam = block_lambdas(solver).detach().clone()  # λ_a … λ_b
        if self.warm_start:
            self.local["adjoint"] = lam
        self._record("adjoint", solver)
        saved = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        try:
            block_param_grads(self.prop, n, blocks, world.rank, rows, table, lam)
            grads = [p.grad for p in self.params]
        finally:
            for p, s in zip(self.params, saved, strict=True):
                p.grad = s
        return first_lambda(lam, world), grads

    def _warm_block(self, which: str, like: torch.Tensor, a: int, b: int) -> torch.Tensor | None:
        """The block's warm start: the previous step's block, or the block of whole states that a checkpoint
        (or the sync before it) put in the lowering's state and this rank has not started from yet; with
        `warm_start = shifted`, moved by the change of the solve's first state `like` (y_0 or g, which
        every rank holds: the previous one is remembered, or read from the whole states)."""
        if not self.warm_start:
            return None
        key = f"{self.key}/{which}"
        whole = self.ctx.state.get(key)
        origin = self.origins.get(which)
        self.origins[which] = like
        if (whole is not None and self.seen.get(key) != (id(whole), whole._version)
                and whole.shape == (self.steps + 1, *like.shape)):
            self.seen[key] = (id(whole), whole._version)
            got: torch.Tensor | None = whole[a:b + 1]
            origin = whole[0] if which == "forward" else whole[-1]
        else:
            got = self.local.get(which)
            got = got if got is not None and got.shape == (b - a + 1, *like.shape) else None
        if got is None or self.guess != "shifted" or origin is None:
            return got
        return got + (like - origin).unsqueeze(0)

    def _add_sync(self) -> None:
        if not self.synced:
            self.synced = True
            self.ctx.hooks.syncs.append(self.sync)

    def sync(self) -> None:
        """Put the whole warm-start states in the lowering's state (every rank's block, summed into one
        tensor: a collective every rank runs), so that a checkpoint holds what one process would."""
        world, n = self.ctx.world, self.steps
        for which, local in self.local.items():
            if which == "forward":
                a, b = self.blocks[world.rank]
                own, first = local[1:], a + 1  # points (a, b]; rank 0 also point 0
                extra = 0 if a == 0 else None
            else:
                from mrc.techniques.mgrit.grid import adjoint_blocks

                a, b = adjoint_blocks(n, self.forward_settings, self.blocks)[world.rank]
                own, first = local[:b - a], a  # λ_a … λ_{b−1}; the last rank also λ_N
                extra = b - a if b == n else None
            whole = torch.zeros(n + 1, *local.shape[1:], dtype=local.dtype, device=local.device)
            whole[first:first + len(own)] = own
            if extra is not None:
                whole[a + extra] = local[extra]
            world.all_reduce(whole)  # disjoint slots: each owner's states, exactly
            key = f"{self.key}/{which}"
            self.ctx.state[key] = whole
            self.seen[key] = (id(whole), whole._version)

    def _record(self, which: str, solver: Any) -> None:
        self.last[which] = list(solver.residuals)
        factors = solver.factors()
        self.last[f"{which}_factor"] = factors
        worst = max(factors, default=0.0)
        untrusted = "its output is" if which == "forward" else "its gradients are"
        control = self.control
        if self.given.check_every:
            self.last["mode"] = "mgrit"
            self.last[f"{which}_iters"] = len(solver.residuals)
            if control.check and factors:
                measured = factors[-1]  # the ratio of the doubled solve's last two residuals
                self.last[f"{which}_check"] = measured
                self.last["checked_at"] = self.step
                if measured > 1.0:
                    self.ctx.hooks.warnings.append(
                        f"step {self.step}: the {which} MGRIT solve of `{self.path}` diverges (convergence factor "
                        f"{measured:.3g} > 1, measured over {len(solver.residuals)} iterations); "
                        f"{self._act(untrusted)}")
                    return
        if worst > 1.0:
            self.ctx.hooks.warnings.append(
                f"step {self.step}: the {which} MGRIT solve of `{self.path}` diverges (convergence factor "
                f"{worst:.3g} > 1); {untrusted} not to be trusted")

    # ---- convergence control (`on_divergence`, `check_every`) ---------------------------------

    def _plan(self, runner: Runner) -> None:
        """This step's iterations: the current count (the spec's, doubled `doublings` times), twice
        that on a check step, never more than the graph's ops."""
        control = self._control()
        every = self.given.check_every
        control.check = every > 0 and (self.step + 1) % every == 0  # steps K−1, 2K−1, …: warm starts settled
        control.counts = {}
        control.room = True
        for which, chunks in runner.iterations.items():
            now = runner.base[which] << control.doublings
            control.counts[which] = min(2 * now if control.check else now, len(chunks))
            control.room &= 2 * now <= len(chunks)

    def _act(self, untrusted: str) -> str:
        """What the policy does about a diverging check (once per step, whichever solve diverged):
        the warning's end."""
        control, policy, step = self.control, self.given.on_divergence, self.step
        if policy == "warn" or control.acted == step:
            return f"{untrusted} not to be trusted"
        control.acted = step
        if policy == "serial":
            control.serial_since = step + 1
            self._keep_control()
            return f"the stack runs serially from step {step + 1} on"
        if not control.room:
            return f"its iterations are at their cap ({MORE_CAP}× the spec's) and stay there; {untrusted} not trusted"
        control.doublings += 1
        self._keep_control()
        return f"its solves run {1 << control.doublings}× the spec's iterations from step {step + 1} on"

    def _control(self) -> Control:
        """The control, as the lowering's state holds it (a resumed checkpoint's, once loaded)."""
        control = self.control
        got = self.ctx.state.get(f"{self.key}/control")
        if got is not None and (id(got), got._version) != control.seen:
            control.serial_since, control.doublings = (int(v) for v in got.tolist())
            control.seen = (id(got), got._version)
        return control

    def _keep_control(self) -> None:
        control = self.control
        kept = torch.tensor([control.serial_since, control.doublings], dtype=torch.long)
        self.ctx.state[f"{self.key}/control"] = kept
        control.seen = (id(kept), kept._version)

    def falls_back(self) -> bool:
        """Whether the stack has fallen back to serial propagation."""
        return self._control().serial_since >= 0

    def serial(self, y0: torch.Tensor, runner: Runner, stack: StackView) -> torch.Tensor:
        """The serial fallback (the `mgrit_serial` ops): the stack's layers one after another, with
        autograd, as serial training runs them; the backward differentiates through them."""
        plan = self.ctx.replicas.plan
        self.step = plan.env.t if plan is not None else 0
        trace = plan.trace if plan is not None else None
        if trace is not None:
            op = runner.serial["forward"]
            trace.write(f"{self.step} {op.id} {op.kind} {op.scope.text() or '-'}\n")
        if self.stacked_steps is not None:
            y = self.stacked_steps(y0)
        else:
            y, h = y0, stack.h
            for layer in stack.layers:
                y = y + h * layer(y)
        adjoint = runner.serial.get("adjoint")
        if trace is not None and adjoint is not None and y.requires_grad:
            line = f"{self.step} {adjoint.id} {adjoint.kind} {adjoint.scope.text() or '-'}\n"

            def traced(grad: torch.Tensor) -> None:  # the backward reaches the stack's layers
                trace.write(line)
            y.register_hook(traced)
        self.last = {"mode": "serial", "serial_since": self.control.serial_since}
        return y


class Runner:
    """The phase ops of one step pattern's solves of one stack, in the graph's order: runs them
    on a solver, iteration by iteration, tracing each as it runs. Each solve's settings are its
    ops': its levels and iterations their scopes, each level's relaxation its relax op's, the
    rest the `SolveSettings` every op of the solve carries."""

    def __init__(self, ctx: Lowering, ops: dict[str, list[SolvePhase]]) -> None:
        from mrc.techniques.mgrit.solver import Settings

        self.ctx = ctx
        levels = 1 + max((o.scope.level for seq in ops.values() for o in seq), default=0)
        per = len(iteration_phases(levels))
        self.iterations: dict[str, list[list[SolvePhase]]] = {}
        self.blocks: dict[str, Blocks] = {}
        """Each solve's layer block per rank (empty: one process solves it all)."""
        self.settings: dict[str, Settings] = {}
        """Each solve's settings (mrc.techniques.mgrit.solver), as its ops give them."""
        self.given: dict[str, SolveSettings] = {}
        """Each solve's record, as every one of its ops carries it."""
        self.base: dict[str, int] = {}
        """Each solve's iterations on an ordinary step (those `when` empty or `mgrit`); the rest
        run when convergence control asks for them."""
        self.serial: dict[str, SerialStack] = {}
        """Each solve's serial fallback (`on_divergence = serial`)."""
        for which, every in ops.items():
            seq = [o for o in every if not isinstance(o, SerialStack)]
            for o in every:
                if isinstance(o, SerialStack):
                    self.serial[which] = o
            if not seq:
                raise LoweringError(f"{every[0].id}: the {which} solve has no MGRIT iteration")
            if len(seq) % per:
                raise LoweringError(f"the {which} solve's ops are not whole iterations of {per} phases")
            chunks = [seq[i:i + per] for i in range(0, len(seq), per)]
            for chunk in chunks:
                got = [(KIND_PHASE[o.kind], o.scope.level) for o in chunk]
                if got != iteration_phases(levels):
                    raise LoweringError(f"{chunk[0].id}: an iteration's ops are {got}, not the solver's phases")
            self.iterations[which] = chunks
            self.base[which] = _base_iterations(chunks)
            placed = {o.blocks for o in seq}
            if len(placed) > 1:
                raise LoweringError(f"{seq[0].id}: the {which} solve's ops are split across ranks in different ways")
            self.blocks[which] = placed.pop() if placed else ()
            given = {o.settings for o in every}
            if len(given) > 1:
                raise LoweringError(f"{seq[0].id}: the {which} solve's ops carry different settings")
            solve = self.given[which] = given.pop()
            if solve.on_divergence == "serial" and solve.check_every and which not in self.serial:
                raise LoweringError(f"{seq[0].id}: the {which} solve falls back to serial propagation, but this "
                                    "step's graph has no `mgrit_serial` op for it")
            relax = tuple(o.relax for o in chunks[0] if isinstance(o, Relax)) or ("FCF",)
            self.settings[which] = Settings(levels, solve.coarsening, relax, self.base[which], solve.tol)

    def settings_of(self, which: str) -> Any:
        """The settings of this step's `which` solve (mrc.techniques.mgrit.solver.Settings)."""
        got = self.settings.get(which)
        if got is None:
            raise LoweringError(f"this step's graph has no {which} MGRIT solve, but one is needed")
        return got

    def run(self, solver: Any, which: str, count: int | None = None) -> None:
        """Run the solve's first `count` iterations (None: its ordinary ones), or fewer where its
        tolerance stops it."""
        chunks = self.iterations.get(which)
        if chunks is None:
            raise LoweringError(f"this step's graph has no {which} MGRIT solve, but one is needed")
        plan = self.ctx.replicas.plan
        trace = plan.trace if plan is not None else None
        for chunk in chunks[:self.base[which] if count is None else count]:
            for op in chunk:
                if trace is not None:
                    trace.write(f"{plan.env.t} {op.id} {op.kind} {op.scope.text() or '-'}\n")
                solver.run(KIND_PHASE[op.kind], op.scope.level)
            solver.end_iteration()
            if solver.converged:
                break


def _base_iterations(chunks: list[list[SolvePhase]]) -> int:
    """How many of a solve's iterations run on an ordinary step: the leading ones whose ops are
    marked `when` empty or `mgrit` (the ones after them run only when convergence control asks)."""
    whens = []
    for chunk in chunks:
        got = {o.when for o in chunk}
        if len(got) > 1:
            raise LoweringError(f"{chunk[0].id}: an iteration's ops run under different conditions {sorted(got)}")
        whens.append(got.pop())
    base = next((i for i, w in enumerate(whens) if w not in ("", "mgrit")), len(whens))
    if base == 0 or any(w in ("", "mgrit") for w in whens[base:]):
        raise LoweringError(f"{chunks[0][0].id}: a solve's ordinary iterations (`when` empty or `mgrit`) come "
                            f"first, then the ones convergence control adds; here they are {whens}")
    return base


class _Solve(torch.autograd.Function):
    """y_N = the MGRIT forward solve from y_0; its gradient, the adjoint solve (see the module
    docstring). The stack's parameters are inputs so autograd asks for their gradients."""

    @staticmethod
    def forward(ctx: Any, y0: torch.Tensor, module: SolveModule, *params: torch.Tensor) -> torch.Tensor:
        runner = module.runner
        if runner is None:
            raise LoweringError(f"the MGRIT solve of `{module.solve.path}` ran outside its step")
        ctx.solve, ctx.runner, ctx.dtype = module.solve, runner, y0.dtype
        if module.island:  # mixed precision: the solve runs in the parameters' dtype (see SolveModule)
            with torch.autocast(y0.device.type, enabled=False):
                out = module.solve.forward(y0.detach().to(module.island), runner)
        else:
            out = module.solve.forward(y0.detach(), runner)
        # the fine states the adjoint linearises about are this solve's activations: saved
        # through autograd, so memory meters (saved-tensor hooks) count them
        ctx.save_for_backward(module.solve.states)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        lam0, grads = ctx.solve.backward(g.detach().to(ctx.solve.params[0].dtype), ctx.runner)
        return (lam0.to(ctx.dtype), None, *grads)


class SolveModule(nn.Module):
    """Stands in for a stack in the traced model: one `_Solve` over its parameters, or, once the
    stack has fallen back to serial propagation, its layers one after another."""

    def __init__(self, solve: StackSolve, stack: StackView) -> None:
        super().__init__()
        object.__setattr__(self, "solve", solve)  # not a submodule: the parameters stay the stack's
        object.__setattr__(self, "stack", stack)  # the layers the serial fallback runs
        self.runner: Runner | None = None
        self.island: torch.dtype | None = None
        """Under autocast (`train(precision)`), the dtype the solve runs in: the parameters' own
        (float32), with autocast off inside it — relaxation sweeps, FAS residuals and the adjoint
        in float32, so the converged solve equals serial float32 propagation of the stack, while
        the layers around it run in bfloat16/float16. None: the solve runs as it is called."""

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        runner = self.runner
        if runner is not None and runner.serial and self.solve.falls_back():
            return self.solve.serial(y0, runner, self.stack)
        return _Solve.apply(y0, self, *self.solve.params)


def rewrite(gm: fx.GraphModule, path: str, name: str, module: nn.Module) -> fx.GraphModule:
    """A copy of `gm` whose nodes of the stack at `path` (one contiguous stretch, one value in and
    one out) are one call of `module` (as submodule `name`)."""
    from mrc.models.trace import replace_stretch

    got = stack_stretch(gm, path)
    if isinstance(got, str):
        raise LoweringError(f"the stack `{path}` cannot be replaced in this segment: {got}")
    return replace_stretch(gm, *got, name, module)


def _holds_stack(op: Any, ctx: Lowering) -> bool:
    return isinstance(op, Forward) and op in mgrit_state(ctx).solved


@lowers("forward", when=_holds_stack)
def lower_forward_with_solve(op: Forward, pattern: Pattern, ctx: Lowering) -> StepFn:
    r = replica(op)
    whole, modules = _solved_model(ctx, r)
    module: nn.Module = whole
    if (op.start, op.stop) != (0, None):
        # a segment of the solved model, cut as mrc/lower/segments.py cuts the traced one: the
        # solve is one call_module named by the stack's path, so it counts as the stack's layers
        if op.stop is not None and op.start != 0:
            raise LoweringError(f"{op.id}: a middle segment of the model cannot run yet")
        n = op.stop if op.stop is not None else op.start
        segments = mgrit_state(ctx).segments
        if (r, n) not in segments:
            from mrc.lower.segments import split_at

            segments[(r, n)] = split_at(whole, whole, ctx.graph.layers, n)
        prefix, suffix = segments[(r, n)]
        module = prefix if op.start == 0 else suffix
    paths = [s.stack for s in pattern.succs(op) if isinstance(s, SolvePhase) and s.solve == "forward"]
    pairs = [(modules[path], Runner(ctx, _region(pattern, op, path))) for path in dict.fromkeys(paths)]
    for m, run in pairs:
        _ask_examples(ctx, pattern, op, m.solve.path, run)
    inner = forward_callable(op, pattern, module)
    for m, _ in pairs:  # the forward runs under autocast (mrc/lower/precision.py): the solve does not
        m.island = m.solve.params[0].dtype if op.autocast else None

    def forward(env: Env) -> None:
        for m, run in pairs:
            m.runner = run
        inner(env)
    return forward


def _ask_examples(ctx: Lowering, pattern: Pattern, fwd: Forward, path: str, runner: Runner) -> None:
    """`warm_start = cache` reads each step's training examples (`Env.examples`): ask the loop for
    them, and refuse a forward whose batch is not the step's batch in its order (a rank's shard, a
    brain's own batches), whose rows the examples would not name."""
    if not any(s.warm_start == "cache" for s in runner.given.values()):
        return
    for a in pattern.ancestors(fwd):
        if a.kind == "shard" or (isinstance(a, Batch) and a.source != "shared"):
            raise LoweringError(f"{fwd.id}: `warm_start = cache` of the MGRIT stack `{path}` keeps the states of the "
                                f"step's examples, but the stack runs on `{a.text()}`, not the step's batch")
    ctx.hooks.examples = f"`warm_start = cache` of the MGRIT stack `{path}` keeps states per training example"


def _solved_model(ctx: Lowering, r: str) -> tuple[fx.GraphModule, dict[str, SolveModule]]:
    """Replica r's traced model with each stack replaced by its solve (made once)."""
    state = mgrit_state(ctx)
    if r not in state.models:
        model = ctx.replicas.module_of(r)
        module: fx.GraphModule = model
        modules: dict[str, SolveModule] = {}
        for path, settings in (state.stacks or {}).items():
            original = ctx.bound.model if not r else None
            view = stack_view(model, path, settings, original)
            modules[path] = SolveModule(_solve_of(ctx, r, path, settings, view), view)
            module = rewrite(module, path, path, modules[path])
        state.models[r] = (module, modules)
        _register_metrics(ctx)
    return state.models[r]


class StackView(nn.Module):
    """A replica's stack as the propagator reads it: its N layers (the replica's own modules)
    and h. The traced model keeps only a skeleton of a module it traced through, so the layers
    are found by path, not through the stack's own class."""

    def __init__(self, layers: list[nn.Module], h: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.h = h


def stack_view(model: nn.Module, path: str, info: SolveSettings, original: nn.Module | None = None) -> StackView:
    """The stack's layers in `model` (a replica's traced model). A layer the tracer went into
    (not a leaf) is only a skeleton there: it is taken from `original`, the user's model, which
    shares its parameters (the model itself; brains have no such model and refuse)."""
    try:
        layers = [model.get_submodule(f"{path}.layers.{n}") for n in range(info.steps)]
    except AttributeError:
        raise LoweringError(f"the model has no layers `{path}.layers.0 … {info.steps - 1}`") from None
    if any(type(layer).forward is nn.Module.forward for layer in layers):
        if original is None:
            raise LoweringError(f"the layers of `{path}` were traced through, and brains cannot run them "
                                "one by one: mark the layer class `mrc_leaf = True`")
        layers = [original.get_submodule(f"{path}.layers.{n}") for n in range(info.steps)]
    return StackView(layers, info.h)


def _solve_of(ctx: Lowering, r: str, path: str, settings: SolveSettings, stack: nn.Module) -> StackSolve:
    solves = mgrit_state(ctx).solves
    if (r, path) not in solves:
        solves[(r, path)] = StackSolve(ctx, r, path, settings, stack, _kernel(ctx, r, path))
    return solves[(r, path)]


def _kernel(ctx: Lowering, r: str, path: str) -> str:
    """The kernel select-kernels chose for replica r's solves of the stack, read from their
    phase ops (one propagator runs them all, so they must agree)."""
    chosen = mgrit_state(ctx).kernels.get((r, path), set())
    if len(chosen) > 1:
        raise LoweringError(f"the MGRIT solves of `{path}` have ops on different kernels ({', '.join(sorted(chosen))})")
    return next(iter(chosen), "torch")


def _region(pattern: Pattern, fwd: Forward, path: str) -> dict[str, list[SolvePhase]]:
    """The phase ops of this forward's solves (its forward region, and the adjoint region of
    the same replica and gradient point), in canonical order."""
    out: dict[str, list[SolvePhase]] = {}
    for op in pattern.ops():
        if isinstance(op, SolvePhase) and op.stack == path and op.scope.replica == fwd.scope.replica:
            out.setdefault(op.solve, []).append(op)
    return out


def _nested(op: SolvePhase, pattern: Pattern, ctx: Lowering) -> None:
    """A phase op runs inside its forward's (or backward's) callable: no callable of its own."""
    return None


for _kind in (*KIND_PHASE, SerialStack.kind):
    lowers(_kind)(_nested)


@lowers("mgrit_sum_grads")
def lower_sum_stack_grads(op: SumStackGrads, pattern: Pattern, ctx: Lowering) -> StepFn | None:
    """The gradients of the stack's tensors — the ones its solve differentiates: its stacked tensors
    (mrc/lower/stacked.py), or every layer's own — summed over the ranks in one flat buffer (made
    once; a missing gradient, of a tensor outside this rank's block, counts as zero), then the
    backward's clipping. The other tensors of the partitions are left alone (every rank computed
    them whole). The stack's tensors are picked by identity: a partition lists its stacked layers'
    tensors once per group (`Replicas.params`), not once per name."""
    world, graph, r, clip = ctx.world, ctx.graph, replica(op), op.clip
    if not world.active and not clip:
        return None
    solves = _solved_model(ctx, r)[1]
    if op.stack not in solves:
        raise LoweringError(f"{op.id}: sums the gradients of `{op.stack}`, which no MGRIT solve runs")
    ours = {id(p) for p in solves[op.stack].solve.params}
    every = {id(p): p for n in op.grads for p in ctx.replicas.params(graph, r, n)}
    bucket = GradBucket([p for i, p in every.items() if i in ours])
    clipped = list(every.values())

    def sum_grads(env: Env) -> None:
        if world.active:
            bucket.all_reduce(world)
        if clip > 0:
            nn.utils.clip_grad_norm_(clipped, clip)
    return sum_grads


def _register_metrics(ctx: Lowering) -> None:
    """Each stack's residual norms per iteration and convergence factors of the last step."""
    state = mgrit_state(ctx)
    if state.metrics_registered:
        return
    state.metrics_registered = True
    solves = state.solves

    def metrics() -> dict[str, Any]:
        out = {f"{r}.{p}" if r else p: dict(s.last) for (r, p), s in solves.items() if s.last}
        return {"mgrit": out} if out else {}

    def progress() -> str:
        parts = []
        for (r, p), s in solves.items():
            fwd, adj = s.last.get("forward"), s.last.get("adjoint")
            if s.last.get("mode") == "serial":
                parts.append(f"mgrit {r + '.' if r else ''}{p} serial since step {s.last['serial_since']}")
            elif fwd:
                text = f"mgrit {r + '.' if r else ''}{p} r_fwd {fwd[-1]:.2e}"
                if adj:
                    text += f" r_adj {adj[-1]:.2e}"
                if s.control.doublings:
                    text += f" iters×{1 << s.control.doublings}"
                parts.append(text)
        return "  ".join(parts)
    ctx.hooks.metrics.append(metrics)
    ctx.hooks.scalars["mgrit"] = mgrit_scalars
    ctx.hooks.progress.append(progress)


def mgrit_scalars(entry: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The TensorBoard tags of a record's `mgrit` entry: each stack's last residual norm and
    convergence factor of its forward and adjoint solves (`mgrit/STACK/forward_residual`, …), and
    under convergence control whether it runs serially and each solve's iterations."""
    out: dict[str, Any] = {}
    for stack, solve in entry.items():
        if "mode" in solve:
            out[f"mgrit/{stack}/serial"] = float(solve["mode"] == "serial")
        for key in ("forward", "adjoint"):
            if solve.get(f"{key}_iters"):
                out[f"mgrit/{stack}/{key}_iters"] = solve[f"{key}_iters"]
            if solve.get(key):
                out[f"mgrit/{stack}/{key}_residual"] = solve[key][-1]
            if solve.get(f"{key}_factor"):
                out[f"mgrit/{stack}/{key}_factor"] = solve[f"{key}_factor"][-1]
    return out
