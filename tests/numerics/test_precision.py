"""bf16 mixed precision against float32 on the CPU (issue 21, deliverable 5).

bfloat16 keeps 8 significant bits: every input of a matmul or convolution is rounded with a
relative error up to 2^-9 ≈ 2e-3 (products are accumulated in float32). One step's loss and
gradients of a small network therefore differ from float32's by a few times that — the
tolerances below (test_one_bf16_step_is_close_to_float32) say how far — and they are never
bit-equal (autocast is on). Against torch.autocast written by hand, a step is bit-identical.
Training reaches about float32's accuracy. `precision = 32` adds nothing: no wrapper, no
scaler. Under bf16 the MGRIT solve is a float32 island and equals serial float32 propagation of
the stack to float32 round-off, with the layers around it computed exactly as serial bf16 does.
Module-wise (TRGL) and stacked brains specs train in bf16; resume under bf16 is bit-identical.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mrc.api import compile_spec, lower, train
from mrc.lower.precision import LossScaler

MLP = """model mlp(hidden=[32, 32])
data digits(batch=32, val=0.2, normalize=true)
optimizer sgd(lr=0.05, momentum=0.9)
train(steps={steps}, seed=0, log_every=1000{extra})
"""
CONV = """model resnet(depth=8, width=8)
data digits(shape=image, batch=64, val=0.2)
optimizer sgd(lr=0.1, momentum=0.9, weight_decay=5e-4)
train(epochs={epochs}, seed=0, log_every=1000{extra})
"""
ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "p.mrs") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def first_step(path: Path, precision: str) -> tuple[float, dict[str, torch.Tensor]]:
    c = compile_spec(path, [f"train.precision={precision}"])
    plan = lower(c, 1)
    d = c.bound.data
    idx = d.batch_indices(0)[0]
    loss = plan.step(0, d.train_x[idx], d.train_y[idx])
    assert loss is not None and loss.dtype == torch.float32
    return loss.item(), {n: p.grad.clone() for n, p in c.bound.graph_module.named_parameters()}


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_a_bf16_step_is_torch_autocasts_step(tmp_path: Path, model: str) -> None:
    """The reference written by hand: the model under torch.autocast(bfloat16), the loss in
    float32 on the upcast logits, autograd — the plan's step gives the same loss and gradients
    bit for bit."""
    text = MLP.format(steps=1, extra="") if model == "mlp" else CONV.format(epochs=1, extra="")
    path = write(tmp_path, text)
    c = compile_spec(path, ["train.precision=bf16"])
    reference = copy.deepcopy(c.bound.model)
    plan = lower(c, 1)
    d = c.bound.data
    idx = d.batch_indices(0)[0]
    x, y = d.train_x[idx], d.train_y[idx]
    loss = plan.step(0, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = reference(x)
    assert logits.dtype == torch.bfloat16
    ref = F.cross_entropy(logits.float(), y)
    ref.backward()
    assert loss is not None and loss.dtype == torch.float32 and loss.item() == ref.item()
    got = dict(c.bound.graph_module.named_parameters())
    for name, p in reference.named_parameters():
        assert torch.equal(got[name].grad, p.grad), name


@pytest.mark.parametrize(("model", "deep"), [("mlp", 0.1), ("conv", 0.3)])
def test_one_bf16_step_is_close_to_float32(tmp_path: Path, model: str, deep: float) -> None:
    """The loss within 1e-3 (a few roundings of 2^-9 over a few layers, averaged over the batch);
    the gradients of the head within 1e-2. Deeper gradients differ more: each layer's backward
    rounds again, and a gradient is a sum over the batch with cancellation — batch norm's backward
    subtracts batch means — which turns 2^-9 roundings into up to `deep` of a gradient's norm
    (10-25 % measured at the conv net's stem); their direction stays (cosine > 0.95)."""
    text = MLP.format(steps=1, extra="") if model == "mlp" else CONV.format(epochs=1, extra="")
    path = write(tmp_path, text)
    loss32, grads32 = first_step(path, "32")
    loss16, grads16 = first_step(path, "bf16")
    assert loss16 == pytest.approx(loss32, rel=1e-3)
    assert loss16 != loss32  # autocast is on
    for name, g in grads32.items():
        assert grads16[name].dtype == torch.float32, name  # gradients stay in the parameters' dtype
        rel = ((grads16[name] - g).norm() / g.norm()).item()
        assert rel < (1e-2 if name.startswith("head.") else deep), (name, rel)
        assert F.cosine_similarity(grads16[name].flatten(), g.flatten(), dim=0) > 0.95, name
    assert any(not torch.equal(grads16[n], g) for n, g in grads32.items())


def test_bf16_training_of_a_conv_net_reaches_float32s_accuracy(tmp_path: Path) -> None:
    path = write(tmp_path, CONV.format(epochs=3, extra=""))
    full = train(path)
    half = train(path, overrides=["train.precision=bf16"])
    assert half.summary["precision"] == "bf16" and full.summary["precision"] == "32"
    assert full.summary["val_acc"] > 0.9 and half.summary["val_acc"] > 0.9
    assert abs(half.summary["val_acc"] - full.summary["val_acc"]) < 0.05
    assert all(p.dtype == torch.float32 for p in half.model.parameters())


def test_precision_32_adds_nothing(tmp_path: Path) -> None:
    """No autocast wrapper, no float32 re-cast, no scaler on the 32 path: each step runs the
    ops' own callables, and the run equals the spec without `precision` bit for bit."""
    path = write(tmp_path, MLP.format(steps=5, extra=", precision=32"))
    c = compile_spec(path)
    plan = lower(c, 5)
    assert plan.ctx.scaler is None
    names = {fn.__name__ for stage in plan.programs_of for prog in stage for fn in prog.fns}
    assert not names & {"autocast_op", "float32_inputs", "end_of_step", "unless_inf"}
    bare = write(tmp_path, MLP.format(steps=5, extra=""), "bare.mrs")
    a, b = train(path), train(bare)
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    assert a.summary["train_loss"] == b.summary["train_loss"]


def test_bf16_resume_is_bit_identical(tmp_path: Path) -> None:
    path = write(tmp_path, CONV.format(epochs=1, extra=", precision=bf16, checkpoint_every=5"))
    whole = train(path, out=tmp_path / "whole")
    paused = train(path, out=tmp_path / "split", stop_at=7)
    assert paused.status == "paused"
    resumed = train(path, resume=tmp_path / "split")
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert whole.summary["val_loss"] == resumed.summary["val_loss"]


def test_modulewise_trgl_trains_in_bf16(tmp_path: Path) -> None:
    """Every module's forward and auxiliary head computes in bf16, its local loss (CE and the
    transport cost of its residual branches) in float32; one step is close to float32's."""
    text = (ROOT / "specs/modules_trgl.mrs").read_text().replace("train(epochs=10, seed=0)",
                                                                    "train(steps=1, seed=0)")
    path = write(tmp_path, text)
    graph = compile_spec(path, ["train.precision=bf16"]).graph.to_text()
    assert graph.count("autocast=bf16") == 7  # 4 module forwards, 3 auxiliary heads (m3: the model's own)
    loss32, _ = first_step(path, "32")
    loss16, _ = first_step(path, "bf16")
    assert loss16 == pytest.approx(loss32, rel=1e-3) and loss16 != loss32
    got = train(path, overrides=["train.precision=bf16", "train.steps=20"])
    assert set(got.summary["modules"]) == {"m0", "m1", "m2", "m3"}
    assert all(m["val_acc"] is not None for m in got.summary["modules"].values())


def test_stacked_brains_train_in_bf16(tmp_path: Path) -> None:
    text = (ROOT / "specs/brains_two.mrs").read_text().replace("train(epochs=15, seed=0)",
                                                               "train(steps=8, seed=0)")
    path = write(tmp_path, text)
    c = compile_spec(path, ["train.precision=bf16"])
    assert any(op.kind == "update_group" and op.kernel == "stacked" for op in c.graph.ops())  # batched
    assert "forward model [grad {all}] autocast=bf16 @[brains=fast,slow]" in c.graph.to_text()
    full = train(path)
    half = train(path, overrides=["train.precision=bf16"])
    assert half.summary["train_loss"] == pytest.approx(full.summary["train_loss"], rel=2e-2)
    assert half.summary["train_loss"] != full.summary["train_loss"]
    for n in ("fast", "slow"):
        assert half.summary["brains"][n]["val_acc"] == pytest.approx(full.summary["brains"][n]["val_acc"],
                                                                     abs=0.05)


def test_bf16_mgrit_at_convergence_equals_serial_propagation_in_the_same_precision(tmp_path: Path) -> None:
    """The solve runs in float32 inside a bf16 step: converged, its loss equals that of the serial
    network computed as the plan computes it — stem and head under bf16 autocast, the stack
    serially in float32 — and its gradients equal autograd's through that network (the stack's
    to float32 round-off, the stem's and head's exactly)."""
    path = write(tmp_path, """model ode_resnet(width=4, depth=16, h=0.1, activation=tanh, variant=dense)
data levelsets(batch=8)
optimizer sgd(lr=0.1)
train(steps=1, seed=0, kernels="torch.optim", precision=bf16)
mgrit "stack" { levels = 3; coarsening = 2; relax = FCF; forward_iters = 40; backward_iters = 40; warm_start = false }
""")
    c = compile_spec(path)
    model = copy.deepcopy(c.bound.model)
    plan = lower(c, 1)
    d = c.bound.data
    idx = d.batch_indices(0)[0]
    x, y = d.train_x[idx], d.train_y[idx]
    loss = plan.step(0, x, y)
    got = {n: p.grad for n, p in c.bound.graph_module.named_parameters()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = model.stem(x)
    with torch.autocast("cpu", enabled=False):
        s = model.stack(z.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.head(model.drop(s))
    ref = F.cross_entropy(logits.float(), y)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for name, p in model.named_parameters():
        tol = 1e-7 if name.startswith("stack.") else 0.0
        assert torch.allclose(got[name], p.grad, rtol=0, atol=tol), name
    # and the 32 path of the same solve is untouched: float32 states, no island
    assert c.graph.precision == "bf16"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_16_mixed_trains_on_cuda_with_a_gradient_scaler(tmp_path: Path) -> None:
    path = write(tmp_path, CONV.format(epochs=3, extra=", device=cuda"))
    full = train(path)
    half = train(path, overrides=["train.precision=16-mixed"])
    assert half.summary["precision"] == "16-mixed"
    assert abs(half.summary["val_acc"] - full.summary["val_acc"]) < 0.05
    scale = half.summary["loss_scale"]
    assert scale["scale"] > 0 and scale["skipped_steps"] < 5
    # a checkpoint holds the scaler's state (plain numbers: it loads with weights_only=True)
    ck = train(path, out=tmp_path / "a", overrides=["train.precision=16-mixed", "train.checkpoint_every=5"],
               stop_at=7)
    assert ck.status == "paused"
    state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert set(state["plan"]["scaler"]) == set(LossScaler("cuda").state_dict())
