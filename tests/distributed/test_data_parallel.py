"""Data-parallel training (`distributed data`) on 2 and 4 gloo processes equals one process with
the same global batch: the same parameters (float64, 1e-10), the same logged losses; a slow
partition's gradients are reduced only on its update steps; resume needs the same world."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gloo_ranks import run_ranks

SPEC = """
model mlp(hidden=[24, 16])
data digits(batch=60, val=0.2)
optimizer sgd(lr=0.05, momentum=0.9, weight_decay=1e-4)
partition head = module("head")
partition body = rest {{ every = {k}{drift} }}
schedule cosine(warmup=3)
train(steps={steps}, seed=1, log_every=4, eval_every=8, checkpoint_every=8, dtype="float64"{extra})
"""


def write(tmp: Path, name: str = "dp.mrs", k: int = 3, drift: str = "", steps: int = 14, extra: str = "") -> Path:
    path = tmp / name
    path.write_text(SPEC.format(k=k, drift=drift, steps=steps, extra=extra))
    return path


def train_here(spec: str, out: str | None, resume: str | None = None, stop_at: int | None = None,
               kernels: str | None = None) -> dict:
    """One run through mrc.api.train (in a rank, or in the test's own process)."""
    import mrc.api as mrc
    from mrc.runtime.world import current

    overrides = [f'train.kernels="{kernels}"'] if kernels else []
    result = mrc.train(spec, out=out, resume=resume, stop_at=stop_at, overrides=overrides, save=out is not None,
                       tensorboard=False)
    losses = [(m["step"], m["loss"]) for m in result.metrics if "loss" in m]
    return {"rank": current().rank,
            "params": {k: v.detach().clone() for k, v in result.model.state_dict().items()},
            "losses": losses, "val_acc": result.summary["val_acc"], "status": result.status}


def trace_reduces(spec: str, steps: int) -> list[tuple[int, str]]:
    """The (step, op id) of every all_reduce op the run executed (its --trace)."""
    import io

    import mrc.api as mrc
    from mrc.lower import lower

    compiled = mrc.compile_spec(spec, training=True)
    plan = lower(compiled.graph, compiled.bound, steps)
    plan.trace = io.StringIO()
    data = compiled.bound.data
    order = data.batch_indices(0)
    x, y = data.train_x.double(), data.train_y
    for t in range(steps):
        idx = order[t]
        plan.step(t, x[idx], y[idx])
    return [(int(line.split()[0]), line.split()[1]) for line in plan.trace.getvalue().splitlines()
            if line.split()[2] == "all_reduce"]


def close(a: dict, b: dict, tol: float = 1e-10) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=tol), (k, (a[k] - b[k]).abs().max().item())


@pytest.mark.parametrize("world", [2, 4])
def test_data_parallel_equals_one_process(tmp_path: Path, world: int) -> None:
    spec = write(tmp_path, drift=", drift = linear" if world == 4 else "")
    one = train_here(str(spec), None)
    ranks = run_ranks(train_here, world, str(spec), str(tmp_path / "run"))
    for r in ranks:
        close(r["params"], one["params"])
        assert r["params"].keys() == one["params"].keys()
    # rank 0 wrote the run: its metrics carry the global batch's losses
    assert ranks[0]["losses"] and len(ranks[0]["losses"]) == len(one["losses"])
    for (s0, l0), (s1, l1) in zip(ranks[0]["losses"], one["losses"], strict=True):
        assert s0 == s1 and abs(l0 - l1) < 1e-9
    assert (tmp_path / "run" / "final.pt").exists() and (tmp_path / "run" / "summary.json").exists()
    saved = torch.load(tmp_path / "run" / "final.pt")
    close(saved, one["params"])


def test_fused_kernel_buckets_equal_one_process(tmp_path: Path) -> None:
    spec = write(tmp_path, k=2, steps=8)
    one = train_here(str(spec), None, kernels="torch")
    ranks = run_ranks(train_here, 2, str(spec), None, None, None, "torch")
    for r in ranks:
        close(r["params"], one["params"])


def test_slow_partition_is_reduced_only_when_it_updates(tmp_path: Path) -> None:
    spec = write(tmp_path, k=3, steps=6)
    got = run_ranks(trace_reduces, 2, str(spec), 6)[0]
    assert got == [(0, "all_reduce.head+body"), (1, "all_reduce.head"), (2, "all_reduce.head"),
                   (3, "all_reduce.head+body"), (4, "all_reduce.head"), (5, "all_reduce.head")]


def test_resume_needs_the_same_world_and_continues_exactly(tmp_path: Path) -> None:
    spec = write(tmp_path)
    out = str(tmp_path / "run")
    whole = run_ranks(train_here, 2, str(spec), None)[0]
    run_ranks(train_here, 2, str(spec), out, None, 8)
    resumed = run_ranks(train_here, 2, str(spec), out, out)
    close(resumed[0]["params"], whole["params"], 0)
    import mrc.api as mrc
    from mrc.runtime.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="2 processes; resume it with the same number"):
        mrc.train(str(spec), resume=out, tensorboard=False)


COMPOSED = {
    "batchnorm": """
model resnet(depth=8, width=4)
data digits(shape=image, batch=30, val=0.2)
optimizer sgd(lr=0.05, momentum=0.9)
partition head = module("head")
partition backbone = rest { every = 2 }
train(steps=6, seed=2, log_every=3, eval_every=3, checkpoint_every=0, dtype="float64")
""",
    "modules": """
model ode_resnet(width=8, depth=6, h=0.2)
data levelsets(batch=40)
optimizer sgd(lr=0.05, momentum=0.9)
train(steps=8, seed=2, log_every=4, eval_every=0, checkpoint_every=0, dtype="float64")
partition heads = module("aux") | module("head")
partition body = rest { every = 2 }
modules {
  split = equal(2)
  aux = linear
  transport = multipliers(lambda0=1, h=0.1, every=2)
}
""",
    "mgrit": """
model ode_resnet(width=8, depth=16, h=0.05)
data levelsets(batch=40)
optimizer sgd(lr=0.05, momentum=0.9)
train(steps=6, seed=2, log_every=3, eval_every=0, checkpoint_every=0, dtype="float64")
mgrit "stack" { levels = 2; coarsening = 4; forward_iters = 1; backward_iters = 1 }
""",
    "brains": """
model mlp(hidden=[16])
data digits(batch=30, val=0.2)
optimizer sgd(lr=0.05, momentum=0.9)
brain fast { every = 1 }
brain slow { every = 2 }
merge mean
train(steps=8, seed=2, log_every=4, eval_every=4, checkpoint_every=0, dtype="float64")
""",
}


@pytest.mark.parametrize("name", sorted(COMPOSED))
def test_data_parallel_composes(tmp_path: Path, name: str) -> None:
    """Batch norm over the whole batch (its running statistics included, and on the steps the
    backbone runs without autograd), module-wise multipliers (λ follows the global CE), MGRIT
    solves per shard and brains each reduce like plain training: one process's parameters on 2
    ranks (batch norm: on 4, with unequal shards)."""
    spec = tmp_path / f"{name}.mrs"
    spec.write_text(COMPOSED[name])
    one = train_here(str(spec), None)
    world = 4 if name == "batchnorm" else 2  # a batch of 30 on 4 ranks: unequal shards 8, 8, 7, 7
    for r in run_ranks(train_here, world, str(spec), None):
        close(r["params"], one["params"])
        assert r["val_acc"] == pytest.approx(one["val_acc"], abs=1e-12)
