"""Peak activation memory of a training step, on CUDA and on the CPU.

Every run reports how much memory its training step needs for activations, so that module-wise
training (each module's autograd graph freed by its own backward before the next module runs) can
be compared with end-to-end training. Two measures, one per device kind:

* ``"cuda_allocator"``: the caching allocator's peak above what was allocated when the meter was
  entered (``max_memory_allocated() - memory_allocated()`` at entry, after a synchronize and a
  peak reset). It counts every tensor the step allocates, activations and transients alike.
* ``"saved_tensors"``: the bytes of the tensors autograd saves for backward, counted by a
  ``torch.autograd.graph.saved_tensors_hooks`` pair, once per storage, while they are alive; the
  peak of that live total. These are the activations the autograd graph holds, the quantity
  module-wise training reduces. Non-saved live outputs (a forward's intermediate that no backward
  formula needs, the loss, the gradients) are not counted: the CPU allocator has no peak counter,
  and tracking every allocation would need a dispatch mode on every op.

What ``"saved_tensors"`` counts and leaves out:

* a saved tensor is charged ``untyped_storage().nbytes()``, the storage it keeps alive, once per
  storage however many times (and through however many views) it is saved; it leaves the live
  total when the last saved reference to that storage is released (after a ``retain_graph=False``
  backward, or when the graph is dropped unused);
* parameters are model state, not activations: a saved tensor that is an ``nn.Parameter``, a leaf
  that requires grad, or a view of either (``weight.t()`` saved by ``addmm``) is not counted;
* tensors registered with ``ActivationMeter.exclude`` (the input batch, module buffers) are not
  counted, nor are views of their storage, while the registered tensor is alive;
* a saved tensor without a storage (sparse, nested, some subclasses) is not counted; the number of
  these is in ``ActivationMeter.uncounted``.

The hooks are installed only for the few steps that are measured: the pack hook does a few dict
operations per saved tensor (no per-element work), so the cost is small but not zero. Saved-tensor
hooks nest, and only the innermost pair sees a tensor: code that installs its own (non-reentrant
activation checkpointing) hides the tensors it saves from the meter.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

SAVED_TENSORS = "saved_tensors"
CUDA_ALLOCATOR = "cuda_allocator"


@dataclass(frozen=True)
class StepMemory:
    """The peak activation memory of the steps run inside one meter.

    `bytes` is the peak over all of them (not a sum), `kind` says how it was measured
    (``"saved_tensors"`` or ``"cuda_allocator"``, see the module docstring) and `steps` how many
    steps were marked.
    """

    bytes: int
    kind: str
    steps: int

    @property
    def mib(self) -> float:
        """The peak in MiB (2**20 bytes), as the run summaries report memory."""
        return self.bytes / 2**20


class _Ledger:
    """The live bytes of saved storages for one `with` block: a refcount per storage and a peak.

    A fresh ledger per block means a holder that outlives its block (a graph kept past the exit)
    releases into its own ledger and cannot disturb a later measurement. The lock is there because
    autograd may free saved variables on its own worker threads (CUDA backward).
    """

    __slots__ = ("counts", "live", "lock", "peak")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[int, list[int]] = {}  # storage data_ptr -> [holders, nbytes]
        self.live = 0
        self.peak = 0

    def add(self, key: int, nbytes: int) -> None:
        """Count one more saved reference to storage `key`; its bytes enter on the first."""
        with self.lock:
            entry = self.counts.get(key)
            if entry is not None:
                entry[0] += 1
                return
            self.counts[key] = [1, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)

    def release(self, key: int) -> None:
        """Drop one saved reference to storage `key`; its bytes leave with the last."""
        with self.lock:
            entry = self.counts[key]
            entry[0] -= 1
            if entry[0] == 0:
                del self.counts[key]
                self.live -= entry[1]


class _Saved:
    """What the pack hook hands autograd: the saved tensor, and its storage's count while alive.

    Autograd drops this object when it frees the saved variable, which releases the count. A
    non-leaf tensor is held detached: autograd re-attaches its grad_fn on unpack, and holding the
    attached tensor would make an uncollectable cycle (output -> grad_fn -> saved output) when the
    node saves its own output and the graph is dropped without a backward. A leaf is held as is,
    so higher-order gradients still reach it.
    """

    __slots__ = ("_key", "_ledger", "tensor")

    def __init__(self, tensor: torch.Tensor, ledger: _Ledger | None, key: int) -> None:
        self.tensor = tensor.detach() if tensor.grad_fn is not None else tensor
        self._ledger = ledger
        self._key = key

    def __del__(self) -> None:
        if self._ledger is not None:
            self._ledger.release(self._key)


def _is_parameter(t: torch.Tensor) -> bool:
    """True for a parameter, a leaf that requires grad, or a view of one: model state, not activation."""
    root = t._base if t._base is not None else t
    return isinstance(root, nn.Parameter) or (root.requires_grad and root.is_leaf)


class ActivationMeter:
    """A context manager measuring the peak activation memory of the training steps run inside it.

    ``device`` chooses the measure: a CUDA device uses the caching allocator's peak (the kind
    ``"cuda_allocator"``), anything else the saved-tensor count (``"saved_tensors"``). The
    saved-tensor hooks are installed on every device, so `peak_saved_bytes` is there on CUDA too,
    as a cross-check. Each `with` block starts a fresh measurement; `result()` reports the last.

    On CUDA the meter resets the allocator's peak statistics on entry, so a whole-run
    ``torch.cuda.max_memory_allocated()`` read later no longer covers the time before the meter:
    `cuda_peak_before` keeps the peak as it was, to be combined with the later reading.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"ActivationMeter: device {self.device} requested but CUDA is not available")
        self.kind = CUDA_ALLOCATOR if self.device.type == "cuda" else SAVED_TENSORS
        self.steps = 0
        self.uncounted = 0
        self.cuda_peak_before = 0
        self._excluded: dict[int, list[weakref.ref[torch.Tensor]]] = {}
        self._ledger: _Ledger | None = None
        self._hooks: Any = None
        self._cuda_base = 0
        self._cuda_peak: int | None = None

    def exclude(self, tensors: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Leave the storages of `tensors` out of the count: the input batch, module buffers.

        They are held by weak reference, and a storage is left out only while a registered tensor
        on it is alive: once they are all gone, its address may be reused by an activation, which
        must be counted. Excluding what was already saved in this block does not uncount it.
        """
        items = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
        for t in items:
            try:
                key = t.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):
                continue
            refs = [r for r in self._excluded.get(key, []) if r() is not None]
            refs.append(weakref.ref(t))
            self._excluded[key] = refs

    def _is_excluded(self, key: int) -> bool:
        refs = self._excluded.get(key)
        if refs is None:
            return False
        alive = [r for r in refs if r() is not None]
        if alive:
            self._excluded[key] = alive
            return True
        del self._excluded[key]
        return False

    def _pack(self, t: torch.Tensor) -> _Saved:
        ledger = self._ledger
        if ledger is None or _is_parameter(t):
            return _Saved(t, None, 0)
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            self.uncounted += 1
            return _Saved(t, None, 0)
        key = storage.data_ptr()
        if self._is_excluded(key):
            return _Saved(t, None, 0)
        ledger.add(key, storage.nbytes())
        return _Saved(t, ledger, key)

    @staticmethod
    def _unpack(saved: _Saved) -> torch.Tensor:
        return saved.tensor

    def __enter__(self) -> ActivationMeter:
        if self._hooks is not None:
            raise RuntimeError("ActivationMeter is already active; use one meter per with-block")
        self.steps = 0
        self.uncounted = 0
        self._ledger = _Ledger()
        self._cuda_peak = None
        if self.kind == CUDA_ALLOCATOR:
            torch.cuda.synchronize(self.device)
            self.cuda_peak_before = torch.cuda.max_memory_allocated(self.device)
            self._cuda_base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        hooks, self._hooks = self._hooks, None
        hooks.__exit__(*exc)
        if self.kind == CUDA_ALLOCATOR:
            self._cuda_peak = self._cuda_reading()

    def _cuda_reading(self) -> int:
        torch.cuda.synchronize(self.device)
        return max(0, torch.cuda.max_memory_allocated(self.device) - self._cuda_base)

    def mark_step(self) -> None:
        """Count one training step as run inside the meter (`StepMemory.steps`)."""
        self.steps += 1

    def run(self, step: Callable[[], Any]) -> Any:
        """Run one training step (`step()`: forward, backward, update), count it, return its result."""
        out = step()
        self.mark_step()
        return out

    @property
    def live_saved_bytes(self) -> int:
        """The bytes of saved storages alive now: 0 again once every graph is backwarded or dropped."""
        return self._ledger.live if self._ledger is not None else 0

    @property
    def peak_saved_bytes(self) -> int:
        """The peak of `live_saved_bytes` in the current (or last) with-block."""
        return self._ledger.peak if self._ledger is not None else 0

    @property
    def peak_bytes(self) -> int:
        """The peak activation memory by this meter's `kind`: allocator peak on CUDA, saved bytes else."""
        if self.kind == CUDA_ALLOCATOR:
            if self._cuda_peak is not None:
                return self._cuda_peak
            return self._cuda_reading() if self._hooks is not None else 0
        return self.peak_saved_bytes

    def result(self) -> StepMemory:
        """The measurement of the current (or last) with-block; it must have been entered."""
        if self._ledger is None:
            raise RuntimeError("ActivationMeter.result(): the meter was never entered")
        return StepMemory(bytes=self.peak_bytes, kind=self.kind, steps=self.steps)


def measure_step(step: Callable[[], Any], device: torch.device | str,
                 exclude: Iterable[torch.Tensor] = ()) -> StepMemory:
    """Run `step()` once inside an `ActivationMeter` on `device` and return its peak memory.

    `exclude` (the batch, buffers) is passed to `ActivationMeter.exclude` before the step runs.
    """
    meter = ActivationMeter(device)
    meter.exclude(exclude)
    with meter:
        meter.run(step)
    return meter.result()
