"""Mixed precision in the Plan: autocast around the ops that run the model's layers, float32
for the ops that read their outputs, and the loss scaler of float16 training.

The precision pass (passes/precision.py) decides; this module only reads op fields:
- an op with a non-empty `autocast` field (a forward, a module's auxiliary head) runs under
  `torch.autocast(device, dtype)`, one context made at lowering;
- an op without one that reads values such an op produced (a loss: logits, a module's residual
  branches) gets them upcast to float32 first, so every loss is computed in float32 whatever the
  loss is (autocast itself upcasts only the losses on its float32 list);
- a `scaled` backward multiplies its loss by the run's `LossScaler` scale and unscales the
  gradients in place before clipping (mrc/techniques/core/lower.py); `guard` makes the updates
  that read those gradients skip a step whose gradients are not finite, and updates the scale at
  the step's end.

Parameters, gradients and optimizer state stay in the parameters' dtype (float32): this is
mixed precision, not `train(dtype)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from mrc.ir.graph import Pattern
from mrc.ir.ops import Backward, Op

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The dtype of each `autocast` field value."""


class PrecisionError(ValueError):
    """The graph asks for a precision this run cannot lower (one line, like a LoweringError:
    `mrc train` shows it without a traceback)."""


def autocast(cast: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of an `autocast` field value on `device` (empty: none)."""
    if not cast:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[cast])


def training_autocast(graph: Any) -> str:
    """The `autocast` the graph's forwards run in ("" when none has one), as the precision pass
    wrote it: what evaluation follows, so a model is scored as its forwards train."""
    return next((op.autocast for op in graph.ops() if getattr(op, "autocast", "")), "")


def evaluation_context(cast: str, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """The context evaluation runs the model in: `cast`, the training forwards' autocast
    (`training_autocast`; a fresh context per call: they may nest)."""
    return autocast(cast, torch.device(device))


def upcast(value: Any) -> Any:
    """`value` with every bfloat16/float16 tensor in it (tuples and lists too) as float32;
    differentiable, and the same object where there is none."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value
    if isinstance(value, tuple | list):
        return type(value)(upcast(v) for v in value)
    return value


def wrap(fn: Any, op: Op, pattern: Pattern, ctx: Any) -> Any:
    """`fn` (op's callable) run in the precision its op fields ask for; `fn` itself when they
    ask for nothing (the `32` path: no wrapper, no cost)."""
    cast = getattr(op, "autocast", "")
    if cast:
        if cast == "fp16" and ctx.device.type != "cuda":
            raise PrecisionError(f"{op.id}: float16 autocast (`precision = 16-mixed`) needs CUDA, and this "
                                "run is on the CPU; use `precision = bf16`")
        region = autocast(cast, ctx.device)

        def autocast_op(env: Any) -> None:
            with region:
                fn(env)
        return autocast_op
    keys = [src.id for src, v in pattern.inputs(op) if getattr(src, "autocast", "") and v.kind != "order"]
    if not keys:
        return fn

    def float32_inputs(env: Any) -> None:
        values = env.values
        saved = [(k, values[k]) for k in keys if k in values]
        for k, v in saved:
            values[k] = upcast(v)
        try:
            fn(env)
        finally:  # the lower-precision value stays what the other readers see
            for k, v in saved:
                values[k] = v
    return float32_inputs


class LossScaler:
    """Dynamic loss scaling with torch.amp.GradScaler's semantics, for the Plan's own
    integrators (GradScaler unscales and steps torch optimizers; the Plan's fused kernels and
    the techniques' own integrators and adjoints are not).

    The loss is multiplied by `scale` before the backward; `unscale_` divides the gradients by it
    in place and records whether any is inf/nan (`found_inf`, accumulated over the step); the
    step's updates are skipped when one is (`skip`), and `update` halves the scale after such a
    step (`backoff`) or doubles it (`growth`) after `interval` finite steps in a row. All of it is
    torch's own primitives (`_amp_foreach_non_finite_check_and_unscale_`, `_amp_update_scale_`),
    which GradScaler runs too."""

    def __init__(self, device: torch.device | str = "cpu", init_scale: float = 2.0 ** 16, growth: float = 2.0,
                 backoff: float = 0.5, interval: int = 2000) -> None:
        self.device = torch.device(device)
        self.growth, self.backoff, self.interval = growth, backoff, interval
        self.scale = torch.full((), init_scale, dtype=torch.float32, device=self.device)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, device=self.device)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=self.device)
        self.skipped = 0
        """Steps whose updates were skipped (non-finite gradients), over the run."""
        self._skip: bool | None = None

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale.to(loss.dtype)

    def unscale_(self, params: Sequence[torch.Tensor]) -> None:
        """Divide the gradients of `params` by the scale, in place, noting any inf/nan."""
        inv = self.scale.double().reciprocal().float()
        groups: dict[tuple[Any, Any], list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        for (device, _), grads in groups.items():
            found = self.found_inf if device == self.device else torch.zeros_like(self.found_inf, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv.to(device))
            if found is not self.found_inf:
                self.found_inf.add_(found.to(self.device))
        self._skip = None

    def skip(self) -> bool:
        """Whether this step's gradients so far hold an inf/nan (one device sync per step)."""
        if self._skip is None:
            self._skip = bool(self.found_inf.item())
        return self._skip

    def update(self) -> None:
        """End of a step: back off or grow the scale, and start the next step's check afresh."""
        if self.skip():
            self.skipped += 1
        torch._amp_update_scale_(self.scale, self.growth_tracker, self.found_inf, self.growth, self.backoff,
                                 self.interval)
        self.found_inf.zero_()
        self._skip = None

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers (a checkpoint loads with weights_only=True)."""
        return {"scale": float(self.scale.item()), "growth_tracker": int(self.growth_tracker.item()),
                "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale.fill_(float(state["scale"]))
        self.growth_tracker.fill_(int(state["growth_tracker"]))
        self.skipped = int(state.get("skipped", 0))
        self.found_inf.zero_()
        self._skip = None


def scaler_of(op: Op, ctx: Any) -> LossScaler:
    """The run's loss scaler (made by the first scaled backward lowered)."""
    if ctx.graph.target.world > 1 or (ctx.world is not None and ctx.world.active):
        raise PrecisionError(f"{op.id}: loss scaling (`precision = 16-mixed`) in a run of several processes "
                            "has no lowering yet; use `precision = bf16`")
    if ctx.scaler is None:
        ctx.scaler = LossScaler(ctx.device)
    return ctx.scaler


def guard(fns: list[Any], ops: list[Op], pattern: Pattern, ctx: Any) -> list[Any]:
    """A step program whose updates skip the step when its scaled gradients are not finite, and
    whose end updates the loss scale. The ops skipped are those that read (through `grads`
    edges, transitively) the gradients of a scaled backward. Unchanged without one."""
    scaler: LossScaler | None = ctx.scaler
    if scaler is None or not any(isinstance(op, Backward) and op.scaled for op in ops):
        return fns
    reading: set[str] = set()
    for op in pattern.ops():
        if isinstance(op, Backward) and op.scaled:
            reading.add(op.id)
        elif any(v.kind == "grads" and src.id in reading for src, v in pattern.inputs(op)):
            reading.add(op.id)
    out = []
    for fn, op in zip(fns, ops, strict=True):
        if op.id in reading and not isinstance(op, Backward):
            out.append(_unless_inf(fn, scaler))
        else:
            out.append(fn)
    last = out[-1]

    def end_of_step(env: Any) -> None:
        last(env)
        scaler.update()
    out[-1] = end_of_step
    return out


def _unless_inf(fn: Any, scaler: LossScaler) -> Any:
    def unless_inf(env: Any) -> None:
        if not scaler.skip():
            fn(env)
    return unless_inf
