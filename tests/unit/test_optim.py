"""The optimizer registry: entries, parameter records and validation, LARS/LAMB behaviour."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch

from mrc.optim import LAMB, LARS, OPTIMIZERS, apply_lr, base_lrs, build_optimizer
from mrc.optim.langevin import Langevin
from mrc.registry import Param

EXPECTED = {"sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw", "adagrad", "lars",
            "lamb", "langevin"}
TORCH_CLASSES = {"sgd": torch.optim.SGD, "momentum": torch.optim.SGD,
                 "nesterov": torch.optim.SGD, "rmsprop": torch.optim.RMSprop,
                 "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                 "adagrad": torch.optim.Adagrad, "lars": LARS, "lamb": LAMB,
                 "langevin": Langevin}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8),
                               torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    x = torch.linspace(-1, 1, 20).reshape(5, 4)
    model(x).pow(2).sum().backward()
    opt.step()


def test_registry_holds_the_expected_optimizers() -> None:
    assert OPTIMIZERS.family == "optimizer"
    assert set(OPTIMIZERS.names()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_optimizer_builds_and_steps(name: str) -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(name, model.parameters(), {"lr": 0.05})
    assert isinstance(opt, TORCH_CLASSES[name])
    for _ in range(2):
        _step(model, opt)
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert opt.param_groups[0]["lr"] == 0.05


@pytest.mark.parametrize("entry", list(OPTIMIZERS), ids=lambda e: e.name)
def test_signature_defaults_equal_param_defaults(entry) -> None:
    sig = inspect.signature(entry.build)
    names = list(sig.parameters)
    assert names[0] == "params"
    assert names[1:] == [p.name for p in entry.params] or \
        set(names[1:]) == {p.name for p in entry.params}
    for p in entry.params:
        default = sig.parameters[p.name].default
        if p.required:
            assert default is inspect.Parameter.empty, p.name
        else:
            assert default == p.default, (entry.name, p.name)


@pytest.mark.parametrize("entry", list(OPTIMIZERS), ids=lambda e: e.name)
def test_params_are_documented_and_bounded(entry) -> None:
    assert entry.doc
    lr = entry.param("lr")
    assert lr is not None and lr.kind == "float" and lr.lo == 0
    for p in entry.params:
        assert p.doc, (entry.name, p.name)
        if not p.required:
            _, err = p.validate(p.default)
            assert err is None, (entry.name, p.name, err)


def test_defaults_are_filled_from_params() -> None:
    opt = build_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], {})
    group = opt.param_groups[0]
    assert group["lr"] == 1e-3 and tuple(group["betas"]) == (0.9, 0.999)
    assert group["eps"] == 1e-8 and group["weight_decay"] == 0 and group["amsgrad"] is False
    opt = build_optimizer("adamw", [torch.nn.Parameter(torch.zeros(2))], {})
    assert opt.param_groups[0]["weight_decay"] == 0.01
    opt = build_optimizer("momentum", [torch.nn.Parameter(torch.zeros(2))], {"lr": 0.1})
    assert opt.param_groups[0]["momentum"] == 0.9 and not opt.param_groups[0]["nesterov"]
    opt = build_optimizer("nesterov", [torch.nn.Parameter(torch.zeros(2))], {"lr": 0.1})
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["nesterov"]
    opt = build_optimizer("lars", [torch.nn.Parameter(torch.zeros(2))], {"lr": 0.1})
    assert opt.param_groups[0]["trust_coefficient"] == 0.001
    assert opt.param_groups[0]["exclude_bias_and_norm"] is True
    opt = build_optimizer("lamb", [torch.nn.Parameter(torch.zeros(2))], {})
    assert opt.param_groups[0]["eps"] == 1e-6 and opt.param_groups[0]["weight_decay"] == 0.01


def test_param_groups_are_accepted() -> None:
    model = _model()
    groups = [{"params": list(model[0].parameters()), "lr": 0.5},
              {"params": list(model[3].parameters())}]
    for name in ("sgd", "adam", "lars", "lamb"):
        opt = build_optimizer(name, groups, {"lr": 0.01})
        assert [g["lr"] for g in opt.param_groups] == [0.5, 0.01]


# --- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_negative_lr_is_rejected(name: str) -> None:
    _, err = OPTIMIZERS.get(name).param("lr").validate(-0.1)
    assert err and "out of range" in err
    with pytest.raises(ValueError, match="out of range"):
        build_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], {"lr": -0.1})


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "rmsprop", "lars"])
def test_momentum_one_is_rejected(name: str) -> None:
    p = OPTIMIZERS.get(name).param("momentum")
    assert p.validate(1.0)[1] is not None
    assert p.validate(0.999)[1] is None
    with pytest.raises(ValueError, match=r"momentum.*\[0, 1\)|momentum.*\(0, 1\)"):
        build_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], {"lr": 0.1, "momentum": 1.0})


def test_nesterov_needs_positive_momentum() -> None:
    assert OPTIMIZERS.get("nesterov").param("momentum").validate(0.0)[1] is not None


@pytest.mark.parametrize("bad", [[0.9, 1.0], [-0.1, 0.9], 0.5, [0.9, "x"]])
def test_bad_betas_are_rejected(bad) -> None:
    p = OPTIMIZERS.get("adam").param("betas")
    assert p.kind == "floats"
    if isinstance(bad, float):  # one number is a one-element list: wrong length at build time
        with pytest.raises(ValueError, match="two numbers"):
            build_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], {"betas": bad})
    else:
        assert p.validate(bad)[1] is not None
        with pytest.raises(ValueError, match="`betas`"):
            build_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], {"betas": bad})


@pytest.mark.parametrize(("name", "key", "value"), [
    ("adam", "eps", 0.0), ("lamb", "eps", -1e-6), ("sgd", "weight_decay", -1e-4),
    ("lars", "trust_coefficient", 0.0), ("rmsprop", "alpha", 1.5), ("adam", "amsgrad", 1),
    ("sgd", "nesterov", "yes"), ("adamw", "weight_decay", float("nan")),
])
def test_out_of_range_or_mistyped_values_are_rejected(name: str, key: str, value) -> None:
    assert OPTIMIZERS.get(name).param(key).validate(value)[1] is not None
    with pytest.raises(ValueError, match=key):
        build_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], {"lr": 0.1, key: value})


def test_missing_required_lr() -> None:
    for name in ("sgd", "momentum", "nesterov", "lars"):
        assert OPTIMIZERS.get(name).param("lr").required
        with pytest.raises(ValueError, match="needs `lr`"):
            build_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], {})


def test_unknown_keyword_and_name_suggest() -> None:
    with pytest.raises(ValueError, match="did you mean `momentum`"):
        build_optimizer("sgd", [torch.nn.Parameter(torch.zeros(2))], {"lr": 0.1, "momentm": 0.9})
    with pytest.raises(ValueError, match="did you mean `rmsprop`"):
        build_optimizer("rmsprob", [torch.nn.Parameter(torch.zeros(2))], {})


def test_all_errors_are_reported_together() -> None:
    with pytest.raises(ValueError) as info:
        build_optimizer("sgd", [torch.nn.Parameter(torch.zeros(2))],
                        {"lr": -1.0, "momentum": 2.0, "bogus": 1})
    lines = str(info.value).splitlines()
    assert len(lines) == 3


def test_int_is_accepted_for_float() -> None:
    opt = build_optimizer("sgd", [torch.nn.Parameter(torch.zeros(2))], {"lr": 1})
    assert opt.param_groups[0]["lr"] == 1.0


def test_classes_validate_their_own_arguments() -> None:
    ps = [torch.nn.Parameter(torch.zeros(2))]
    for kw, word in (({"lr": -1.0}, "learning rate"), ({"lr": 0.1, "momentum": 1.0}, "momentum"),
                     ({"lr": 0.1, "weight_decay": -1.0}, "weight_decay"),
                     ({"lr": 0.1, "trust_coefficient": 0.0}, "trust_coefficient")):
        with pytest.raises(ValueError, match=f"invalid {word} "):
            LARS(ps, **kw)
    for kw, word in (({"lr": -1.0}, "learning rate"), ({"betas": (0.9, 1.0)}, "betas"), ({"eps": 0.0}, "eps"),
                     ({"weight_decay": -0.1}, "weight_decay")):
        with pytest.raises(ValueError, match=f"invalid {word} "):
            LAMB(ps, **kw)


# --- LARS / LAMB behaviour ------------------------------------------------------------------

def _one_step(opt_cls, w: torch.Tensor, g: torch.Tensor, **kw) -> torch.Tensor:
    p = torch.nn.Parameter(w.clone())
    opt = opt_cls([p], **kw)
    p.grad = g.clone()
    opt.step()
    return p.detach() - w


def test_lars_step_is_invariant_to_gradient_scale() -> None:
    """wd = 0, μ = 0: ‖Δw‖ = lr·trust·‖w‖·‖g‖/(‖g‖ + eps) ≈ lr·trust·‖w‖ for any ‖g‖."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    kw = dict(lr=1e-6, momentum=0.0, weight_decay=0.0, trust_coefficient=1e6, eps=1e-12)
    steps = [_one_step(LARS, w, g * scale, **kw) for scale in (1e-3, 1.0, 1e3)]
    for d in steps:
        assert math.isclose(float(d.norm()), float(w.norm()), rel_tol=1e-8)
        torch.testing.assert_close(d, steps[1], rtol=1e-8, atol=0)
    # direction is −g
    cos = float((d * -g).sum() / (d.norm() * g.norm()))
    assert math.isclose(cos, 1.0, rel_tol=1e-12)


def test_lars_excluded_bias_takes_a_plain_momentum_step() -> None:
    w = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    g = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    d = _one_step(LARS, w, g, lr=0.1, weight_decay=0.5, trust_coefficient=0.01)
    torch.testing.assert_close(d, -0.1 * g, rtol=0, atol=1e-15)
    d = _one_step(LARS, w, g, lr=0.1, weight_decay=0.5, trust_coefficient=0.01,
                  exclude_bias_and_norm=False)
    local = 0.01 * w.norm() / (g.norm() + 0.5 * w.norm() + 1e-8)
    torch.testing.assert_close(d, -0.1 * local * (g + 0.5 * w), rtol=1e-12, atol=0)


def test_lars_zero_gradient_or_weight_gives_local_rate_one() -> None:
    w = torch.zeros(3, 3, dtype=torch.float64)
    g = torch.ones(3, 3, dtype=torch.float64)
    torch.testing.assert_close(_one_step(LARS, w, g, lr=0.1, momentum=0.0), -0.1 * g)
    d = _one_step(LARS, torch.ones(3, 3, dtype=torch.float64), torch.zeros(3, 3,
                  dtype=torch.float64), lr=0.1, weight_decay=0.1)
    torch.testing.assert_close(d, -0.1 * 0.1 * torch.ones(3, 3, dtype=torch.float64))


def test_lamb_moves_each_tensor_by_lr_times_its_norm() -> None:
    """φ·‖r‖ = ‖w‖, so every tensor with w ≠ 0 moves by exactly lr·‖w‖ at every step."""
    model = _model().double()
    opt = LAMB(model.parameters(), lr=0.01, weight_decay=0.1)
    x = torch.linspace(-1, 1, 20, dtype=torch.float64).reshape(5, 4)
    for _ in range(4):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
        for b, p in zip(before, model.parameters(), strict=True):
            if float(b.norm()) > 0:  # (the LayerNorm bias starts at 0: φ = 1 on step 1)
                moved = float((p.detach() - b).norm())
                assert math.isclose(moved, 0.01 * float(b.norm()), rel_tol=1e-10)


def test_lamb_zero_weight_takes_the_adam_direction() -> None:
    w = torch.zeros(4, dtype=torch.float64)
    g = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    d = _one_step(LAMB, w, g, lr=0.1, eps=1e-6)
    # first step with bias correction: m̂ = g, v̂ = g², r = g/(|g| + eps)
    torch.testing.assert_close(d, -0.1 * g / (g.abs() + 1e-6), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("name", "kw"), [("lars", {"lr": 0.5, "weight_decay": 0.01}),
                                          ("lamb", {"lr": 0.01}),
                                          ("adam", {"lr": 0.01})])
def test_state_dict_round_trip_resumes_exactly(name: str, kw: dict) -> None:
    model = _model()
    opt = build_optimizer(name, model.parameters(), kw)
    for _ in range(3):
        _step(model, opt)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    for _ in range(2):
        _step(model, opt)
    resumed = _model()
    resumed.load_state_dict(saved_model)
    opt2 = build_optimizer(name, resumed.parameters(), kw)
    opt2.load_state_dict(saved_opt)
    for _ in range(2):
        _step(resumed, opt2)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_lars_skips_parameters_without_gradient() -> None:
    a = torch.nn.Parameter(torch.ones(2, 2))
    b = torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([a, b], lr=0.1)
    a.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(b, torch.ones(2, 2)) and not torch.equal(a, torch.ones(2, 2))
    assert b not in opt.state


# --- learning-rate plumbing -----------------------------------------------------------------

def test_apply_lr_scales_every_group() -> None:
    model = _model()
    opt = build_optimizer("sgd", [{"params": list(model[0].parameters()), "lr": 0.4},
                                  {"params": list(model[3].parameters())}], {"lr": 0.1})
    bases = base_lrs(opt)
    assert bases == [0.4, 0.1]
    apply_lr(opt, bases, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.025]
    apply_lr(opt, bases, 1.0)
    assert [g["lr"] for g in opt.param_groups] == bases
    with pytest.raises(ValueError, match="shorter"):  # one base rate per group, or refused
        apply_lr(opt, [0.1], 1.0)


def test_param_record_is_the_registry_contract() -> None:
    p = OPTIMIZERS.get("sgd").param("momentum")
    assert isinstance(p, Param)
    assert p.describe_range() == "[0, 1)"
    assert OPTIMIZERS.get("adam").param("eps").describe_range() == "(0, inf)"
