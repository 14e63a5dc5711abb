"""Techniques as units: each technique of the language lives in one module of this package.

A technique brings, in one place, what the spec language needs of it:

* its statements' checks (registered with the checker's statement registry, `mrc.check`),
* its binding (what it resolves against the traced model),
* its expansion of the schedule graph (the ops it adds to each step pattern),
* its op kinds (registered by kind in `mrc.ir.ops`) and their lowerings (`mrc.lower`).

`core` is plain training (model, data, optimizer, schedule, train settings); `multirate` is
partitions with rates and linear drift; `random_subsets` and `langevin` are the seed's
regularisation and integrator; `brains` is multirate across networks (a replica scope);
`modules` is module-wise training (a module scope, and stages for its regimes); `mgrit` is
layer-parallel training; `distributed` places a run on several processes; `sweep`
checks the hyper-parameter search that `mrc.sweep` runs.
"""


def load_all() -> None:
    """Import every technique's op kinds, so the registry knows them all (e.g. to read JSON)."""
    import mrc.ir.ops
    import mrc.techniques.brains.lower
    import mrc.techniques.core.lower
    import mrc.techniques.distributed.lower
    import mrc.techniques.mgrit.lower
    import mrc.techniques.modules.lower
    import mrc.techniques.multirate.lower
    import mrc.techniques.random_subsets.lower  # noqa: F401
