"""Any loss, any task, end to end: a regression run (float targets, `loss mse`), a multi-label run
(`bce_with_logits`, (N, C) 0/1 targets), a user loss and a user metric from files, module-wise
and brains runs with a regression loss — each trains, its loss falls, and what it reports
follows its task (no accuracy for regression anywhere: progress line, metrics.jsonl,
summary.json, TensorBoard scalars)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mrc.api import compile_spec, train
from mrc.cli import main
from mrc.runtime.tensorboard import scalars


def multilabel_npz(path: Path, n: int = 600, features: int = 6, labels: int = 4, seed: int = 0) -> Path:
    """Inputs x (N, features) and 0/1 targets (N, labels): label j is on where (x W)_j > 0."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    w = rng.standard_normal((features, labels))
    np.savez(path, x=x, y=(x @ w > 0).astype(np.float32))
    return path


def spec(tmp_path: Path, body: str, name: str = "task.mrs") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def falls(metrics: list[dict], key: str = "loss") -> tuple[float, float]:
    values = [m[key] for m in metrics if m.get(key) is not None]
    first, last = np.mean(values[:3]), np.mean(values[-3:])
    assert last < 0.5 * first, (first, last)
    return first, last


REGRESSION = """
model mlp(hidden=[32])
data linear(samples=600, features=6, outputs=3, noise=0.05, batch=32)
loss mse
optimizer sgd(lr=0.05, momentum=0.9)
train(epochs=6, seed=0, log_every=5)
"""


def test_regression_trains_and_reports_no_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = spec(tmp_path, REGRESSION)
    status = main(["train", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr()
    assert status == 0, err.err
    assert "val_loss" in err.err + err.out and "val_acc" not in err.err + err.out
    assert "train_acc" not in err.out
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    falls([r for r in records if "loss" in r])
    evals = [r for r in records if "val_loss" in r]
    assert evals and all("val_acc" not in r for r in evals)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "val_acc" not in summary and "train_acc" not in summary
    assert summary["val_loss"] < 0.1  # targets of variance ≈ 1.3, noise 0.05² (a linear fit is easy)
    assert not any(k.endswith("acc") for r in evals for k in scalars(r))


def test_multilabel_trains_with_element_wise_accuracy(tmp_path: Path) -> None:
    multilabel_npz(tmp_path / "tags.npz")
    path = spec(tmp_path, """
model mlp(hidden=[32])
data "tags.npz"(batch=32)
loss bce_with_logits
optimizer adam(lr=0.01)
train(epochs=8, seed=0, log_every=5)
""")
    result = train(path, save=False)
    falls([m for m in result.metrics if "loss" in m])
    s = result.summary
    assert 0.9 < s["val_acc"] <= 1.0 and 0.0 <= s["val_exact"] <= s["val_acc"]
    assert s["val_exact"] > 0.6  # the labels are linear in x: most examples all right


USER_CODE = '''
import torch


def scaled_mse(output, target, scale=1.0):
    return scale * ((output - target) ** 2).mean()


def mae(output, target):
    return (output - target).abs().mean()
'''


def test_user_loss_and_metric_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(USER_CODE)
    path = spec(tmp_path, REGRESSION.replace("loss mse", 'loss "mine.py:scaled_mse"(task=regression, scale=2)')
                + 'metric mae = "mine.py:mae" { mode = min }\n'
                + "early_stopping(metric=val_mae, patience=50)\n")
    result = train(path, save=False)
    falls([m for m in result.metrics if "loss" in m])
    s = result.summary
    assert "val_acc" not in s and s["val_mae"] > 0 and s["best"]["val_mae"] == pytest.approx(
        min(m["val_mae"] for m in result.metrics if "val_mae" in m))
    # scale=2: the reported loss is twice the mean squared error of the trained model
    data = compile_spec(path).bound.data
    with torch.no_grad():
        out = result.model.eval()(data.val_x)
    assert s["val_loss"] == pytest.approx(2 * float(((out - data.val_y) ** 2).mean()), rel=1e-5)
    assert s["val_mae"] == pytest.approx(float((out - data.val_y).abs().mean()), rel=1e-5)


def test_module_wise_with_mse_trains(tmp_path: Path) -> None:
    path = spec(tmp_path, REGRESSION + """
modules {
  split = equal(2)
  transport = none
  regime = parallel
}
""")
    result = train(path, save=False)
    falls([m for m in result.metrics if "loss" in m])
    mods = result.summary["modules"]
    assert set(mods) == {"m0", "m1"} and all("val_acc" not in m and m["val_loss"] < 1.0 for m in mods.values())
    rows = [m["modules"] for m in result.metrics if "modules" in m]
    falls([r["m0"] for r in rows])  # the first module's own (auxiliary) regression loss falls too


def test_brains_with_mse_train_and_merge(tmp_path: Path) -> None:
    path = spec(tmp_path, REGRESSION + """
brain fast { every = 1 }
brain slow { every = 2 }
merge best(metric=val_loss)
""")
    result = train(path, save=False)
    falls([m for m in result.metrics if "loss" in m])
    brains = result.summary["brains"]
    assert set(brains) == {"fast", "slow"} and all("val_acc" not in b for b in brains.values())


def test_mgrit_with_mse_equals_serial_at_convergence(tmp_path: Path) -> None:
    """A regression run whose residual stack is solved by MGRIT (enough iterations to converge)
    follows the serial run: the loss op is the same, only the stack's solve differs."""
    serial = """
model ode_resnet(width=6, depth=8, h=0.05, activation=tanh)
data surface(samples=300, batch=30)
loss mse
optimizer adam(lr=0.01)
train(steps=6, seed=0, dtype=float64, log_every=1)
"""
    mgrit = serial + 'mgrit "stack" { levels = 2\n coarsening = 2\n forward_iters = 20\n backward_iters = 20 }\n'
    a = train(spec(tmp_path, serial, "serial.mrs"), save=False)
    b = train(spec(tmp_path, mgrit, "mgrit.mrs"), save=False)
    assert "val_acc" not in b.summary
    for key, value in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[key], value, rtol=0, atol=1e-8, msg=key)


def test_regression_evaluation_sets_report_loss_and_user_metrics(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(USER_CODE)
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "extra.npz", x=rng.standard_normal((40, 6)).astype(np.float32),
             y=rng.standard_normal((40, 3)).astype(np.float32))
    np.savez(tmp_path / "wrong.npz", x=rng.standard_normal((40, 6)).astype(np.float32),
             y=rng.standard_normal((40, 2)).astype(np.float32))
    path = spec(tmp_path, REGRESSION + 'metric mae = "mine.py:mae" { mode = min }\neval extra = "extra.npz"\n'
                "early_stopping(metric=extra.mae, patience=50)\n")
    s = train(path, save=False).summary
    assert set(s["evals"]["extra"]) == {"loss", "mae"} and s["best"]["extra.mae"] > 0
    bad = spec(tmp_path, REGRESSION + 'eval extra = "wrong.npz"\n', "bad.mrs")
    assert main(["check", str(bad)]) == 2


def test_a_user_loss_that_raises_in_training_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.py").write_text("def loss(output, target):\n"
                                     "    if len(output) > 2:  # passes the check at binding (2 examples)\n"
                                     "        raise ValueError('boom')\n"
                                     "    return ((output - target) ** 2).mean()\n")
    path = spec(tmp_path, REGRESSION.replace("loss mse", 'loss "bad.py:loss"(task=regression)'))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f'bad.py:loss raised ValueError: boom (at {tmp_path / "bad.py"}:3)' in err


STREAMED_REGRESSION = '''
import numpy as np
import torch
from torch.utils.data import Dataset


class Pairs(Dataset):
    """Inputs (6,) and float targets (3,) of y = x A + noise, one pair per index."""

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((n, 6)).astype(np.float32)
        a = np.random.default_rng(0).standard_normal((6, 3))
        self.y = (self.x @ a + 0.05 * rng.standard_normal((n, 3))).astype(np.float32)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), self.y[i]


def make():
    return Pairs(480, 1), Pairs(120, 2)
'''


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_regression_dataset_trains_as_the_same_data_in_memory(tmp_path: Path, workers: int) -> None:
    """Float targets through a DataLoader: a Dataset of (x, y) pairs with y ∈ R³ trains with
    `loss mse`, its loss falls, and it ends with the parameters of the same Dataset loaded into
    memory once (`stream = false`)."""
    (tmp_path / "pairs.py").write_text(STREAMED_REGRESSION)
    body = '''
model mlp(hidden=[16])
data "pairs.py:make"(batch=32, STREAM)
loss mse
optimizer sgd(lr=0.05, momentum=0.9)
train(epochs=4, seed=0, log_every=5)
'''
    streamed = train(spec(tmp_path, body.replace("STREAM", f"stream=true, workers={workers}"), "s.mrs"),
                     save=False)
    memory = train(spec(tmp_path, body.replace("STREAM", "stream=false"), "m.mrs"), save=False)
    falls(streamed.metrics)
    assert "val_acc" not in streamed.summary or streamed.summary["val_acc"] is None
    assert streamed.summary["val_loss"] == pytest.approx(memory.summary["val_loss"], rel=1e-6)
    a, b = streamed.model.state_dict(), memory.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_streamed_target_of_the_wrong_shape_is_refused_before_training(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The loss's check before training reads a streamed Dataset's first targets too: targets
    (3,) against a model that outputs 2 values is one error at the `loss` statement (mse would
    otherwise broadcast them silently)."""
    (tmp_path / "pairs.py").write_text(STREAMED_REGRESSION)
    (tmp_path / "two.py").write_text("from torch import nn\n\n\ndef net():\n    return nn.Linear(6, 2)\n")
    path = spec(tmp_path, '''
model "two.py:net"()
data "pairs.py:make"(batch=32, stream=true)
loss mse
optimizer sgd(lr=0.05)
train(steps=2)
''')
    status = main(["train", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "the model outputs (2,) per example and the targets are (3,)" in err, err
    assert "Traceback" not in err
