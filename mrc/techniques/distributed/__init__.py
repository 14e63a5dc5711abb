"""Training on several processes (torch.distributed, launched by torchrun).

`distributed MODE(…)` says how a run of several processes shares the work: `data` splits each
batch across the ranks and averages gradients over flat partition buckets on the steps a
partition updates; `brains` places brains on ranks and merges them by collectives; `layers`
splits an MGRIT-solved stack's layers into one contiguous block per rank; `pipeline` places
module-wise modules on ranks. check.py holds the statement; bind.py the placement; the
`distribute` pass (passes/distribute.py) expands the graph with rank scopes and collective ops;
lower.py lowers those ops onto `mrc.runtime.world`.
"""

from __future__ import annotations

from mrc.techniques.base import PassAt, Technique

TECHNIQUE = Technique(
    "distributed",
    check="mrc.techniques.distributed.check",
    ops=("mrc.techniques.distributed.ops", "mrc.techniques.distributed.p2p", "mrc.techniques.distributed.lower"),
    bind="mrc.techniques.distributed.bind:bind",
    tables=("mrc.techniques.distributed.tables:PLACEMENT",),
    expand="mrc.techniques.distributed.expand:EXPANSION",
    passes=(PassAt("distribute", "mrc.passes.distribute:Distribute", after="batch-brains"),),
    place={"data": "mrc.techniques.distributed.expand:place_data"},
)
