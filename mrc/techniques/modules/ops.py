"""The op kinds of module-wise training: a module's auxiliary classifier and its local loss.

A module-wise step is, for each module k (scope `module=mk`): a forward of the module's segment
reading the *detached* output of module k−1 (the batch, for the first), its classifier (an
`aux_head`, or for the last module the model's own head inside the segment), its `local_loss`
(cross-entropy, plus with TRGL the transport cost of its residual branches), and the backward
and updates of the module's own partitions. Module k's backward runs before module k+1's forward
(an order edge), so each module's activations are freed before the next module makes its own:
that is where the memory goes. In a module pipeline (mrc/techniques/modules/place.py) a
`micro_batch` cuts the batch and each micro-batch's `micro_backward` adds its share-weighted
gradients to the step's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from mrc.ir.ops import Backward, GraphError, Loss, Op, names, op_kind

if TYPE_CHECKING:
    from mrc.ir.graph import Pattern


@op_kind
@dataclass(frozen=True, slots=True)
class AuxHead(Op):
    """Module k's auxiliary classifier (the module at `path` of the bound model, e.g. `aux.0`,
    built by binding as `head`) on the module's output activation: its logits."""

    kind: ClassVar[str] = "aux_head"
    rank: ClassVar[int] = 2
    pure: ClassVar[bool] = True
    path: str = ""
    head: str = ""
    phase: int = 0
    """The micro-batch it runs on in a module pipeline (mrc/techniques/modules/place.py)."""
    autocast: str = ""
    """The dtype it computes in under torch.autocast, as its module's forward (mrc.ir.ops.Forward)."""

    def text(self) -> str:
        return f"aux_head {self.path} {self.head}" + (f" autocast={self.autocast}" if self.autocast else "")

    def verify(self, pattern: Pattern) -> None:
        if not any(v.kind == "activation" for _, v in pattern.inputs(self)):
            raise GraphError(f"{self.id}: an auxiliary head needs its module's activation as input")


@op_kind
@dataclass(frozen=True, slots=True)
class LocalLoss(Loss):
    """A module's loss: weight·L(logits, targets) + transport_weight·Σ_m mean(r_m²) over the
    residual branches r_m its forward taps (TRGL; transport_weight 0 is VanGL). L is the run's
    loss (`fn` and its settings, as on `Loss`; the seed's CE by default); the text calls it CE.

    Fixed τ (`tau`, the module's own): weight 1, transport_weight 1/(2τ); τ = 0: no transport
    term. Method of multipliers (`multipliers` =
    (λ0, h, every)): weight λ_k (state, starting at λ0), transport_weight 1; with
    `update_multiplier` this step first sets λ_k ← λ_k + h·CE_k with the step's CE (the seed's
    λ_{k,i+1} = λ_{k,i} + h·L(θ_{k,i+1}, x_{i+1}) when i mod s = 0; the module's step 0 skips it)."""

    kind: ClassVar[str] = "local_loss"
    rank: ClassVar[int] = 3
    tau: float = 0.0
    multipliers: tuple[float, ...] = ()
    update_multiplier: bool = False

    @property
    def transport_weight(self) -> float:
        """The transport term's weight with a fixed τ: 1/(2τ) (0 without one)."""
        return 1.0 / (2.0 * self.tau) if self.tau else 0.0

    def text(self) -> str:
        fn = self.describe()
        if self.multipliers:
            lam0, h, every = self.multipliers
            out = f"local_loss λ·{fn} + transport (λ0={lam0:g}, h={h:g}, every={every:g})"
            return out + (" then λ += h·CE" if self.update_multiplier else "")
        if self.transport_weight:
            return f"local_loss {fn} + {self.transport_weight:g}·transport"
        return f"local_loss {fn}"

    @property
    def transported(self) -> bool:
        return bool(self.transport_weight or self.multipliers)

    def verify(self, pattern: Pattern) -> None:
        Loss.verify(self, pattern)
        if self.transported and not any(v.kind == "activation" or (v.kind == "logits" and src.kind == "forward")
                                        for src, v in pattern.inputs(self)):
            raise GraphError(f"{self.id}: a transport term needs its module's forward (the residual branches)")


@op_kind
@dataclass(frozen=True, slots=True)
class MicroBatch(Op):
    """Micro-batch `phase` of `count` of the batch on its input edge: its contiguous rows (the
    first micro-batches one row longer where the batch does not divide) with their share of the
    batch. The ops of micro-batch j run in phase j of the step."""

    kind: ClassVar[str] = "micro_batch"
    rank: ClassVar[int] = 1
    pure: ClassVar[bool] = True
    count: int = 1
    phase: int = 0

    def text(self) -> str:
        return f"micro_batch {self.phase + 1}/{self.count}"

    def verify(self, pattern: Pattern) -> None:
        if not any(v.kind == "batch" for _, v in pattern.inputs(self)):
            raise GraphError(f"{self.id}: a micro-batch needs the batch as input")
        if not 0 <= self.phase < self.count:
            raise GraphError(f"{self.id}: micro-batch {self.phase} of {self.count}")


@op_kind
@dataclass(frozen=True, slots=True)
class MicroBackward(Backward):
    """The gradients of `wrt` from micro-batch `phase` of `count`: the loss on its input edge
    weighted by the micro-batch's share of the batch, added to the gradients of the step's
    micro-batches before it (micro-batch 0 starts them afresh). `clip` (on the last micro-batch
    only) clips the sum."""

    kind: ClassVar[str] = "micro_backward"
    count: int = 1

    def text(self) -> str:
        clip = f" clip={self.clip:g}" if self.clip else ""
        how = "fresh" if self.phase == 0 else "accumulated"
        return (f"backward wrt {names(self.wrt)} × share of micro-batch {self.phase + 1}/{self.count}"
                f" ({how}){clip}")


__all__ = ["AuxHead", "LocalLoss", "MicroBackward", "MicroBatch"]
