"""Multirate training within a network (seeds/multirate-training.md): partitions of the
parameters selected by selectors, each with its own rate (`every`), step size, integrator and
drift, and the `multirate(…)` options of how slow and fast steps interleave."""
