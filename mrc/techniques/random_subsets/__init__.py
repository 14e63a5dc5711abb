"""Random-subset regularisation (seeds/multirate-training.md): a partition that is a random
subset of the weights, redrawn every `every` steps, held at zero while the rest take fast steps,
then restored and updated by an SGD-family rule with the slow step."""

from __future__ import annotations

from mrc.techniques.base import Technique

TECHNIQUE = Technique(
    "random_subsets",
    check="mrc.techniques.random_subsets.check",
    ops=("mrc.techniques.random_subsets.ops", "mrc.techniques.random_subsets.lower"),
    draw="mrc.techniques.random_subsets.draw:DRAWING",
)
