"""Checks of partitioned Langevin dynamics.

A Langevin partition is an ordinary partition whose `optimizer` is the built-in `langevin`
(`lr`, `gamma`, `tau`, `weight_decay`): its arguments are checked by that optimizer's `Param`
table in `mrc.optim.optimizers`, like any integrator's, so the checker needs nothing of its own
here yet. Langevin-specific statement or partition checks belong in this module (register them
with `mrc.check.registry` or `mrc.techniques.multirate.check.partition_rule`).
"""
