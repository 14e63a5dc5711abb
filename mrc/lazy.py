"""Imports paid for on first use, so that `mrc check` of a spec with errors never imports torch.

The checker reads the registries (models, data sets, transforms, optimizers, losses) for their
parameter tables only. Modules that declare those tables but need torch to *run* bind torch
through `module("torch")` instead of `import torch`: the first attribute read imports it, and
copies its namespace into the stand-in, so later reads cost what a plain module's do. A registry
entry whose builder lives in a torch module names it by reference, `Lazy("pkg.mod:fn")`.
"""

from __future__ import annotations

import importlib
import inspect
import types
from typing import Any


class LazyModule(types.ModuleType):
    """A stand-in for the module `name`, imported on the first attribute read."""

    def __getattr__(self, attr: str) -> Any:
        real = importlib.import_module(self.__name__)
        self.__dict__.update(real.__dict__)  # later reads hit this dict: no __getattr__ call
        return getattr(real, attr)


def module(name: str) -> Any:
    """The module `name`, imported when first used (see the module docstring)."""
    return LazyModule(name)


class Lazy:
    """A callable named by reference, `"package.module:function"`, imported on first call.

    `inspect.signature` sees the target's signature, so tests comparing a builder's defaults
    with its `Param` records work on a lazy builder as on a plain one."""

    __slots__ = ("_target", "ref")

    def __init__(self, ref: str) -> None:
        if ":" not in ref:
            raise ValueError(f"a lazy reference is `package.module:function`, not {ref!r}")
        self.ref = ref
        self._target: Any = None

    def resolve(self) -> Any:
        if self._target is None:
            mod, _, attr = self.ref.partition(":")
            self._target = getattr(importlib.import_module(mod), attr)
        return self._target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.resolve())

    def __repr__(self) -> str:
        return f"Lazy({self.ref!r})"
