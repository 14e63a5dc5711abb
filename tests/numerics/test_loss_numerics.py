"""The loss a spec names is the loss training minimises, against references written from torch's
functionals and a hand-written loop.

- Each built-in loss (with its settings) lowers to the value of its torch functional: the loss
  logged at step 1 is the loss of the initial model on the first batch.
- A `loss mse` run equals SGD-momentum written by hand on the same data, in float64, to 1e-10
  (as `multirate with k=1 equals plain SGD`).
- Batched brains compute each brain's mean over its own batch: stacked equals one-by-one
  execution, for a built-in (one flattened call) and a user loss (one call per brain).
- Module-wise local losses are the chosen loss of each module's classifier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrc.api import compile_spec, train
from mrc.losses import prepare, scoring

LINEAR = "linear(samples=240, features=5, outputs=3, batch=16)"
SPIRALS = "spirals(samples=240, classes=3, batch=16)"


def write(tmp_path: Path, data: str, loss: str, *, steps: int = 1, extra: str = "",
          optimizer: str = "sgd(lr=0.05, momentum=0.9)", model: str = "mlp(hidden=[16], activation=tanh)") -> Path:
    path = tmp_path / "loss.mrs"
    path.write_text(f"""
model {model}
data {data}
{loss}
optimizer {optimizer}
train(steps={steps}, seed=2, dtype=float64, log_every=1)
{extra}
""")
    return path


def multilabel(tmp_path: Path) -> str:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((240, 5)).astype(np.float32)
    y = (x @ rng.standard_normal((5, 4)) > 0).astype(np.float32)
    np.savez(tmp_path / "tags.npz", x=x, y=y)
    return '"tags.npz"(batch=16)'


CASES = [
    (LINEAR, "loss mse", lambda o, y: F.mse_loss(o, y)),
    (LINEAR, "loss l1", lambda o, y: F.l1_loss(o, y)),
    (LINEAR, "loss smooth_l1", lambda o, y: F.smooth_l1_loss(o, y)),
    (LINEAR, "loss smooth_l1(beta=0.3)", lambda o, y: F.smooth_l1_loss(o, y, beta=0.3)),
    (SPIRALS, "loss cross_entropy", lambda o, y: F.cross_entropy(o, y)),
    (SPIRALS, "loss cross_entropy(label_smoothing=0.2)", lambda o, y: F.cross_entropy(o, y, label_smoothing=0.2)),
    (SPIRALS, "train_smoothing", lambda o, y: F.cross_entropy(o, y, label_smoothing=0.15)),
    (SPIRALS, "loss nll", lambda o, y: F.nll_loss(o, y)),  # the model ends in log_softmax
    ("multilabel", "loss bce_with_logits", lambda o, y: F.binary_cross_entropy_with_logits(o, y)),
    ("multilabel", "loss bce_with_logits(pos_weight=[1, 2, 0.5, 3])",
     lambda o, y: F.binary_cross_entropy_with_logits(o, y, pos_weight=torch.tensor([1, 2, 0.5, 3.0], dtype=o.dtype))),
]


@pytest.mark.parametrize(("data", "loss", "reference"), CASES, ids=[c[1] for c in CASES])
def test_each_builtin_loss_lowers_to_its_functional(tmp_path: Path, data: str, loss: str, reference) -> None:
    data = multilabel(tmp_path) if data == "multilabel" else data
    model = "mlp(hidden=[16], activation=tanh)"
    if loss == "loss nll":  # a model that ends in log_softmax, written as user code
        (tmp_path / "logsoft.py").write_text(
            "import torch\n\ndef net(in_shape, classes):\n"
            "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_shape[0], 16), torch.nn.Tanh(),\n"
            "                               torch.nn.Linear(16, classes), torch.nn.LogSoftmax(1))\n")
        model = '"logsoft.py:net"'
    path = write(tmp_path, data, "" if loss == "train_smoothing" else loss, model=model)
    if loss == "train_smoothing":  # the default cross-entropy with train(label_smoothing)
        path.write_text(path.read_text().replace("log_every=1", "log_every=1, label_smoothing=0.15"))
    compiled = compile_spec(path)
    model_, data_ = compiled.bound.model, compiled.bound.data
    idx = data_.batch_indices(0)[0]
    x, y = data_.train_x[idx].double(), data_.train_y[idx]
    y = y.double() if y.is_floating_point() else y
    with torch.no_grad():
        out = model_(x)
        expected = float(reference(out, y))
    got = train(path, save=False).metrics[0]["loss"]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-14)
    # and the op in the graph carries the choice
    op = next(o for o in compiled.graph.ops() if o.kind == "loss")
    assert op.fn == ("cross_entropy" if loss == "train_smoothing" else loss.split()[1].split("(")[0])


def test_mse_run_equals_a_hand_written_loop(tmp_path: Path) -> None:
    """SGD-momentum by its equations on the mean squared error, b ← μb + g, θ ← θ − lr·b."""
    steps, lr, mu = 40, 0.05, 0.9
    path = write(tmp_path, LINEAR, "loss mse", steps=steps)
    compiled = compile_spec(path)
    model, data = compiled.bound.model, compiled.bound.data
    bufs: dict[str, torch.Tensor] = {}
    t, epoch = 0, 0
    while t < steps:
        for idx in data.batch_indices(epoch):
            if t == steps:
                break
            x, y = data.train_x[idx].double(), data.train_y[idx].double()
            loss = ((model(x) - y) ** 2).mean()
            model.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for name, p in model.named_parameters():
                    bufs[name] = p.grad.clone() if name not in bufs else mu * bufs[name] + p.grad
                    p -= lr * bufs[name]
            t += 1
        epoch += 1
    ref = {k: v.detach().clone() for k, v in model.state_dict().items()}
    got = train(path, save=False).model.state_dict()
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-10, msg=key)


@pytest.mark.parametrize("loss", ["loss smooth_l1(beta=0.5)", 'loss "mine.py:huber"(task=regression, delta=0.7)'])
def test_batched_brains_take_each_brains_own_mean(tmp_path: Path, loss: str) -> None:
    (tmp_path / "mine.py").write_text(
        "import torch.nn.functional as F\n\ndef huber(output, target, delta=1.0):\n"
        "    return F.huber_loss(output, target, delta=delta)\n")
    path = write(tmp_path, LINEAR, loss, steps=13, extra="brain a { every = 1 }\nbrain b { every = 2 }\n"
                 "brain c { every = 4 }\nmerge weighted(weights=[1, 2, 3])")
    batched = compile_spec(path)
    assert any(op.kind == "loss" and len(op.scope.replica) == 3 for op in batched.graph.ops())
    sequential = compile_spec(path, pipeline=["prune-gradients", "group-updates"])
    assert all(len(op.scope.replica) == 1 for op in sequential.graph.ops() if op.kind == "loss")
    a = train(batched, out=tmp_path / "batched")
    b = train(sequential, out=tmp_path / "sequential")
    for key, value in b.model.state_dict().items():
        torch.testing.assert_close(a.model.state_dict()[key], value, rtol=0, atol=1e-10, msg=key)
    for ra, rb in zip(a.metrics, b.metrics, strict=True):
        if "brains" in ra and "loss" in ra:
            assert ra["brains"] == pytest.approx(rb["brains"], rel=1e-10)


def test_module_local_losses_are_the_chosen_loss(tmp_path: Path) -> None:
    """At step 1 each module's logged loss is smooth_l1 of its classifier F_k ∘ G_k on the batch
    (evaluated before any update: the model has no dropout or batch norm)."""
    from mrc.techniques.modules.evaluate import evaluate_modules

    path = write(tmp_path, LINEAR, "loss smooth_l1(beta=0.4)",
                 extra="modules { split = equal(2)\n transport = none\n regime = parallel }",
                 model="mlp(hidden=[16, 16], activation=tanh)")
    compiled = compile_spec(path)
    data = compiled.bound.data
    idx = data.batch_indices(0)[0]
    x, y = data.train_x[idx].double(), data.train_y[idx].double()
    score = scoring(prepare("smooth_l1", [("beta", 0.4)]), "regression")
    expected = evaluate_modules(compiled.bound.graph_module, compiled.graph, x, y, len(y), score)
    rows = train(path, save=False).metrics[0]["modules"]
    for name in ("m0", "m1"):
        assert rows[name]["loss"] == pytest.approx(expected[name]["loss"], rel=1e-12)
