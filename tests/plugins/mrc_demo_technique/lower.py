"""The lowering of `ema`: the average lives in the plan's state, so checkpoints keep it."""

from __future__ import annotations

import torch

from mrc.ir.graph import Pattern
from mrc.lower.plan import Env, Lowering, StepFn, lowers
from mrc_demo_technique.ops import Ema


@lowers("ema")
def lower_ema(op: Ema, pattern: Pattern, ctx: Lowering) -> StepFn:
    r = op.scope.replica[0] if op.scope.replica else ""
    prefix = f"ema{'.' + r if r else ''}."
    named = dict(ctx.replicas.module_of(r).named_parameters())
    for name, p in named.items():
        ctx.state.setdefault(prefix + name, torch.zeros_like(p))
    count = ctx.state.setdefault(prefix + "#steps", torch.zeros((), dtype=torch.long))
    pairs = [(ctx.state[prefix + name], p) for name, p in named.items()]
    decay = op.decay

    def ema(env: Env) -> None:
        with torch.no_grad():
            for e, p in pairs:
                if int(count) == 0:
                    e.copy_(p)
                else:
                    e.mul_(decay).add_(p, alpha=1 - decay)
            count.add_(1)
    return ema
