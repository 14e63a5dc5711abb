"""batch-brains: brains that step together run as one stacked computation.

Requires: a brains graph (replica-scoped ops), kernels chosen; the brains table's `stack_obstacle`
(set when the schedule was built: "" when the model and integrators have a stacked form).
Ensures: when there is no obstacle, on every step the forward, loss, backward and update of the
brains that step become one op each, scoped by all of them: a forward over their stacked
parameters (mrc/techniques/brains/stack.py) fed by each brain's batch, the per-brain mean losses,
one backward of their sum (which gives each brain exactly its own gradient), and one
`kernel=stacked` update with each brain's learning rate. Otherwise the graph is unchanged and a
note says why the brains run one after another. With brains on ranks (a `brains` placement,
read from the graph's placement table), there is one stack per rank, of the brains that rank
holds, so the `distribute` pass after this one places each stacked op on one rank.

Example (brains fast every 1, slow every 4), step 0:
    before:  forward model @[brain=fast] …; forward model @[brain=slow] …
    after:   forward model @[brains=fast,slow]; loss …; backward …; update_group brains … kernel=stacked
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from mrc.passes.base import Pass

from mrc.ir.graph import Pattern, ScheduleGraph
from mrc.ir.ops import Backward, Batch, Forward, Loss, Op, Scope, UpdateGroup, Value
from mrc.techniques.brains.tables import BRAINS
from mrc.techniques.distributed.tables import PLACEMENT


@dataclass(frozen=True)
class BatchBrains(Pass):
    name: ClassVar[str] = "batch-brains"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        brains = graph.table(BRAINS)
        if not brains.replicas:
            return graph
        out = graph.copy()
        if brains.stack_obstacle:
            out.notes = [n for n in out.notes if not n.startswith("brains ")]
            out.notes.append(f"brains run one after another: {brains.stack_obstacle}")
            return out
        # brains the placement puts on ranks of their own (`distribute` scopes their ops later)
        placement = graph.table(PLACEMENT)
        held = dict(placement.ranks) if placement is not None else {}
        rank_of = {b: held[b] for b in brains.replicas if b in held}
        placed = bool(rank_of)
        for p in out.patterns():
            groups = [op for op in p.of_kind(UpdateGroup) if op.scope.replica]
            if not groups:
                continue
            # brains on ranks: one stack per rank, of the brains that rank holds (a stacked op
            # never spans two processes); otherwise one stack of every brain that steps
            by_rank: dict[int, list[UpdateGroup]] = {}
            for g in groups:
                by_rank.setdefault(rank_of.get(g.scope.replica[0], -1), []).append(g)
            for mine in by_rank.values():
                _stack(p, mine)
        out.notes.append("brains that step together run as one batched computation"
                         + (" (per rank)" if placed else ""))
        out.reindex()
        return out


def _stack(p: Pattern, groups: list[UpdateGroup]) -> None:
    """Replace the forward, loss, backward and update of the brains of `groups` by one stacked
    op each, scoped by all of them."""
    brains = tuple(b for g in groups for b in g.scope.replica)
    scope = Scope(brains)
    batches = [op for op in p.of_kind(Batch) if op.scope.replica and op.scope.replica[0] in brains]
    mine = [op for op in p.ops() if isinstance(op, Forward | Loss | Backward | UpdateGroup)
            and op.scope.replica and op.scope.replica[0] in brains]
    first = next(op for op in mine if isinstance(op, Loss))
    clip = next(op.clip for op in mine if isinstance(op, Backward))
    tails: dict[str, tuple[Op, Value]] = {}
    for op in mine:
        if isinstance(op, UpdateGroup):
            tails.update({s.id: (s, v) for s, v in p.outputs(op)})
        p.remove(op)
    parts = groups[0].partitions
    fwd = p.add(Forward(scope, 0, None, parts), [(b, Value("batch")) for b in batches])
    loss = p.add(replace(first, scope=scope, phase=0), [(fwd, Value("logits")),
                                                           *[(b, Value("batch")) for b in batches]])
    bwd = p.add(Backward(scope, parts, "autograd", clip), [(loss, Value("loss"))])
    group = p.add(UpdateGroup(scope, "brains", parts, groups[0].rule,
                              tuple(lr for g in groups for lr in g.lrs), "stacked"),
                  [(bwd, Value("grads", parts))])
    for dst, v in tails.values():
        p.connect(group, dst, v)
