"""Training on several processes (torch.distributed, launched by torchrun).

`distributed MODE(…)` says how a run of several processes shares the work: `data` splits each
batch across the ranks and averages gradients over flat partition buckets on the steps a
partition updates; `brains` places brains on ranks and merges them by collectives; `layers`
splits an MGRIT-solved stack's layers into one contiguous block per rank; `pipeline` places
module-wise modules on ranks. check.py holds the statement; bind.py the placement; the
`distribute` pass (passes/distribute.py) expands the graph with rank scopes and collective ops;
lower.py lowers those ops onto `mrc.runtime.world`.
"""
