"""The optimizer registry: every `optimizer NAME(...)` a spec can say, with typed parameters.

Each builder takes the parameters to optimise (a list of tensors, or of torch param-group
dicts) and keyword hyper-parameters, and returns a `torch.optim.Optimizer`. The keyword
defaults in each builder's signature equal the `Param` defaults (a unit test checks this), so
calling `entry.build(params, **only_the_given_kwargs)` and `build_optimizer` agree.

The table imports no torch: the checker reads it (`mrc check` of a spec with errors must not pay
for torch), so each builder imports torch, or its optimizer class, when it is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mrc.registry import REQUIRED, Param, Registry

if TYPE_CHECKING:
    import torch

    ParamsT = list[torch.nn.Parameter] | list[dict[str, Any]]

OPTIMIZERS = Registry("optimizer")


def _lr(default: Any) -> Param:
    return Param("lr", "float", default, "learning rate (the base rate a schedule multiplies)",
                 lo=0.0)


def _momentum(default: float, lo_open: bool = False) -> Param:
    return Param("momentum", "float", default, "momentum factor μ", lo=0.0, hi=1.0,
                 lo_open=lo_open, hi_open=True)


def _weight_decay(default: float, doc: str = "L2 penalty added to the gradient") -> Param:
    return Param("weight_decay", "float", default, doc, lo=0.0)


def _eps(default: float) -> Param:
    return Param("eps", "float", default, "term added to the denominator for stability",
                 lo=0.0, lo_open=True)


def _betas() -> Param:
    return Param("betas", "floats", (0.9, 0.999),
                 "decay rates [β₁, β₂] of the first and second moment averages",
                 lo=0.0, hi=1.0, hi_open=True)


_SGD_TAIL = (
    Param("dampening", "float", 0.0, "dampening of the momentum (0 for Nesterov)",
          lo=0.0, hi=1.0),
    _weight_decay(0.0),
)


def _two_betas(betas: Sequence[float]) -> tuple[float, float]:
    values = tuple(float(b) for b in betas)
    if len(values) != 2:
        raise ValueError(f"`betas` must hold exactly two numbers, not {len(values)}")
    return values[0], values[1]


@OPTIMIZERS.register(
    "sgd", _lr(REQUIRED), _momentum(0.0), *_SGD_TAIL,
    Param("nesterov", "bool", False, "Nesterov momentum (needs momentum > 0, dampening 0)"),
    doc="stochastic gradient descent: p = μp + (1−dampening)g; θ −= lr·p (torch.optim.SGD)",
)
def sgd(params: ParamsT, lr: float, momentum: float = 0.0, dampening: float = 0.0,
        weight_decay: float = 0.0, nesterov: bool = False) -> torch.optim.Optimizer:
    """Stochastic gradient descent, optionally with (Nesterov) momentum: torch.optim.SGD."""
    import torch
    return torch.optim.SGD(params, lr=lr, momentum=momentum, dampening=dampening,
                           weight_decay=weight_decay, nesterov=nesterov)


@OPTIMIZERS.register(
    "momentum", _lr(REQUIRED), _momentum(0.9), *_SGD_TAIL,
    doc="SGD with heavy-ball momentum (μ = 0.9 by default): p = μp + g; θ −= lr·p",
)
def momentum(params: ParamsT, lr: float, momentum: float = 0.9, dampening: float = 0.0,
             weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD with heavy-ball momentum; `sgd` with a momentum default of 0.9."""
    import torch
    return torch.optim.SGD(params, lr=lr, momentum=momentum, dampening=dampening,
                           weight_decay=weight_decay)


@OPTIMIZERS.register(
    "nesterov", _lr(REQUIRED), _momentum(0.9, lo_open=True), _weight_decay(0.0),
    doc="SGD with Nesterov momentum: p = μp + g; θ −= lr·(g + μp)",
)
def nesterov(params: ParamsT, lr: float, momentum: float = 0.9,
             weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (momentum must be positive, no dampening)."""
    import torch
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=True)


@OPTIMIZERS.register(
    "rmsprop", _lr(0.01),
    Param("alpha", "float", 0.99, "decay rate γ of the squared-gradient average",
          lo=0.0, hi=1.0),
    _eps(1e-8), _momentum(0.0), _weight_decay(0.0),
    Param("centered", "bool", False, "divide by the centred (variance) estimate"),
    doc="RMSProp: v = αv + (1−α)g²; θ −= lr·g/(√v + eps) (torch.optim.RMSprop)",
)
def rmsprop(params: ParamsT, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8,
            momentum: float = 0.0, weight_decay: float = 0.0,
            centered: bool = False) -> torch.optim.Optimizer:
    """RMSProp: divide the step by a running RMS of the gradient (torch.optim.RMSprop)."""
    import torch
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                               weight_decay=weight_decay, centered=centered)


@OPTIMIZERS.register(
    "adam", _lr(1e-3), _betas(), _eps(1e-8), _weight_decay(0.0),
    Param("amsgrad", "bool", False, "use the running maximum of v (AMSGrad)"),
    doc="Adam: bias-corrected moments m̂, v̂; θ −= lr·m̂/(√v̂ + eps) (torch.optim.Adam)",
)
def adam(params: ParamsT, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999),
         eps: float = 1e-8, weight_decay: float = 0.0,
         amsgrad: bool = False) -> torch.optim.Optimizer:
    """Adam, RMSProp with momentum and bias correction (torch.optim.Adam)."""
    import torch
    return torch.optim.Adam(params, lr=lr, betas=_two_betas(betas), eps=eps,
                            weight_decay=weight_decay, amsgrad=amsgrad)


@OPTIMIZERS.register(
    "adamw", _lr(1e-3), _betas(), _eps(1e-8),
    _weight_decay(0.01, "decoupled weight decay: θ −= lr·wd·θ before the Adam step"),
    Param("amsgrad", "bool", False, "use the running maximum of v (AMSGrad)"),
    doc="AdamW: Adam with decoupled weight decay θ −= lr·wd·θ (torch.optim.AdamW)",
)
def adamw(params: ParamsT, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999),
          eps: float = 1e-8, weight_decay: float = 0.01,
          amsgrad: bool = False) -> torch.optim.Optimizer:
    """AdamW, Adam with weight decay decoupled from the gradient (torch.optim.AdamW)."""
    import torch
    return torch.optim.AdamW(params, lr=lr, betas=_two_betas(betas), eps=eps,
                             weight_decay=weight_decay, amsgrad=amsgrad)


@OPTIMIZERS.register(
    "adagrad", _lr(0.01),
    Param("lr_decay", "float", 0.0, "learning-rate decay: lr/(1 + (t−1)·lr_decay)", lo=0.0),
    _weight_decay(0.0),
    Param("initial_accumulator_value", "float", 0.0, "initial value of the sum of g²", lo=0.0),
    _eps(1e-10),
    doc="Adagrad: s += g²; θ −= lr·g/(√s + eps) (torch.optim.Adagrad)",
)
def adagrad(params: ParamsT, lr: float = 0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
            initial_accumulator_value: float = 0.0, eps: float = 1e-10) -> torch.optim.Optimizer:
    """Adagrad: per-coordinate rate shrinking with the summed squared gradient."""
    import torch
    return torch.optim.Adagrad(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                               initial_accumulator_value=initial_accumulator_value, eps=eps)


@OPTIMIZERS.register(
    "lars", _lr(REQUIRED), _momentum(0.9), _weight_decay(0.0),
    Param("trust_coefficient", "float", 0.001, "trust coefficient η of the local rate",
          lo=0.0, lo_open=True),
    _eps(1e-8),
    Param("exclude_bias_and_norm", "bool", True,
          "1-D tensors (biases, norm weights) get neither adaptation nor decay"),
    doc="LARS: SGD-momentum with per-tensor rate trust·‖w‖/(‖g‖ + wd·‖w‖ + eps)",
)
def lars(params: ParamsT, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
         trust_coefficient: float = 0.001, eps: float = 1e-8,
         exclude_bias_and_norm: bool = True) -> torch.optim.Optimizer:
    """LARS (You et al. 2017), see `mrc.optim.lars.LARS` for the equations."""
    from mrc.optim.lars import LARS
    return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                trust_coefficient=trust_coefficient, eps=eps,
                exclude_bias_and_norm=exclude_bias_and_norm)


@OPTIMIZERS.register(
    "lamb", _lr(1e-3), _betas(), _eps(1e-6),
    _weight_decay(0.01, "decoupled weight decay added to the Adam direction"),
    Param("bias_correction", "bool", True, "bias-correct the Adam moments"),
    doc="LAMB: Adam direction r (+ wd·w) scaled per tensor by ‖w‖/‖r‖",
)
def lamb(params: ParamsT, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999),
         eps: float = 1e-6, weight_decay: float = 0.01,
         bias_correction: bool = True) -> torch.optim.Optimizer:
    """LAMB (You et al. 2019), see `mrc.optim.lamb.LAMB` for the equations."""
    from mrc.optim.lamb import LAMB
    return LAMB(params, lr=lr, betas=_two_betas(betas), eps=eps, weight_decay=weight_decay,
                bias_correction=bias_correction)


@OPTIMIZERS.register(
    "langevin", _lr(REQUIRED),
    Param("gamma", "float", 1.0, "friction γ", lo=0.0),
    Param("tau", "float", 0.0, "temperature τ (0: pure optimization)", lo=0.0),
    _weight_decay(0.0),
    doc="underdamped Langevin dynamics, BAOAB splitting (see mrc.optim.langevin)",
)
def langevin(params: ParamsT, lr: float, gamma: float = 1.0, tau: float = 0.0,
             weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Partitioned Langevin integrator with its own friction and temperature."""
    from mrc.optim.langevin import Langevin
    return Langevin(params, lr=lr, gamma=gamma, tau=tau, weight_decay=weight_decay)
