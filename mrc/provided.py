"""Objects handed to `mrc.api.train` from Python — a model instance, a Dataset or DataLoaders, a
loss function — named in the spec as `"mrc.provided:model"`, `"mrc.provided:data"`,
`"mrc.provided:loss"`, so that they enter a run exactly as user code does (the binding calls
these factories; nothing else changes).

`hold` sets them for the duration of one `train` call; outside it the names do not exist, and a
spec that names them says so in one line.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

KINDS = ("model", "data", "loss")


@contextlib.contextmanager
def hold(**objects: Any) -> Iterator[None]:
    """Make `objects` (model=…, data=…, loss=…) the factories `mrc.provided:KIND` for a while."""
    module = sys.modules[__name__]
    made = []
    try:
        for kind, obj in objects.items():
            if obj is None:
                continue
            if kind not in KINDS:
                raise ValueError(f"cannot provide `{kind}`: give {', '.join(KINDS)}")
            setattr(module, kind, obj if kind == "loss" else _factory(obj))
            made.append(kind)
        yield
    finally:
        for kind in made:
            delattr(module, kind)


def _factory(obj: Any) -> Any:
    def provided() -> Any:
        return obj

    return provided
