"""Flat parameter groups: many parameters living in one contiguous buffer.

An optimizer update is a few flops per element over every parameter, so it is bound by memory
traffic and, for a model with hundreds of small tensors, by launch overhead. `FlatGroup` moves
a list of parameters into ONE buffer and re-points each `param.data` at a view of it: the model
still holds its ordinary `nn.Parameter` objects (so `state_dict()`, `load_state_dict()`,
hooks and `torch.optim` keep working, with the same names, shapes and values), while an update
kernel sees a single flat tensor and updates the whole group in one launch.

Gradients: each `p.grad` is made a view of a flat gradient buffer (`grad_views=True`, the
default), the same trick as DDP's `gradient_as_bucket_view`. Autograd accumulates into an
existing `.grad` in place (`p.grad += g` when no graph is being built), so after `backward()`
the flat gradient is already in `grad_buffer` and `grad()` costs no copy. The views are lost
when something replaces `p.grad` (`optimizer.zero_grad(set_to_none=True)`, `model.zero_grad()`,
a backward with `create_graph=True`); `grad()` notices (an identity check per parameter),
gathers the loose gradients into the buffer once and re-attaches the views. So `grad()` is
always right, and free in the steady state. A parameter that received no gradient counts as a
zero gradient (torch.optim would skip it instead).

Layout: parameter i occupies `[offsets[i], offsets[i] + numels[i])`; every offset and the total
length are multiples of `align` elements (zero padding in between). Aligned starts keep the
parameter views as aligned as fresh allocations for cuBLAS/cuDNN, and a total that is a
multiple of 16 lets Triton use 16-byte vector accesses on the tail. Padding elements are
updated by the kernels like any other element; they start at zero with zero gradient, so SGD
and Adam keep them at zero.

Optimizer state (momentum, Adam's m and v) lives in flat float32 buffers from `state(name)`,
also for bfloat16 parameters: the update is computed in float32 and only the parameter is
rounded back.

Caveats: `module.to(...)`, `.half()` and anything else that assigns `param.data` detaches that
parameter from the buffer (`is_intact()` says so). `state_dict()` tensors are views of the flat
buffer, so saving one tensor alone with `torch.save` writes the whole buffer (saving the whole
state_dict writes it once). The kernels update the buffer without bumping the parameters'
autograd version counters, like any update made through `.data`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def _dense_strides(t: torch.Tensor) -> bool:
    """True when `t`'s strides describe a dense, non-overlapping layout (any dim order)."""
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape, strict=True) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


class FlatGroup:
    """A list of same-dtype, same-device parameters stored in one contiguous buffer.

    `data` is the flat parameter buffer, `grad_buffer` the flat gradient buffer, `state(name)`
    a flat float32 state buffer. `segments` gives each parameter's `(offset, numel)`.
    """

    def __init__(self, params: Iterable[torch.Tensor], *, align: int = 16,
                 grad_views: bool = True) -> None:
        self.params: tuple[torch.Tensor, ...] = tuple(params)
        if not self.params:
            raise ValueError("FlatGroup needs at least one parameter")
        if align < 1:
            raise ValueError(f"align must be >= 1, not {align}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("a parameter appears twice in the group")
        first = self.params[0]
        self.dtype: torch.dtype = first.dtype
        self.device: torch.device = first.device
        for i, p in enumerate(self.params):
            if p.dtype != self.dtype or p.device != self.device:
                raise ValueError(
                    f"parameter {i} is {p.dtype} on {p.device}, but the group is "
                    f"{self.dtype} on {self.device}; make one group per dtype and device")
        self.align = align
        self.grad_views = grad_views

        offsets, numels, cursor = [], [], 0
        for p in self.params:
            offsets.append(cursor)
            numels.append(p.numel())
            cursor = _round_up(cursor + p.numel(), align)
        self.offsets: tuple[int, ...] = tuple(offsets)
        self.numels: tuple[int, ...] = tuple(numels)
        self.numel: int = max(cursor, align)
        # Keep each parameter's memory layout (channels_last stays channels_last) where it is
        # dense; anything else becomes contiguous.
        self._strides = tuple(p.stride() if _dense_strides(p) else _contiguous_strides(p.shape)
                              for p in self.params)

        self.data = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for i, p in enumerate(self.params):
                view = self.view(self.data, i)
                view.copy_(p.detach())
                p.data = view

        self.grad_buffer = torch.zeros_like(self.data)
        self._grad_views = tuple(self.view(self.grad_buffer, i) for i in range(len(self.params)))
        if any(p.grad is not None for p in self.params):
            self._gather_grads()
        elif grad_views:
            self._attach_grad_views()
        self._state: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------------- layout

    def __len__(self) -> int:
        return len(self.params)

    def __repr__(self) -> str:
        return (f"FlatGroup({len(self.params)} params, {sum(self.numels)} elements "
                f"(+{self.numel - sum(self.numels)} padding), {self.dtype}, {self.device})")

    @property
    def segments(self) -> tuple[tuple[int, int], ...]:
        """`(offset, numel)` of each parameter inside the flat buffers."""
        return tuple(zip(self.offsets, self.numels, strict=True))

    def view(self, flat: torch.Tensor, i: int) -> torch.Tensor:
        """Parameter i's slot of any flat buffer of this group's length, in its shape."""
        if flat.dim() != 1 or flat.numel() != self.numel:
            raise ValueError(f"expected a flat buffer of {self.numel} elements, "
                             f"got shape {tuple(flat.shape)}")
        p = self.params[i]
        return flat.as_strided(p.shape, self._strides[i], flat.storage_offset() + self.offsets[i])

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Every parameter's slot of a flat buffer (e.g. `views(state("momentum"))`)."""
        return [self.view(flat, i) for i in range(len(self.params))]

    def index(self, param: torch.Tensor) -> int:
        """Position of `param` in the group."""
        for i, p in enumerate(self.params):
            if p is param:
                return i
        raise KeyError("parameter is not in this group")

    def span(self, params: Iterable[torch.Tensor]) -> tuple[int, int]:
        """`[start, stop)` covering exactly `params`, which must be adjacent in the group.

        Build the group with each partition's parameters next to each other; then every
        partition is one segment and a multirate update is one launch over the group.
        """
        idx = sorted(self.index(p) for p in params)
        if not idx:
            raise ValueError("empty partition")
        if idx != list(range(idx[0], idx[-1] + 1)):
            raise ValueError("the parameters are not adjacent in the group; order the group "
                             "by partition")
        stop = (_round_up(self.offsets[idx[-1]] + self.numels[idx[-1]], self.align)
                if idx[-1] + 1 < len(self.params) else self.numel)
        return self.offsets[idx[0]], stop

    def is_intact(self) -> bool:
        """True while every parameter's data is still its view of the flat buffer."""
        base, size = self.data.data_ptr(), self.data.element_size()
        return all(p.data_ptr() == base + off * size and p.dtype == self.dtype
                   for p, off in zip(self.params, self.offsets, strict=True))

    # ---------------------------------------------------------------- gradients

    def grads_are_views(self) -> bool:
        """True when every `p.grad` is its view of `grad_buffer` (no gather needed)."""
        return all(p.grad is v for p, v in zip(self.params, self._grad_views, strict=True))

    def grad(self) -> torch.Tensor:
        """The flat gradient: `grad_buffer`, after gathering any gradient that is not a view."""
        if not (self.grad_views and self.grads_are_views()):
            self._gather_grads()
        return self.grad_buffer

    def zero_grad(self) -> None:
        """Zero the flat gradient (one fill) and make every `p.grad` a view of it again."""
        self.grad_buffer.zero_()
        if self.grad_views:
            self._attach_grad_views()
        else:
            for p in self.params:
                p.grad = None

    def _attach_grad_views(self) -> None:
        for p, v in zip(self.params, self._grad_views, strict=True):
            if p.grad is not v:
                p.grad = v

    def _gather_grads(self) -> None:
        dst, src = [], []
        for p, v in zip(self.params, self._grad_views, strict=True):
            if p.grad is v:
                continue
            if p.grad is None:
                v.zero_()
            else:
                dst.append(v)
                src.append(p.grad.detach())
        if dst:
            torch._foreach_copy_(dst, src)
        if self.grad_views:
            self._attach_grad_views()

    # ---------------------------------------------------------------- optimizer state

    def state(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The flat state buffer `name` (allocated as zeros on first use, float32 by default)."""
        buf = self._state.get(name)
        if buf is None:
            buf = torch.zeros(self.numel, dtype=dtype, device=self.device)
            self._state[name] = buf
        elif buf.dtype != dtype:
            raise ValueError(f"state {name!r} is {buf.dtype}, not {dtype}")
        return buf

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the state buffers allocated so far."""
        return tuple(self._state)


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(size, 1)
    return tuple(reversed(strides))
