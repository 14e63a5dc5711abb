"""Rule families: the one table of what each built-in integrator is and which fast paths take it.

Every place that asks "is this rule SGD-like?" — the checker (random subsets need an SGD-family
rule), select-kernels (which rules fuse over a flat buffer), the lowering (which fused integrator
to build), batch-brains (which rules run stacked over brains) — reads this table, so adding an
optimizer means adding one row here.

`sgd_hyper` gives the effective SGD-momentum hyper-parameters of an SGD-family rule (with the
defaults of `momentum` and `nesterov`, whose μ defaults to 0.9), as torch.optim.SGD reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Family:
    """What one built-in integrator is.

    kind: `sgd` (torch.optim.SGD's update: fused multirate kernel, random subsets, stacked brains),
    `adam` (Adam/AdamW: fused Adam kernel) or `other` (torch.optim only). `elementwise`: each
    element's update reads only that element's parameter, gradient and state, so one tensor
    holding many layers moves exactly as the layers would one by one (stacked parameters,
    passes/stack_params.py); LARS and LAMB take norms per tensor, Langevin draws noise per tensor.
    """

    name: str
    kind: str
    default_momentum: float = 0.0
    nesterov: bool = False
    elementwise: bool = True

    @property
    def sgd_like(self) -> bool:
        return self.kind == "sgd"

    @property
    def adam_like(self) -> bool:
        return self.kind == "adam"


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sgd", "sgd"),
    Family("momentum", "sgd", default_momentum=0.9),
    Family("nesterov", "sgd", default_momentum=0.9, nesterov=True),
    Family("adam", "adam"),
    Family("adamw", "adam"),
    Family("rmsprop", "other"),
    Family("adagrad", "other"),
    Family("lars", "other", elementwise=False),
    Family("lamb", "other", elementwise=False),
    Family("langevin", "other", elementwise=False),
)}


def family(name: str) -> Family:
    """The family of a built-in rule name; unknown names are `other` (torch.optim only)."""
    return FAMILIES.get(name, Family(name, "other", elementwise=False))


def sgd_like(name: str) -> bool:
    return family(name).sgd_like


def adam_like(name: str) -> bool:
    return family(name).adam_like


def sgd_hyper(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """momentum, dampening, weight_decay, nesterov of an SGD-family rule with its defaults."""
    fam = family(name)
    if not fam.sgd_like:
        raise ValueError(f"`{name}` is not an SGD-family rule")
    return {"momentum": float(kwargs.get("momentum", fam.default_momentum)),
            "dampening": float(kwargs.get("dampening", 0.0)),
            "weight_decay": float(kwargs.get("weight_decay", 0.0)),
            "nesterov": bool(kwargs.get("nesterov", fam.nesterov))}
