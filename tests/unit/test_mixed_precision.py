"""Mixed precision (`train(precision = 32 | bf16 | 16-mixed)`): the checker's forms and
diagnostics, the precision pass and the graph text, the loss scaler's semantics (GradScaler's:
skip on inf/nan, back off, grow after `interval` good steps) and a loss-scaled backward in a
lowered Plan on the CPU (float32 forwards: a power-of-two scale is exact)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mrc.api import compile_spec
from mrc.check.checker import check
from mrc.diagnostics import CompileError, Diagnostic
from mrc.ir.ops import Backward, Forward
from mrc.lower import lower
from mrc.lower.precision import LossScaler, guard, upcast
from mrc.parser import parse, parse_expr

BASE = "model mlp(hidden=[16])\ndata digits(batch=16, limit=128)\noptimizer sgd(lr=0.1, momentum=0.9)\n"


def precision_of(train: str, overrides: dict[str, str] | None = None) -> str:
    sets = {k: parse_expr(v, f"<--set {k}>") for k, v in (overrides or {}).items()}
    return check(parse(BASE + train, "p.mrs"), Path("."), sets).train.precision


def errors(train: str, overrides: dict[str, str] | None = None) -> list[Diagnostic]:
    with pytest.raises(CompileError) as info:
        precision_of(train, overrides)
    return list(info.value.diagnostics)


# ---- the checker -----------------------------------------------------------------------------


@pytest.mark.parametrize(("written", "value"), [
    ("32", "32"), ("bf16", "bf16"), ('"bf16"', "bf16"), ('"16-mixed"', "16-mixed"), ("16-mixed", "16-mixed"),
    ('"32"', "32"),
])
def test_the_forms_precision_takes(written: str, value: str) -> None:
    assert precision_of(f"train(steps=2, precision={written})") == value


def test_the_default_is_32_and_set_overrides_it() -> None:
    assert precision_of("train(steps=2)") == "32"
    assert precision_of("train(steps=2)", {"train.precision": "bf16"}) == "bf16"
    assert precision_of("train(steps=2, precision=bf16)", {"train.precision": "16-mixed"}) == "16-mixed"
    assert precision_of("train(steps=2)", {"train.precision": "32"}) == "32"


@pytest.mark.parametrize(("written", "meant"), [
    ("16", "16-mixed"), ("bf16-mixed", "bf16"), ('"fp16"', "16-mixed"), ("float32", "32"),
])
def test_other_libraries_names_are_refused_with_the_one_meant(written: str, meant: str) -> None:
    (d,) = errors(f"train(steps=2, precision={written})")
    assert "`precision` must be one of `32`, `bf16`, `16-mixed`" in d.message
    assert d.hint == f"did you mean `precision = {meant}`?"
    assert d.span is not None and (d.span.line, d.span.col) == (4, 26)


@pytest.mark.parametrize("written", ["bf32", "[1]", "x - y", "32.5", '"half-precision"', "true"])
def test_anything_else_is_refused_at_its_span(written: str) -> None:
    (d,) = errors(f"train(steps=2, precision={written})")
    assert "precision" in d.message
    assert d.span is not None and d.span.line == 4 and d.span.col == 26


def test_16_mixed_on_the_cpu_is_refused() -> None:
    (d,) = errors("train(steps=2, precision=16-mixed, device=cpu)")
    assert "needs CUDA" in d.message and d.hint == "use `precision = bf16` on the CPU"
    (d,) = errors("train(steps=2, precision=16-mixed)", {"train.device": "cpu"})  # `--device cpu`
    assert "needs CUDA" in d.message
    assert precision_of("train(steps=2, precision=16-mixed, device=cuda)") == "16-mixed"  # checked, not run


@pytest.mark.parametrize("precision", ["bf16", "16-mixed"])
def test_mixed_precision_with_float64_is_refused(precision: str) -> None:
    (d,) = errors(f"train(steps=2, precision={precision}, dtype=float64)")
    assert "cannot combine with `dtype = float64`" in d.message
    assert precision_of("train(steps=2, precision=32, dtype=float64)") == "32"


# ---- the pass and the graph --------------------------------------------------------------------


def spec(tmp_path: Path, train: str = "train(steps=4, seed=0)", extra: str = "") -> Path:
    path = tmp_path / "p.mrs"
    path.write_text(BASE + train + "\n" + extra)
    return path


def test_the_graph_shows_the_precision(tmp_path: Path) -> None:
    path = spec(tmp_path)
    plain = compile_spec(path).graph
    assert plain.precision == "32" and "autocast" not in plain.to_text() and "precision" not in plain.to_text()
    assert not any(op.scaled for op in plain.ops() if isinstance(op, Backward))
    bf16 = compile_spec(path, ["train.precision=bf16"]).graph
    text = bf16.to_text()
    assert "  precision: bf16\n" in text
    assert "forward model [grad {all}] autocast=bf16" in text and " scaled" not in text
    fp16 = compile_spec(path, ["train.precision=16-mixed"]).graph.to_text()
    assert "forward model [grad {all}] autocast=fp16" in fp16 and "backward wrt {all} scaled" in fp16
    # the precision is part of the graph: its JSON form keeps it
    again = type(bf16).from_json(bf16.to_json())
    assert again.precision == "bf16" and again.to_text() == text


def test_evaluation_follows_the_forwards_autocast_not_the_setting(tmp_path: Path) -> None:
    """Evaluation runs in the autocast the graph's forwards train in: a pipeline without the
    precision pass trains in float32, and so evaluates, whatever `train(precision)` says."""
    from mrc.passes import DEFAULT_PIPELINE

    path = spec(tmp_path)
    with_pass = compile_spec(path, ["train.precision=bf16"], training=True)
    without = compile_spec(path, ["train.precision=bf16"], training=True,
                           pipeline=[p for p in DEFAULT_PIPELINE if p != "precision"])
    x = torch.randn(4, 64)
    layer = torch.nn.Linear(64, 8)
    for compiled, dtype in ((with_pass, torch.bfloat16), (without, torch.float32)):
        plan = lower(compiled.graph, compiled.bound, 4)
        with plan.evaluation_precision():
            assert layer(x).dtype == dtype


def test_the_pass_covers_the_forwards_other_passes_make(tmp_path: Path) -> None:
    """freeze-prefix cuts a step's forward in two; both halves run under autocast."""
    path = spec(tmp_path, extra='partition head = module("head") { every = 1 }\n'
                "partition body = rest { every = 3 }\n")
    graph = compile_spec(path, ["train.precision=bf16"]).graph
    forwards = [op for op in graph.ops() if isinstance(op, Forward)]
    assert any(op.stop is not None for op in forwards)  # the cut happened
    assert all(op.autocast == "bf16" for op in forwards)


# ---- the loss scaler ---------------------------------------------------------------------------


def test_the_scaler_skips_a_step_with_an_inf_and_halves_its_scale() -> None:
    s = LossScaler("cpu", init_scale=2.0 ** 16, interval=3)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([2.0, 4.0, 8.0]) * 2.0 ** 16
    s.unscale_([p])
    assert torch.equal(p.grad, torch.tensor([2.0, 4.0, 8.0])) and not s.skip()
    s.update()
    assert s.scale.item() == 2.0 ** 16 and s.growth_tracker.item() == 1
    p.grad = torch.tensor([1.0, math.inf, 0.0])
    s.unscale_([p])
    assert s.skip()
    s.update()
    assert s.scale.item() == 2.0 ** 15 and s.growth_tracker.item() == 0 and s.skipped == 1
    p.grad = torch.tensor([math.nan, 0.0, 0.0])
    s.unscale_([p])
    assert s.skip()
    s.update()
    assert s.scale.item() == 2.0 ** 14 and s.skipped == 2


def test_the_scaler_grows_after_interval_good_steps() -> None:
    s = LossScaler("cpu", init_scale=8.0, interval=4)
    p = torch.nn.Parameter(torch.ones(2))
    scales = []
    for _ in range(9):
        p.grad = torch.ones(2)
        s.unscale_([p])
        s.update()
        scales.append(s.scale.item())
    assert scales == [8.0, 8.0, 8.0, 16.0, 16.0, 16.0, 16.0, 32.0, 32.0]


def test_an_inf_in_any_backward_of_the_step_counts() -> None:
    """found_inf accumulates over the step's backwards (modules, brains) until `update`."""
    s = LossScaler("cpu", init_scale=4.0)
    a, b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    a.grad, b.grad = torch.tensor([math.inf]), torch.tensor([4.0])
    s.unscale_([a])
    s.unscale_([b])
    assert s.skip() and b.grad.item() == 1.0
    s.update()
    b.grad = torch.tensor([4.0])
    s.unscale_([b])
    assert not s.skip()


def test_the_scalers_state_is_plain_numbers_and_round_trips() -> None:
    s = LossScaler("cpu", init_scale=2.0 ** 10, interval=2)
    p = torch.nn.Parameter(torch.ones(1))
    p.grad = torch.ones(1)
    s.unscale_([p])
    s.update()
    state = s.state_dict()
    assert state == {"scale": 1024.0, "growth_tracker": 1, "skipped": 0}
    assert all(type(v) in (int, float) for v in state.values())
    t = LossScaler("cpu")
    t.load_state_dict(state)
    assert t.state_dict() == state


def test_upcast_reaches_into_tuples_and_keeps_float32_objects() -> None:
    x = torch.ones(2, dtype=torch.bfloat16, requires_grad=True)
    y = torch.ones(2)
    out = upcast((x, [x, y]))
    assert out[0].dtype == torch.float32 and out[1][0].dtype == torch.float32 and out[1][1] is y
    out[0].sum().backward()
    assert x.grad is not None
    assert upcast(y) is y


# ---- a loss-scaled backward in a Plan (float32 forwards on the CPU) -----------------------------


def scaled_plan(tmp_path: Path, train: str = "train(steps=6, seed=0, grad_clip=1.0)"):
    c = compile_spec(spec(tmp_path, train))
    for p in c.graph.patterns():
        for op in list(p.of_kind(Backward)):
            p.replace(op, replace(op, scaled=True))
    return c, lower(c.graph, c.bound, 6)


def run(c, plan, steps: int = 6) -> list[float]:
    d = c.bound.data
    out = []
    for t in range(steps):
        idx = d.batch_indices(0)[t]
        out.append(plan.step(t, d.train_x[idx], d.train_y[idx]).item())
    return out


@pytest.mark.parametrize("kernels", ["torch.optim", "torch"])
def test_a_scaled_backward_with_a_power_of_two_scale_is_exact(tmp_path: Path, kernels: str) -> None:
    """Scaling by 2^16 and unscaling is exact in float32, so the run equals the unscaled one bit
    for bit — with the torch.optim integrators and the fused ones (whose gradients are views of
    one flat buffer), and with clipping after the unscale."""
    train = f'train(steps=6, seed=0, grad_clip=0.5, kernels="{kernels}")'
    c0 = compile_spec(spec(tmp_path, train))
    plan0 = lower(c0.graph, c0.bound, 6)
    ref = run(c0, plan0)
    c1, plan1 = scaled_plan(tmp_path, train)
    assert plan1.ctx.scaler is not None and plan0.ctx.scaler is None
    assert run(c1, plan1) == ref
    for (n, a), b in zip(c0.bound.model.state_dict().items(), c1.bound.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    assert plan1.ctx.scaler.skipped == 0 and plan1.ctx.scaler.scale.item() == 2.0 ** 16


def test_a_non_finite_gradient_skips_the_update_and_backs_off(tmp_path: Path) -> None:
    """A batch whose gradients overflow (inputs of 1e38): the step's update is skipped (the
    parameters and the momentum do not move), the scale halves, and the next, finite step trains
    and keeps the scale."""
    c, plan = scaled_plan(tmp_path)
    scaler = plan.ctx.scaler
    d = c.bound.data
    before = {k: v.clone() for k, v in c.bound.model.state_dict().items()}
    momentum = [s["state"] for s in plan.state_dict()["integrators"].values()]
    idx = d.batch_indices(0)[0]
    plan.step(0, d.train_x[idx] * 1e38, d.train_y[idx])
    assert scaler.skipped == 1 and scaler.scale.item() == 2.0 ** 15
    for k, v in c.bound.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [s["state"] for s in plan.state_dict()["integrators"].values()] == momentum
    plan.step(1, d.train_x[idx], d.train_y[idx])
    assert scaler.skipped == 1 and scaler.scale.item() == 2.0 ** 15
    assert any(not torch.equal(v, before[k]) for k, v in c.bound.model.state_dict().items())
    assert plan.state_dict()["scaler"] == {"scale": 2.0 ** 15, "growth_tracker": 1, "skipped": 1}


TECHNIQUES = {
    "modules": ("specs/modules_trgl.mrs", "train(epochs=10, seed=0)"),
    "brains": ("specs/brains_two.mrs", "train(epochs=15, seed=0)"),  # stacked
    "mgrit": ("specs/mgrit_levelsets.mrs", "train(epochs=20, seed=0)"),  # the adjoint solve
    "multirate": ("specs/multirate_layers.mrs", "train(epochs=15, seed=0)"),  # fused kernels, linear drift
}
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(TECHNIQUES))
def test_every_technique_reads_unscaled_gradients(tmp_path: Path, name: str) -> None:
    """Each technique's spec with its backwards edited to `scaled`: module-wise local losses,
    stacked brains, the MGRIT adjoint solve and multirate's fused updates all see the unscaled
    gradients — the run equals the unscaled one bit for bit (a power-of-two scale is exact)."""
    file, train = TECHNIQUES[name]
    text = (ROOT / file).read_text()
    text = text.replace(train, 'train(steps=4, seed=0, kernels="torch")')
    path = tmp_path / "t.mrs"
    path.write_text(text)
    states = []
    for scaled in (False, True):
        c = compile_spec(path, ["train.device=cpu"])
        if scaled:
            for p in c.graph.patterns():
                for op in list(p.of_kind(Backward)):
                    p.replace(op, replace(op, scaled=True))
        plan = lower(c.graph, c.bound, 4)
        assert (plan.ctx.scaler is not None) == scaled
        losses = run(c, plan, 4)
        states.append((losses, {k: v.clone() for k, v in c.bound.model.state_dict().items()}))
    (l0, s0), (l1, s1) = states
    assert l0 == l1
    for k, v in s0.items():
        assert torch.equal(v, s1[k]), k


def test_a_plan_restores_its_scaler(tmp_path: Path) -> None:
    _, plan = scaled_plan(tmp_path)
    plan.ctx.scaler.scale.fill_(512.0)
    plan.ctx.scaler.skipped = 3
    state = plan.state_dict()
    _, again = scaled_plan(tmp_path)
    again.load_state_dict(state)
    assert again.ctx.scaler.state_dict() == {"scale": 512.0, "growth_tracker": 0, "skipped": 3}


def test_guard_leaves_unscaled_programs_alone(tmp_path: Path) -> None:
    c = compile_spec(spec(tmp_path), ["train.precision=bf16"])
    plan = lower(c.graph, c.bound, 2)
    assert plan.ctx.scaler is None
    p = c.graph.stage.patterns[0]
    fns = [lambda env: None] * len(p.ops())
    assert guard(fns, p.ops(), p, plan.ctx) is fns


def test_float16_autocast_on_the_cpu_is_a_lowering_error(tmp_path: Path) -> None:
    from mrc.lower.precision import PrecisionError

    c = compile_spec(spec(tmp_path), ["train.precision=16-mixed", "train.device=auto"])
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: 16-mixed lowers")
    with pytest.raises(PrecisionError, match="needs CUDA"):
        lower(c.graph, c.bound, 2)
