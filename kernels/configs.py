"""Triton import guard and the autotune configurations of every kernel family, in one place.

Every kernel in `mrc.kernels` is an elementwise pass over flat buffers, so they share one
search space: the block of elements one program handles and the warps that handle it. On the
H100 a memory-bound elementwise kernel wants 16-byte accesses (4 float32 or 8 bfloat16 lanes
per thread) and enough loads in flight to cover latency; blocks of 1–4 K elements with 4–8
warps cover that, and autotune picks per buffer size (key `n`) on the first launch.

Under the interpreter (`TRITON_INTERPRET=1`, the CPU test path) there is exactly one config,
so autotune launches it directly instead of timing candidates, and the block is small
enough that interpreted programs stay cheap.

When Triton is not installed (macOS, Windows), `triton` and `tl` are stand-ins whose
decorators return the plain function, so the kernel modules still import and their torch
paths work; calling a `*_triton` wrapper then raises `TritonUnavailable`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    HAS_TRITON = False

    class _StandIn:
        """Enough of `triton` / `triton.language` for the kernel modules to import."""

        constexpr = int  # used only in kernel annotations

        @staticmethod
        def jit(fn: Callable[..., Any] | None = None, **_: Any) -> Any:
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def autotune(*_: Any, **__: Any) -> Callable[[Any], Any]:
            return lambda f: f

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

    triton = _StandIn()  # type: ignore[assignment]
    tl = _StandIn()  # type: ignore[assignment]


class TritonUnavailable(RuntimeError):
    """A `*_triton` wrapper was called where Triton cannot run (not installed)."""


def require_triton() -> None:
    """Raise `TritonUnavailable` unless Triton is importable."""
    if not HAS_TRITON:
        raise TritonUnavailable("triton is not installed; use the *_torch path of this kernel")


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


# (BLOCK, num_warps) pairs tried on a GPU. Every BLOCK is a multiple of 16 elements so a
# block never splits a 16-element aligned run (the FlatGroup alignment unit).
GPU_ELEMENTWISE: tuple[tuple[int, int], ...] = (
    (1024, 4),
    (2048, 4),
    (2048, 8),
    (4096, 8),
    (8192, 16),
)

# The single config used under the interpreter: small, so masked tails are exercised at the
# tests' irregular sizes, and one config so autotune does not time anything.
INTERPRETER_ELEMENTWISE: tuple[int, int] = (256, 4)


def elementwise_configs() -> list[Any]:
    """Autotune configs for the elementwise kernels (one under the interpreter)."""
    if not HAS_TRITON:
        return []
    if interpreting():
        block, warps = INTERPRETER_ELEMENTWISE
        return [triton.Config({"BLOCK": block}, num_warps=warps)]
    return [triton.Config({"BLOCK": b}, num_warps=w) for b, w in GPU_ELEMENTWISE]


def elementwise_autotune(restore: list[str]) -> Callable[[Any], Any]:
    """`triton.autotune` over `elementwise_configs()`, keyed on the element count `n`.

    `restore` names the pointer arguments the kernel updates in place: autotune runs each
    candidate on the real buffers, so they are copied before timing and restored after,
    otherwise the first call would apply the update once per candidate.
    """
    return triton.autotune(configs=elementwise_configs(), key=["n"], restore_value=restore)
