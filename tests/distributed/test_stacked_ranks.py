"""Stacked parameters on several processes (issue 24, item 1): the `stack-params` pass stacks a residual
stack's weights and biases under `distributed layers` and `distributed data` as in one process.

References: the same run per layer (the pipeline without `stack-params`, so nothing is stacked) on the same
ranks — stacking changes no arithmetic, so those comparisons are bitwise — and one-process MGRIT (stacked, as
one process always is) within the tolerance of tests/distributed/test_mgrit_ranks.py. The graph tests pin
where stacking is refused across ranks (brains, module pipelines, clipping moved onto a reduction, an
all-reduce over more than 2 ranks, whose sums would associate by the bucket's layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from gloo_ranks import run_ranks
from mrc.passes import DEFAULT_PIPELINE

from mrc.api import compile_spec
from mrc.techniques.core.tables import STACKED

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ROOT / "specs" / "distributed_layers.mrs"
PIPELINE = ROOT / "specs" / "distributed_pipeline.mrs"
PER_LAYER = [p for p in DEFAULT_PIPELINE if p != "stack-params"]
STEPS = 3

DATA = """model ode_resnet(width=4, depth=8, h=0.1)
data levelsets(batch=32)
optimizer adam(lr=0.01)
train(steps=20, seed=3)
{extra}
"""
BRAINS = """model ode_resnet(width=4, depth=8, h=0.1)
data levelsets(batch=32)
optimizer sgd(lr=0.05)
brain a { every = 1 }
brain b { every = 2 }
merge mean
distributed brains
train(steps=20, seed=3)
"""


def _reason(spec: Path, world: int, *overrides: str) -> str:
    """The stack's entry of the graph's `stacked` table compiled for `world` processes: "" when stacked."""
    layout = compile_spec(spec, ["train.device=cpu", *overrides], world=world).graph.table(STACKED)["stack"]
    assert layout.stacked == (layout.reason == "")
    return layout.reason


def test_several_processes_stack_the_stack_where_it_changes_no_number(tmp_path: Path) -> None:
    """`distributed layers` stacks on 2, 3 and 4 ranks (each element of the gradient sum is nonzero on one
    rank); `distributed data` on 2 (a + b either way), not on 3; brains, module pipelines and clipping (the
    placer moves it onto the reduction) keep the layers' own tensors."""
    for world in (2, 3, 4):
        assert _reason(LAYERS, world) == ""
    header = compile_spec(LAYERS, ["train.device=cpu"], world=2).graph.header()
    assert "  stack stack: N=30 dense stacked weight all[0:30] bias all[0:30]" in header
    assert _reason(LAYERS, 2, "train.grad_clip=1.0") == "gradient clipping"  # on mgrit_sum_grads
    data = tmp_path / "data.mrs"
    data.write_text(DATA.format(extra="distributed data"))
    assert _reason(data, 2) == ""
    assert _reason(data, 3) == "an all-reduce over 3 ranks sums each element in an order its place sets"
    assert _reason(data, 2, "train.grad_clip=1.0") == "gradient clipping"  # on the all_reduce
    assert _reason(PIPELINE, 2) == "module-wise training cuts the model"
    brains = tmp_path / "brains.mrs"
    brains.write_text(BRAINS)
    assert _reason(brains, 2) == "brains hold their own copies"


def _optimized(plan: Any) -> list[torch.Tensor]:
    """The tensors the plan's integrators move: a torch.optim optimizer's, or a fused rule's flat buffer's."""
    return [p for integ in plan.ctx.integrators.values()
            for p in (integ.flat.params if hasattr(integ, "flat") else
                      [p for g in integ.optimizer.param_groups for p in g["params"]])]


def train_layers(steps: int, stacked: bool, kernels: str, dtype: str) -> dict[str, Any]:
    """`steps` steps of specs/distributed_layers.mrs (in `dtype`, updates on `kernels`) at the Plan level on this
    process's world, stacked or per layer: each step's gradients of the stack's layers (`Replicas.gradients`:
    a stacked layer's is its row of its group's), the final parameters, the losses, and the tensors the
    optimizer sees."""
    from mrc.lower import lower
    from mrc.runtime.world import current

    world = current()
    settings = ["train.device=cpu", f"train.kernels={kernels}", f"train.dtype={dtype}"]
    compiled = compile_spec(LAYERS, settings, world=world.size, pipeline=None if stacked else PER_LAYER)
    assert compiled.graph.table(STACKED)["stack"].stacked == stacked
    plan = lower(compiled.graph, compiled.bound, steps)
    data = compiled.bound.data
    batches = data.batch_indices(0)
    grads: list[dict[str, torch.Tensor]] = []
    losses = []
    for t in range(steps):
        idx = batches[t]
        losses.append(float(plan.step(t, data.train_x[idx].to(getattr(torch, dtype)), data.train_y[idx])))
        got = plan.ctx.replicas.gradients()
        grads.append({n: g.detach().clone() for n, g in got.items() if n.startswith("stack.") and g is not None})
    storage = plan.ctx.replicas.storage
    return {"grads": grads, "losses": losses, "stacked": sorted(storage),
            "params": {n: p.detach().clone() for n, p in compiled.bound.model.state_dict().items()},
            "optimized": [tuple(p.shape) for p in _optimized(plan)],
            "group_grads": [tuple(g.grad.shape) for g in storage["stack"].params()] if storage else []}


def both_layouts(steps: int, kernels: str, dtype: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return train_layers(steps, True, kernels, dtype), train_layers(steps, False, kernels, dtype)


@pytest.mark.parametrize(("kernels", "dtype", "tol"), [("torch.optim", "float64", 1e-12), ("torch", "float32", 1e-5)],
                         ids=["torch-optim", "fused-flat-buffer"])  # the fused kernels take float32
def test_two_ranks_stacked_equal_per_layer_bitwise_and_one_process(kernels: str, dtype: str, tol: float) -> None:
    """On 2 gloo ranks, each step's stacked gradients (the sum of the ranks' adjoint blocks) and the parameters
    after 3 steps equal the per-layer run's on the same ranks bit for bit, and one-process MGRIT's (float64:
    1e-12; float32: 1e-5, bench/layers.py's bound);
    the optimizer moves 6 tensors, not 64 — with torch.optim and with the fused update's flat buffer (which
    holds the stacked tensors and their gradients). Fails on the old pass (nothing stacked on 2 ranks), on a sum that
    misses a rank's rows or adds the replicated tensors twice, and on rows put at the wrong layers."""
    one = train_layers(STEPS, True, kernels, dtype)
    assert one["stacked"] == ["stack"]
    for rank, (stacked, per_layer) in enumerate(run_ranks(both_layouts, 2, STEPS, kernels, dtype)):
        assert stacked["stacked"] == ["stack"] and per_layer["stacked"] == []
        assert stacked["optimized"] == [(8, 2), (8,), (30, 8, 8), (30, 8), (5, 8), (5,)]
        assert len(per_layer["optimized"]) == 64
        assert stacked["group_grads"] == [(30, 8, 8), (30, 8)]  # one .grad per stacked tensor
        for t in range(STEPS):
            assert stacked["grads"][t].keys() == per_layer["grads"][t].keys() == one["grads"][t].keys()
            assert len(stacked["grads"][t]) == 60
            for name, g in stacked["grads"][t].items():
                assert torch.equal(g, per_layer["grads"][t][name]), (rank, t, name)
                assert (g - one["grads"][t][name]).abs().max().item() <= tol, (rank, t, name)
        assert stacked["losses"] == per_layer["losses"]
        for name, p in stacked["params"].items():
            assert torch.equal(p, per_layer["params"][name]), (rank, name)
            assert (p - one["params"][name]).abs().max().item() <= tol, (rank, name)
    # the steps moved the parameters: equal parameters are not equal initial ones
    initial = compile_spec(LAYERS, ["train.device=cpu"]).bound.model.state_dict()
    assert max((one["params"][n] - v).abs().max().item() for n, v in initial.items()) > 1e-4


def run_to_files(out: str) -> dict[str, Any]:
    """mrc.api.train of specs/distributed_layers.mrs for 4 steps (a checkpoint at the end): the model's state."""
    import mrc.api as mrc

    result = mrc.train(LAYERS, out=out, stop_at=4, overrides=["train.log_every=1"], tensorboard=False, quiet=True)
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def test_a_two_rank_runs_checkpoint_and_final_pt_load_into_the_per_layer_model(tmp_path: Path) -> None:
    """The checkpoint and final.pt of a stacked run on 2 ranks hold the per-layer model's state_dict keys, and
    load into it (strict) with the ranks' trained parameters (moved from the initial ones: a layer that stopped
    being a view of the stacked storage would save its initial values)."""
    from mrc.runtime.checkpoint import CHECKPOINT, FINAL
    from mrc.safeload import read_weights

    ranks = run_ranks(run_to_files, 2, str(tmp_path / "run"))
    fresh = compile_spec(LAYERS, ["train.device=cpu"]).bound.model  # per layer: nothing lowered it
    initial = {k: v.clone() for k, v in fresh.state_dict().items()}
    keys = list(initial)
    assert any(k.startswith("stack.layers.29.") for k in keys)
    files = [tmp_path / "run" / FINAL, tmp_path / "run" / CHECKPOINT]
    for file, state in zip(files, (read_weights(files[0]), read_weights(files[1])["model"]), strict=True):
        assert list(state) == keys, file
        fresh.load_state_dict(state, strict=True)
        for name, value in fresh.state_dict().items():
            for rank in ranks:
                assert torch.equal(value, rank[name]), (file.name, name)
            if name.startswith("stack."):
                assert not torch.equal(value, initial[name]), (file.name, name)


def test_data_parallel_on_two_ranks_stacked_equals_per_layer_bitwise(tmp_path: Path) -> None:
    """`distributed data` with the stack stacked: the bucket reduces the stacked tensors, and the parameters
    after 3 steps equal the per-layer run's on the same ranks bit for bit."""
    spec = tmp_path / "data.mrs"
    spec.write_text(DATA.format(extra="distributed data"))
    for stacked, per_layer in run_ranks(data_both, 2, str(spec), STEPS):
        assert stacked[1] == 6 and per_layer[1] == 20
        for name, p in stacked[0].items():
            assert torch.equal(p, per_layer[0][name]), name


def data_trained(spec: str, steps: int, stacked: bool) -> tuple[dict[str, torch.Tensor], int]:
    from mrc.lower import lower
    from mrc.runtime.world import current

    compiled = compile_spec(Path(spec), ["train.device=cpu"], world=current().size,
                            pipeline=None if stacked else PER_LAYER)
    plan = lower(compiled.graph, compiled.bound, 20)
    data = compiled.bound.data
    for t in range(steps):
        plan.step(t, *data.batch(0, t))
    return ({k: v.detach().clone() for k, v in compiled.bound.model.state_dict().items()},
            len(_optimized(plan)))


def data_both(spec: str, steps: int) -> tuple[Any, Any]:
    return data_trained(spec, steps, True), data_trained(spec, steps, False)
