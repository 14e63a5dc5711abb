"""Stacked parameters of a residual stack (issue 24, item 1): a stack's weights in one tensor
[N, …] and its biases in another, each layer's parameter a view of it.

The reference is the same spec trained per layer: the pipeline without the `stack-params` pass
(the stack stays a candidate, so nothing is stacked). Stacking changes no arithmetic, so every
comparison is bitwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mrc.passes import DEFAULT_PIPELINE

from mrc import api
from mrc.models.ode_resnet import build_ode_resnet
from mrc.techniques.core.tables import STACKED, Run

PER_LAYER = [p for p in DEFAULT_PIPELINE if p != "stack-params"]

SPEC = """model ode_resnet(width=4, depth=8, h=0.1{variant})
data {data}
optimizer {optimizer}
train(steps=20, seed=3)
{extra}
"""
LEVELSETS = "levelsets(batch=32)"
DIGITS = "digits(shape=image, batch=16, normalize=true)"
MGRIT = 'mgrit "stack" { levels = 2; coarsening = 2; forward_iters = 2; backward_iters = 1 }'
SGD = "sgd(lr=0.05, momentum=0.9)"
ADAM = "adam(lr=0.01)"


def write(tmp_path: Path, optimizer: str = SGD, extra: str = "", conv: bool = False, name: str = "s.mrs") -> Path:
    path = tmp_path / name
    path.write_text(SPEC.format(variant=", variant=conv" if conv else "", data=DIGITS if conv else LEVELSETS,
                                optimizer=optimizer, extra=extra))
    return path


def trained(spec: Path, steps: int, stacked: bool = True) -> tuple[dict[str, torch.Tensor], api.Compiled, object]:
    """The model's state_dict after `steps` steps of the Plan, stacked or per layer."""
    compiled = api.compile_spec(spec, training=True, pipeline=None if stacked else PER_LAYER)
    plan = api.lower(compiled, 100)
    data = compiled.bound.data
    for t in range(steps):
        plan.step(t, *data.batch(0, t))
    return {k: v.detach().clone() for k, v in compiled.bound.model.state_dict().items()}, compiled, plan


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)  # the same keys, in the same order
    for k in a:
        assert torch.equal(a[k], b[k]), k


def optimized(plan: object) -> list[torch.Tensor]:
    return [p for integ in plan.ctx.integrators.values()  # type: ignore[attr-defined]
            for g in integ.optimizer.param_groups for p in g["params"]]


@pytest.mark.parametrize("optimizer", [SGD, ADAM], ids=["momentum", "adam"])
@pytest.mark.parametrize("extra", ["", MGRIT], ids=["serial", "mgrit"])
def test_stacked_training_equals_per_layer_training_bitwise(tmp_path: Path, optimizer: str, extra: str) -> None:
    spec = write(tmp_path, optimizer, extra)
    stacked, compiled, plan = trained(spec, 4)
    per_layer, _, reference = trained(spec, 4, stacked=False)
    assert_bitwise(stacked, per_layer)
    assert any(not torch.equal(stacked[k], v) for k, v in compiled.bound.model.state_dict().items()) is False
    # the optimizer moves 6 tensors (stem, stack and head: weight and bias each), not 2 + 16 + 2
    assert [tuple(p.shape) for p in optimized(plan)] == [(4, 2), (4,), (8, 4, 4), (8, 4), (5, 4), (5,)]
    assert len(optimized(reference)) == 20


def test_a_conv_stack_trains_stacked_as_per_layer(tmp_path: Path) -> None:
    spec = write(tmp_path, ADAM, conv=True)
    stacked, _, plan = trained(spec, 3)
    per_layer, _, _ = trained(spec, 3, stacked=False)
    assert_bitwise(stacked, per_layer)
    assert (8, 4, 4, 3, 3) in [tuple(p.shape) for p in optimized(plan)]


def test_each_layer_parameter_is_a_view_of_the_stacked_storage(tmp_path: Path) -> None:
    _, compiled, plan = trained(write(tmp_path), 2)
    storage = plan.ctx.replicas.storage["stack"]  # type: ignore[attr-defined]
    layers = compiled.bound.model.stack.layers
    for n, layer in enumerate(layers):
        assert layer.weight.data_ptr() == storage.weight[n].data_ptr()
        assert layer.bias.data_ptr() == storage.bias[n].data_ptr()
    # the serial step writes one gradient per stacked tensor; the layers' own stay empty
    (group, _, _), = storage.weights
    assert group.grad is not None and group.grad.shape == (8, 4, 4)
    assert all(layer.weight.grad is None for layer in layers)


def test_the_graph_shows_the_decision_and_why_not(tmp_path: Path) -> None:
    compiled = api.compile_spec(write(tmp_path))
    assert "  stack stack: N=8 dense stacked weight all[0:8] bias all[0:8]" in compiled.graph.header()
    lars = api.compile_spec(write(tmp_path, "lars(lr=0.1)", name="lars.mrs"))
    assert lars.graph.table(STACKED)["stack"].reason == "rule lars is not elementwise"
    clipped = api.compile_spec(write(tmp_path, extra="", name="clip.mrs"), ["train.grad_clip=1.0"])
    assert clipped.graph.table(STACKED)["stack"].reason == "gradient clipping"


def test_a_partition_that_splits_the_stack_by_layer_trains_each_group_at_its_rate(tmp_path: Path) -> None:
    extra = "partition early = depth(0, 5) { lr = 0.01 }\npartition late = rest { lr = 0.2 }"
    spec = write(tmp_path, extra=extra)
    layout = api.compile_spec(spec).graph.table(STACKED)["stack"]
    assert layout.weights == (Run("early", 0, 4), Run("late", 4, 8))  # depth 0–4: the stem and 4 layers
    stacked, _, plan = trained(spec, 4)
    per_layer, _, _ = trained(spec, 4, stacked=False)
    assert_bitwise(stacked, per_layer)
    shapes = [tuple(p.shape) for p in optimized(plan)]
    assert (4, 4, 4) in shapes and shapes.count((4, 4, 4)) == 2


def test_final_pt_loads_into_the_per_layer_model_and_resume_equals_one_run(tmp_path: Path) -> None:
    spec = write(tmp_path, ADAM, MGRIT)
    whole = api.run(spec, out=tmp_path / "whole", steps=8, quiet=True)
    api.run(spec, out=tmp_path / "split", steps=8, stop_at=3, quiet=True)
    resumed = api.run(spec, resume=tmp_path / "split", quiet=True)
    model = build_ode_resnet((2,), 5, width=4, depth=8, h=0.1)
    model.load_state_dict(torch.load(tmp_path / "whole" / "final.pt"), strict=True)
    assert_bitwise(model.state_dict(), whole.model.state_dict())
    assert_bitwise(resumed.model.state_dict(), whole.model.state_dict())


@pytest.mark.parametrize("runs", [((0, 6),), ((0, 2), (2, 6))], ids=["one-run", "two-runs"])
def test_the_propagator_reads_the_storage_and_writes_one_gradient_per_tensor(runs: tuple[tuple[int, int], ...]) -> None:
    """Over stacked storage, `StackPropagator` copies nothing (an optimizer's in-place step is seen with no
    refresh) and `param_grads` gives each stacked tensor the rows of the per-layer gradients."""
    from mrc.lower.stacked import StackStorage
    from mrc.techniques.core.tables import StackLayout
    from mrc.techniques.mgrit.propagate import StackPropagator

    torch.manual_seed(0)
    model = build_ode_resnet((2,), 3, width=4, depth=6, h=0.1).double()
    reference = StackPropagator(model.stack)
    layout = StackLayout("stack", 6, "dense", "", "", tuple(Run("p", a, b) for a, b in runs),
                         tuple(Run("p", a, b) for a, b in runs))
    storage = StackStorage(model.stack, layout)
    prop = StackPropagator(model.stack, storage=storage)
    assert prop.weight is storage.weight and not prop.is_stale()
    states, lambdas = torch.randn(7, 5, 4, dtype=torch.float64), torch.randn(7, 5, 4, dtype=torch.float64)
    reference.param_grads(states, lambdas)
    prop.param_grads(states, lambdas)
    for group, a, b in storage.weights:
        assert torch.equal(group.grad, torch.stack([layer.weight.grad for layer in model.stack.layers[a:b]]))
    for group, a, b in storage.biases:
        assert torch.equal(group.grad, torch.stack([layer.bias.grad for layer in model.stack.layers[a:b]]))
    with torch.no_grad():
        storage.weights[-1][0].add_(1.0)  # what an optimizer step does
    start = torch.tensor([5])
    u = torch.randn(1, 5, 4, dtype=torch.float64)
    want = u + 0.1 * torch.tanh(u @ model.stack.layers[5].weight.detach().t() + model.stack.layers[5].bias.detach())
    assert torch.allclose(prop.step(start, 1, u), want, rtol=0, atol=1e-14)
    assert not torch.allclose(reference.step(start, 1, u), want)  # the copying propagator has not seen it


@pytest.mark.parametrize("optimizer", [SGD, ADAM], ids=["momentum", "adam"])
@pytest.mark.parametrize("extra", ["", MGRIT], ids=["serial", "mgrit"])
def test_a_fused_flat_buffer_holds_the_stacked_tensors(tmp_path: Path, optimizer: str, extra: str) -> None:
    """`kernels = torch` (the fused update, as CUDA runs it by default): the flat buffer takes over the stacked
    tensors, the layers and the MGRIT solve follow them there, and training equals the per-layer run's."""
    spec = tmp_path / "fused.mrs"
    spec.write_text(write(tmp_path, optimizer, extra).read_text().replace("seed=3)", "seed=3, kernels=torch)"))
    stacked, compiled, plan = trained(spec, 4)
    per_layer, _, _ = trained(spec, 4, stacked=False)
    assert compiled.graph.table(STACKED)["stack"].stacked
    assert_bitwise(stacked, per_layer)
    (integ,) = plan.ctx.integrators.values()  # type: ignore[attr-defined]
    layer = compiled.bound.model.stack.layers[5]
    flat = integ.flat.data
    assert flat.data_ptr() <= layer.weight.data_ptr() < flat.data_ptr() + flat.numel() * flat.element_size()


def test_a_slow_stack_runs_without_autograd_on_fast_steps_as_per_layer(tmp_path: Path) -> None:
    """Multirate with a slow body: on fast steps freeze-prefix cuts the model after the stack (which then runs
    without autograd); the cut finds the stacked stack where the per-layer one was."""
    spec = write(tmp_path, extra='partition body = module("stem") | module("stack") { every = 2 }\n'
                                 "partition head = rest")
    stacked, _, _ = trained(spec, 4)
    per_layer, _, _ = trained(spec, 4, stacked=False)
    assert_bitwise(stacked, per_layer)


def test_the_lowering_follows_the_graphs_table(tmp_path: Path) -> None:
    """The graph is the program: edit the stack's entry to per layer, and the lowered Plan holds it per layer."""
    from dataclasses import replace

    compiled = api.compile_spec(write(tmp_path), training=True)
    assert len(optimized(api.lower(compiled, 10))) == 6
    table = compiled.graph.table(STACKED)
    compiled.graph.set_table(STACKED, {"stack": replace(table["stack"], weights=(), biases=(), reason="edited")})
    plan = api.lower(compiled, 10)
    assert len(optimized(plan)) == 20 and not plan.ctx.replicas.storage  # type: ignore[attr-defined]


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("runs", [((0, 6),), ((0, 2), (2, 6))], ids=["one-run", "two-runs"])
@pytest.mark.parametrize(("batch", "width"), [(7, 5), (16, 8)], ids=["layer-by-layer", "batched"])
def test_a_dense_stack_trains_as_one_autograd_node_with_autograds_numbers(activation: str,
                                                                         runs: tuple[tuple[int, int], ...],
                                                                         batch: int, width: int) -> None:
    """`StackedSteps` in training is one node (`_DenseStepsBackward`, not 6 layers of addmm/tanh/add nodes), and its
    output, input gradient and every group's gradient equal autograd's through the per-layer stack bit for bit:
    the weight gradients made layer by layer (7 × 5) and as one batched product (16 × 8)."""
    import copy

    from mrc.lower.stacked import StackedSteps, StackStorage
    from mrc.techniques.core.tables import StackLayout

    torch.manual_seed(1)
    model = build_ode_resnet((2,), 3, width=width, depth=6, h=0.1, activation=activation)
    reference = copy.deepcopy(model.stack)
    layout = StackLayout("stack", 6, "dense", "", "", tuple(Run("p", a, b) for a, b in runs),
                         tuple(Run("p", a, b) for a, b in runs))
    storage = StackStorage(model.stack, layout)
    steps = StackedSteps(storage)
    y0 = torch.randn(batch, width, requires_grad=True)
    out = steps(y0)
    assert type(out.grad_fn).__name__ == "_DenseStepsBackward"
    y1 = y0.detach().clone().requires_grad_(True)
    want = reference(y1)
    assert torch.equal(out, want)
    g = torch.randn(batch, width)
    out.backward(g)
    want.backward(g)
    assert torch.equal(y0.grad, y1.grad)
    for (group, a, b), which in [*((w, "weight") for w in storage.weights), *((b_, "bias") for b_ in storage.biases)]:
        assert torch.equal(group.grad, torch.stack([getattr(layer, which).grad for layer in reference.layers[a:b]]))
    with torch.no_grad():  # evaluation runs the plain loop, no node
        assert steps(y0).grad_fn is None
