"""Plain training through mrc equals a hand-written PyTorch loop, and resume is exact.

The reference loop is written here from scratch (same model factory, seed, data order and
optimizer equations), so a change in how mrc lowers or runs a plain spec that alters a single
bit of the trajectory fails these tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from mrc.api import compile_spec, train
from mrc.runtime.checkpoint import read_metrics

SPEC = """
model mlp(hidden=[32], dropout=0.1)
data digits(batch=16, val=0.2, limit=400)
optimizer sgd(lr=0.05, momentum=0.9, weight_decay=1e-4, nesterov={nesterov})
schedule {schedule}
train(steps=60, seed=3, log_every=5, checkpoint_every=0, dtype={dtype})
"""


def write(tmp_path: Path, nesterov: str = "false", schedule: str = "constant()",
          dtype: str = "float32") -> Path:
    path = tmp_path / "plain.mrs"
    path.write_text(SPEC.format(nesterov=nesterov, schedule=schedule, dtype=dtype))
    return path


def hand_written(path: Path, steps: int, nesterov: bool) -> dict[str, torch.Tensor]:
    """SGD-momentum by its equations: b ← μb + (g + λθ) (b = g + λθ at the first step),
    θ ← θ − lr·(g + λθ + μb if nesterov else b)."""
    # Compiling seeds torch and initialises the model exactly as `mrc train` does, so the
    # dropout masks drawn below come from the same generator state as mrc's.
    compiled = compile_spec(path)
    model, data = compiled.bound.model, compiled.bound.data
    dtype = next(model.parameters()).dtype
    bufs: dict[str, torch.Tensor] = {}
    lr, mu, wd = 0.05, 0.9, 1e-4
    t, epoch = 0, 0
    while t < steps:
        for idx in data.batch_indices(epoch):
            if t == steps:
                break
            x, y = data.train_x[idx].to(dtype), data.train_y[idx]
            loss = F.cross_entropy(model(x), y)
            model.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for name, p in model.named_parameters():
                    g = p.grad + wd * p
                    if name not in bufs:
                        bufs[name] = g.clone()
                    else:
                        bufs[name].mul_(mu).add_(g)
                    step = g + mu * bufs[name] if nesterov else bufs[name]
                    p.sub_(lr * step)
            t += 1
        epoch += 1
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_plain_sgd_momentum_equals_hand_written_loop(tmp_path: Path) -> None:
    for nesterov in (False, True):
        path = write(tmp_path, "true" if nesterov else "false", dtype="float64")
        ref = hand_written(path, 60, nesterov)
        result = train(path, save=False)
        got = result.model.state_dict()
        for key, value in ref.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=1e-12, msg=key)


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    path = write(tmp_path, schedule="cosine(warmup=10)")
    whole = train(path, out=tmp_path / "whole")
    paused = train(path, out=tmp_path / "split", stop_at=23)
    assert paused.status == "paused" and paused.summary["steps"] == 23
    resumed = train(path, resume=tmp_path / "split")
    assert resumed.summary["steps"] == 60
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the metrics log of the resumed run continues exactly where the first stopped
    m_whole = [m for m in read_metrics(tmp_path / "whole") if "loss" in m]
    m_split = [m for m in read_metrics(tmp_path / "split") if "loss" in m]
    assert [m["step"] for m in m_whole] == [m["step"] for m in m_split]
    assert [m["loss"] for m in m_whole] == [m["loss"] for m in m_split]


def test_extending_a_finished_run_with_constant_schedule_is_exact(tmp_path: Path) -> None:
    path = write(tmp_path)
    whole = train(path, out=tmp_path / "whole", steps=50)
    train(path, out=tmp_path / "first", steps=20)
    resumed = train(path, resume=tmp_path / "first", steps=50, change_length=True)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
