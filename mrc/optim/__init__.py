"""Optimizers and learning-rate schedules, as registries of typed built-ins.

`OPTIMIZERS` (sgd, momentum, nesterov, rmsprop, adam, adamw, adagrad, lars, lamb) build a
`torch.optim.Optimizer`; `SCHEDULES` (constant, step, multistep, exponential, linear, cosine,
cyclic, onecycle, each with optional linear warm-up) build a pure function step → multiplier of
the base learning rate. `build_optimizer` / `build_schedule` check keyword arguments against
the `Param` records (unknown names, types, ranges, missing required ones) and fill defaults, so
the Python API rejects what the spec checker rejects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mrc.optim.optimizers import OPTIMIZERS
from mrc.optim.schedules import SCHEDULES, Schedule, apply_lr, base_lrs, with_warmup
from mrc.registry import Entry, Registry, did_you_mean

if TYPE_CHECKING:
    import torch

    from mrc.optim.lamb import LAMB
    from mrc.optim.lars import LARS

__all__ = [
    "LAMB",
    "LARS",
    "OPTIMIZERS",
    "SCHEDULES",
    "Schedule",
    "apply_lr",
    "base_lrs",
    "build_optimizer",
    "build_schedule",
    "resolve_kwargs",
    "with_warmup",
]


def __getattr__(name: str) -> Any:
    """LAMB and LARS are imported on first use: the registries here import no torch, so the
    checker can read them without paying for torch (PEP 562)."""
    if name == "LAMB":
        from mrc.optim.lamb import LAMB

        return LAMB
    if name == "LARS":
        from mrc.optim.lars import LARS

        return LARS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _entry(registry: Registry, name: str) -> Entry:
    entry = registry.get(name)
    if entry is None:
        hint = registry.suggest(name)
        tail = f"; did you mean `{hint}`?" if hint else f" (known: {', '.join(registry.names())})"
        raise ValueError(f"unknown {registry.family} `{name}`{tail}")
    return entry


def resolve_kwargs(entry: Entry, kwargs: Mapping[str, Any], family: str = "") -> dict[str, Any]:
    """Validate `kwargs` against `entry.params` and fill in defaults; raise ValueError if bad.

    All problems are collected into one message, one per line.
    """
    what = f"{family} `{entry.name}`" if family else f"`{entry.name}`"
    names = [p.name for p in entry.params]
    errors: list[str] = []
    out: dict[str, Any] = {}
    for key in kwargs:
        if entry.param(key) is None:
            hint = did_you_mean(key, names)
            errors.append(f"{what} has no parameter `{key}`"
                          + (f"; did you mean `{hint}`?" if hint else ""))
    for p in entry.params:
        if p.name in kwargs:
            value, err = p.validate(kwargs[p.name])
            if err:
                errors.append(f"{what}: {err}")
            out[p.name] = value
        elif p.required:
            errors.append(f"{what} needs `{p.name}`")
        else:
            out[p.name] = p.default
    if errors:
        raise ValueError("\n".join(errors))
    return out


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
                    kwargs: Mapping[str, Any] | None = None) -> torch.optim.Optimizer:
    """Build optimizer `name` over `params` (tensors or param-group dicts) from checked kwargs."""
    entry = _entry(OPTIMIZERS, name)
    return entry.build(list(params), **resolve_kwargs(entry, kwargs or {}, "optimizer"))


def build_schedule(name: str, total_steps: int,
                   kwargs: Mapping[str, Any] | None = None) -> Schedule:
    """Build schedule `name` for a run of `total_steps` optimizer steps from checked kwargs.

    Returns m(t), the multiplier of the base learning rate at step t (t = 0 first).
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"`total_steps` must be a positive integer, not {total_steps!r}")
    entry = _entry(SCHEDULES, name)
    return entry.build(total_steps, **resolve_kwargs(entry, kwargs or {}, "schedule"))
