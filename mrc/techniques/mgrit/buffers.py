"""Serial buffer layers around an MGRIT solve (`buffer = B` in an `mgrit` block).

The first B and the last B layers of a stack are propagated serially, exactly, forward and in
the adjoint; MGRIT solves the N − 2B layers between them (as Jiang, Salvado, Cyr et al. 2026 do
on TorchBraid), so an unconverged solve's error neither reaches the layers before the stack
through λ_0 nor the loss through y_N without first passing B exact layers, and the buffer
layers' gradients are exact given their states:

    y_0 … y_B            serial: y_{n+1} = Φ_n(y_n)
    y_B … y_{N−B}        MGRIT, its propagator's layers shifted by B (`Offset`)
    y_{N−B} … y_N        serial

and the adjoint the other way round: λ_N = g down to λ_{N−B} serially, the middle by MGRIT about
the middle's states, λ_B down to λ_0 serially.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Offset", "serial_adjoint", "serial_states"]


class Offset:
    """A propagator of layers [offset, offset + n) of `prop`'s stack, indexed from 0: the solve of
    the middle calls it as if its first layer were layer 0."""

    def __init__(self, prop: Any, offset: int) -> None:
        self.prop, self.offset = prop, offset
        self.kernel = getattr(prop, "kernel", "torch")  # the solver fuses its correction by it

    def step(self, start: torch.Tensor, span: int, u: torch.Tensor) -> torch.Tensor:
        return self.prop.step(start + self.offset, span, u)

    def step_at(self, first: int, stride: int, span: int, u: torch.Tensor, out: torch.Tensor | None = None,
                add: torch.Tensor | None = None) -> torch.Tensor:
        """The solver's strided entry (mrc/techniques/mgrit/solver.py `step_at_of`), shifted."""
        from mrc.techniques.mgrit.solver import step_at_of

        return step_at_of(self.prop)(first + self.offset, stride, span, u, out, add)

    def sweep_at(self, first: int, stride: int, span: int, u: torch.Tensor, g: torch.Tensor | None) -> None:
        """The solver's serial sweep (`sweep_at_of`), shifted."""
        from mrc.techniques.mgrit.solver import sweep_at_of

        sweep_at_of(self.prop)(first + self.offset, stride, span, u, g)

    def vjp(self, start: torch.Tensor, span: int, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return self.prop.vjp(start + self.offset, span, y, lam)

    def new_states(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """The solver's states in the layout of the stack's propagator (`new_states_of`)."""
        from mrc.techniques.mgrit.solver import new_states_of

        return new_states_of(self.prop)(shape, like)


def serial_states(prop: Any, first: int, count: int, y: torch.Tensor) -> torch.Tensor:
    """[count + 1, *state]: y = y_first, then y_{n+1} = Φ_n(y_n) for the layers first … first + count − 1."""
    out = [y]
    for n in range(first, first + count):
        start = torch.tensor([n], dtype=torch.long, device=y.device)
        out.append(prop.step(start, 1, out[-1].unsqueeze(0))[0])
    return torch.stack(out)


def serial_adjoint(prop: Any, states: torch.Tensor, first: int, lam: torch.Tensor) -> torch.Tensor:
    """[count + 1, *state] = λ_first … λ_{first+count}: λ_{first+count} = lam, then
    λ_n = (∂Φ_n/∂u at y_n)ᵀ λ_{n+1} down to n = first (`states[i]` = y_{first+i}, count + 1 of them)."""
    count = states.shape[0] - 1
    out = [lam]
    for i in range(count - 1, -1, -1):
        start = torch.tensor([first + i], dtype=torch.long, device=lam.device)
        out.append(prop.vjp(start, 1, states[i:i + 1], out[-1].unsqueeze(0))[0])
    return torch.stack(out[::-1])
