"""Brains on ranks (`distributed brains`) at run time: each process trains the brains it holds;
merges over brains of several processes are collectives.

The `brains` placer (mrc/techniques/brains/place.py) scoped every op of a brain to the rank that
holds it, so the other ranks never lower them and a brain is stepped only where it lives. A merge:

    all its brains on one rank r (mean, weighted, best)  the one-process merge, on rank r
    brains of several ranks, mean / weighted / ema       every rank sums w_i·θ_i over its own
                                                         brains of the merge (zeros if none),
                                                         one all_reduce SUM per dtype; every
                                                         rank sets every brain of the merge to
                                                         the result (ema: every rank advances
                                                         the same running average)
    brains of several ranks, best                        each rank scores its own brains on the
                                                         validation data, all_gather of the
                                                         scores, the winner's state broadcast
                                                         from its rank
    (an ema merge is always a collective: the running average is one for the whole run)

Integer buffers take the first brain's value, as in one process; optimizer state: `keep`, `reset`
(each rank clears its own brains'), `average` (the states summed over the ranks like the
parameters, with the layout agreed by an all_gather of each brain's state shapes first).

Between merges a rank's copies of other ranks' brains are stale; `Plan.synchronize()` (before
evaluation, the summary, the final merge and saving) broadcasts each rank's brains (parameters
and buffers, packed flat per dtype: one broadcast per rank and dtype) to every rank, and their
optimizer state (one all_gather of objects: a checkpoint that rank 0 writes resumes every
rank's brains), and skips when no step ran since the last sync.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from mrc.ir.graph import Pattern
from mrc.lower.plan import Env, Lowering, LoweringError, StepFn, cpu_copy, lowers
from mrc.techniques.brains.ops import Merge, MergeRule
from mrc.techniques.distributed.tables import PLACEMENT

if TYPE_CHECKING:
    from mrc.techniques.brains.lower import BrainReplicas

State = dict[str, torch.Tensor]


# ---- the runtime: merges as collectives, and the sync ------------------------------------------


def pack(states: list[State]) -> dict[torch.dtype, torch.Tensor]:
    """The tensors of `states`, flattened and concatenated, one flat tensor per dtype."""
    parts: dict[torch.dtype, list[torch.Tensor]] = {}
    for state in states:
        for v in state.values():
            parts.setdefault(v.dtype, []).append(v.detach().reshape(-1))
    return {d: torch.cat(ts) for d, ts in parts.items()}


def unpack(flat: dict[torch.dtype, torch.Tensor], like: list[State]) -> list[State]:
    """`pack`'s inverse: views of `flat` shaped as the tensors of `like`."""
    offset = dict.fromkeys(flat, 0)
    out = []
    for state in like:
        one = {}
        for k, v in state.items():
            a = offset[v.dtype]
            one[k] = flat[v.dtype][a:a + v.numel()].view(v.shape)
            offset[v.dtype] = a + v.numel()
        out.append(one)
    return out


class RankedBrains:
    """The brains of a run with brains on ranks, as this rank sees them (see the module docstring)."""

    def __init__(self, reps: BrainReplicas, ctx: Lowering) -> None:
        placement = ctx.graph.table(PLACEMENT)
        assert placement is not None
        self.reps, self.world, self.device = reps, ctx.world, ctx.device
        self.foreign = ctx.foreign  # other ranks' integrator states, for this rank's checkpoint
        self.owner = {n: placement.rank_of(n) for n in reps.order}
        missing = [n for n, r in self.owner.items() if r < 0]
        if missing:
            raise LoweringError(f"brain `{missing[0]}` is placed on no rank")
        self.held = [[n for n in reps.order if self.owner[n] == r] for r in range(self.world.size)]
        self._synced = -1

    def mine(self, group: tuple[str, ...]) -> list[str]:
        return [n for n in group if self.owner[n] == self.world.rank]

    # ---- the sync ------------------------------------------------------------------------

    @torch.no_grad()
    def sync(self) -> None:
        """Every brain's parameters and buffers from the rank that trains it, to every rank."""
        plan = self.reps.plan
        if plan is not None and plan.steps_run == self._synced:
            return  # nothing moved since the last sync
        for r, brains in enumerate(self.held):
            states = [self.reps.state_of(n) for n in brains]
            flat = pack(states)
            for buf in flat.values():
                self.world.broadcast(buf, r)
            if r != self.world.rank:
                for n, state in zip(brains, unpack(flat, states), strict=True):
                    self.reps.set_state(n, state)
        self._sync_integrators()
        self._synced = plan.steps_run if plan is not None else -1

    def _sync_integrators(self) -> None:
        """Every brain's optimizer state to every rank (one all_gather of objects), so that a
        checkpoint written by one rank resumes every rank's brains exactly: stacked brains'
        rows of the stacked SGD state are set; unstacked brains' torch.optim states are kept
        in `others` for `Plan.state_dict`."""
        reps = self.reps
        integrators = reps.plan.ctx.integrators if reps.plan is not None else {}
        sgd = integrators.get(("", "stacked")) if reps.stack is not None else None
        mine: dict[str, Any] = {}
        for n in self.held[self.world.rank]:
            if sgd is not None:
                i = reps.index[n]
                mine[n] = (cpu_copy(sgd.brain_state(i)), bool(sgd.started[i]))
            elif reps.stack is None:
                mine.update({repr(k): cpu_copy(v.state_dict()) for k, v in integrators.items() if k[0] == n})
        for r, part in enumerate(self.world.all_gather_object(mine)):
            if r == self.world.rank:
                continue
            if sgd is not None:
                for n, (bufs, started) in part.items():
                    sgd.set_brain_state(reps.index[n], bufs)
                    sgd.started[reps.index[n]] = started
            else:
                self.foreign.update(part)

    # ---- merges --------------------------------------------------------------------------

    @torch.no_grad()
    def merge(self, group: tuple[str, ...], rule: MergeRule) -> None:
        """A merge over brains of several ranks (every rank takes part)."""
        state = self._best(group, rule) if rule.rule == "best" else self._mean(group, rule)
        self.reps.settle(group, rule, state, self.average_momentum)

    def _mean(self, group: tuple[str, ...], rule: MergeRule) -> State:
        reps = self.reps
        w = dict(zip(group, reps._weights(group, rule), strict=True))
        like = reps.state_of(group[0])  # every rank holds a copy: the layout
        local = {n: reps.state_of(n) for n in self.mine(group)}
        out: State = {}
        for key, first in like.items():
            if first.is_floating_point():
                acc = torch.zeros_like(first)
                for n, s in local.items():
                    acc += w[n] * s[key]
            else:  # the first brain's value, as in one process
                acc = local[group[0]][key].clone() if group[0] in local else torch.zeros_like(first)
            out[key] = acc
        flat = pack([out])
        for buf in flat.values():
            self.world.all_reduce(buf)
        merged = {k: v.clone() for k, v in unpack(flat, [out])[0].items()}
        return reps.ema_of(merged, rule, update_ema=True)

    def _best(self, group: tuple[str, ...], rule: MergeRule) -> State:
        reps = self.reps
        scores: dict[str, float] = {}
        for part in self.world.all_gather_object({n: reps.score(n, rule) for n in self.mine(group)}):
            scores.update(part)
        winner = reps.best_of(group, rule, scores)
        state = {k: v.clone() for k, v in reps.state_of(winner).items()}
        flat = pack([state])
        for buf in flat.values():
            self.world.broadcast(buf, self.owner[winner])
        return {k: v.clone() for k, v in unpack(flat, [state])[0].items()}

    def average_momentum(self, group: tuple[str, ...]) -> None:
        """momentum = average over brains of several ranks."""
        if self.reps.stack is not None:
            self._average_stacked(group)
        else:
            self._average_torch(group)

    def _average_stacked(self, group: tuple[str, ...]) -> None:
        reps = self.reps
        sgd = reps.plan.ctx.integrators.get(("", "stacked"))
        if sgd is None or not sgd.bufs:
            return
        acc = [torch.zeros_like(b[0]) for b in sgd.bufs]
        for n in self.mine(group):
            for a, t in zip(acc, sgd.brain_state(reps.index[n]), strict=True):
                a += t
        like = {str(j): a for j, a in enumerate(acc)}
        flat = pack([like])
        for buf in flat.values():
            self.world.all_reduce(buf)
        mean = [v / len(group) for v in unpack(flat, [like])[0].values()]
        for n in group:
            sgd.set_brain_state(reps.index[n], mean)

    def _average_torch(self, group: tuple[str, ...]) -> None:
        """Each brain's torch.optim state, entry by entry (the keys every brain of the merge
        holds as tensors), averaged in float64 as in one process."""
        from mrc.lower.integrators import TorchRule

        entries: dict[str, list[dict[str, Any]]] = {}
        for n in self.mine(group):
            integs = list(self.reps.plan.integrators(n))
            if any(not isinstance(i, TorchRule) for i in integs):
                raise LoweringError("`momentum = average` needs torch.optim integrators (kernel=torch.optim)")
            entries[n] = [i.optimizer.state.setdefault(p, {}) for i in integs
                          for g in i.optimizer.param_groups for p in g["params"]]
        shapes = {n: [{k: tuple(v.shape) for k, v in e.items() if isinstance(v, torch.Tensor)} for e in es]
                  for n, es in entries.items()}
        known: dict[str, list[dict[str, tuple[int, ...]]]] = {}
        for part in self.world.all_gather_object(shapes):
            known.update(part)
        count = len(known[group[0]])
        layout = [(i, k, known[group[0]][i][k]) for i in range(count)
                  for k in sorted(set.intersection(*(set(known[n][i]) for n in group)))]
        sizes = [int(torch.Size(s).numel()) for _, _, s in layout]
        flat = torch.zeros(sum(sizes), dtype=torch.float64, device=self.device)
        for es in entries.values():
            a = 0
            for (i, k, _), size in zip(layout, sizes, strict=True):
                flat[a:a + size] += es[i][k].detach().to(self.device, torch.float64).reshape(-1)
                a += size
        self.world.all_reduce(flat)
        flat /= len(group)
        for es in entries.values():
            a = 0
            for (i, k, shape), size in zip(layout, sizes, strict=True):
                old = es[i][k]
                es[i][k] = flat[a:a + size].view(shape).to(old.device, old.dtype).clone()
                a += size



def ranked(ctx: Lowering) -> RankedBrains:
    """This rank's RankedBrains (made by the brains' replicas when the graph places brains)."""
    out = getattr(ctx.replicas, "ranked", None)
    if out is None:
        raise LoweringError("a collective merge needs brains placed on ranks (`distributed brains`)")
    return out


@lowers("merge", when=lambda op, ctx: bool(op.collective))
def lower_collective_merge(op: Merge, pattern: Pattern, ctx: Lowering) -> StepFn:
    """A merge over brains of several ranks: every rank takes part (see the module docstring)."""
    if op.world != ctx.world.size:
        raise LoweringError(f"{op.id}: a collective over {op.world} ranks, the run has {ctx.world.size}")
    brains = ranked(ctx)
    group, rule = op.brains, op.merge

    def merge(env: Env) -> None:
        brains.merge(group, rule)
    return merge
