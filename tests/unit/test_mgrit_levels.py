"""The automatic MGRIT hierarchy (issue 24): without `levels`, as many levels as leave the
coarsest level at most 16 points, at least two where the stack has a coarse point; a list of
one coarsening (or relaxation) per transition gives its own count."""

from __future__ import annotations

import pytest

from mrc.api import SpecText, compile_spec
from mrc.techniques.mgrit.grid import COARSEST, auto_levels
from mrc.techniques.mgrit.tables import STACKS


@pytest.mark.parametrize(("n", "cf", "levels"), [
    (1024, (4,), 4), (1024, (2,), 7), (64, (4,), 2), (67, (4,), 2), (68, (4,), 3), (16, (4,), 2), (3, (4,), 1),
    (100, (4, 2), 3), (1000, (8, 2, 2), 5),  # past its list, the last factor repeats
])
def test_the_coarsest_level_of_an_automatic_hierarchy_is_small(n: int, cf: tuple[int, ...], levels: int) -> None:
    assert auto_levels(n, cf) == levels
    sizes = [n]
    for level in range(levels - 1):
        sizes.append(sizes[-1] // cf[min(level, len(cf) - 1)])
    assert sizes[-1] >= 1 and (sizes[-1] <= COARSEST or levels == 1 or sizes[-1] // cf[-1] < 1)
    if levels > 2:  # one level fewer would leave the coarsest level too large
        assert sizes[-2] > COARSEST


SPEC = """model ode_resnet(width=4, depth={depth}, h=0.05)
data levelsets(batch=16)
optimizer sgd(lr=0.1)
train(steps=1)
mgrit "stack" {{ {settings} }}
"""


@pytest.mark.parametrize(("depth", "settings", "levels"), [
    (256, "coarsening = 4", 3),       # 256 → 64 → 16
    (64, "coarsening = 4", 2),        # 64 → 16
    (64, "coarsening = [2, 2, 2]", 4),  # a list per transition counts the levels
    (64, "levels = 3", 3),            # given: kept
])
def test_a_stack_without_levels_gets_the_automatic_hierarchy(depth: int, settings: str, levels: int) -> None:
    compiled = compile_spec(SpecText(SPEC.format(depth=depth, settings=settings)))
    (info,) = compiled.graph.table(STACKS).values()
    assert info.levels == levels
    assert f"levels={levels}" in compiled.graph.to_text()
