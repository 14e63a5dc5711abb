"""Losses other than cross-entropy on several gloo processes equal one process: a data-parallel
regression (`loss mse`, batch 60 cut into shards of 30: each rank's shard mean, weighted by its
share, is the global batch's mean) and a module pipeline with `smooth_l1` local losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gloo_ranks import run_ranks

SPEC = """
model mlp(hidden=[16, 16])
data linear(samples=300, features=5, outputs=3, batch=60)
loss {loss}
optimizer sgd(lr=0.05, momentum=0.9)
train(steps=8, seed=1, log_every=2, dtype="float64")
distributed {mode}
{extra}
"""


def train_here(spec: str) -> dict:
    import mrc.api as mrc

    result = mrc.train(spec, save=False, tensorboard=False)
    return {"params": {k: v.detach().clone() for k, v in result.model.state_dict().items()},
            "losses": [m["loss"] for m in result.metrics if "loss" in m], "summary": result.summary}


@pytest.mark.parametrize(("loss", "mode", "extra"), [
    ("mse", "data", ""),
    ("smooth_l1(beta=0.5)", "pipeline", "modules { split = equal(2)\n transport = none\n regime = parallel }"),
])
def test_two_processes_equal_one(tmp_path: Path, loss: str, mode: str, extra: str) -> None:
    spec = tmp_path / "dp.mrs"
    spec.write_text(SPEC.format(loss=loss, mode=mode, extra=extra))
    one = train_here(str(spec))
    ranks = run_ranks(train_here, 2, str(spec))
    for key, value in one["params"].items():
        torch.testing.assert_close(ranks[0]["params"][key], value, rtol=0, atol=1e-10, msg=key)
    assert ranks[0]["losses"] == pytest.approx(one["losses"], rel=1e-10)
    assert "val_acc" not in ranks[0]["summary"]
