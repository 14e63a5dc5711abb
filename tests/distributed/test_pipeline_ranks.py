"""Module pipelines (`distributed pipeline(micro_batches=M, buffers=sync|stale)`) on 2 and 4 gloo
ranks against one process, at the Plan level.

K = 4 modules of an ODE-style residual network (no batch norm), one residual block each. Every
rank compiles the spec placed on the world, steps its Plan over the run's batches and, at the
end, makes its copy whole (`Plan.synchronize`); rank 0's model is compared with

* sync, M = 1: the one-process parallel regime (torch.equal: the ranks run its very ops);
* sync, M = 2: the same, to 1e-12 in float64 (the micro-batches' share-weighted gradients sum
  to the batch's; the batch of 7 splits 4 + 3, the epoch's last batch of 4 splits 2 + 2);
* sync, M = 2 with the fused SGD kernel (flat gradient buffers): its one-process run, to 1e-12;
* stale, M = 1 and 2: a reference written here from the definition — the first module of rank r
  trains at step t on the detached output (and targets) of rank r−1 at step max(t−1, 0), the
  modules of one rank passing their outputs on within the step.

The run's loss (Σ weight·loss / Σ weight over the ranks) is the one-process step loss, the last
module's. A resnet with batch norm (sync, M = 1, 2 ranks) checks that the buffers are made whole
too.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from gloo_ranks import run_ranks
from torch import nn

from mrc.api import compile_spec
from mrc.lower import lower
from mrc.runtime.world import SOLO
from mrc.techniques.distributed.bind import blocks

SPEC = """
model {model}
data {data}
optimizer sgd(lr=0.1, momentum=0.9)
train(steps={steps}, seed=3, dtype=float64, kernels="{kernels}"{extra})
modules {{ split = equal(4); aux = mlp(hidden=8); transport = fixed(tau=0.5); regime = parallel }}
distributed pipeline(micro_batches=1, buffers=sync)
"""
ODE = "ode_resnet(width=6, depth=4, h=0.5)"
ODE_DATA = "synthetic(shape=[5], classes=3, samples=40, batch=7)"  # 32 training rows: 7+7+7+7+4
RESNET = "resnet(depth=14, width=4)"
RESNET_DATA = "synthetic(shape=[3,8,8], classes=4, samples=40, batch=8)"
STEPS = 6
TAU = 0.5
CONFIGS = {"sync1": [], "sync2": ["distributed.micro_batches=2"], "stale1": ["distributed.buffers=stale"],
           "stale2": ["distributed.buffers=stale", "distributed.micro_batches=2"],
           "fused2": ["distributed.micro_batches=2", "train.kernels=torch"]}


def write(tmp_path: Path, model: str = ODE, data: str = ODE_DATA, kernels: str = "auto", extra: str = "",
          name: str = "") -> Path:
    path = tmp_path / f"{name or 'pipe_' + model.partition('(')[0]}.mrs"
    path.write_text(SPEC.format(model=model, data=data, steps=STEPS, kernels=kernels, extra=extra))
    return path


def batches(data: Any, steps: int, dtype: torch.dtype) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The run's batches: step t is batch t mod spe of epoch t div spe."""
    t = 0
    for epoch in itertools.count():
        for idx in data.batch_indices(epoch):
            if t == steps:
                return
            yield data.train_x[idx].to(dtype), data.train_y[idx]
            t += 1


def run_plan(path: str, overrides: list[str], world: Any = None) -> dict[str, Any]:
    """Compile (placed on the current world), step the Plan over the run, synchronize."""
    compiled = compile_spec(path, overrides, world=None if world is None else world.size)
    plan = lower(compiled.graph, compiled.bound, STEPS, world=world)
    dtype = next(compiled.bound.model.parameters()).dtype
    losses = []
    for t, (x, y) in enumerate(batches(compiled.bound.data, STEPS, dtype)):
        loss = plan.step(t, x, y)
        losses.append((None if loss is None else loss.item(), plan.env.weight))
    metrics = plan.technique_metrics().get("modules", {})
    plan.synchronize()
    return {"state": {k: v.clone() for k, v in compiled.bound.model.state_dict().items()},
            "losses": losses, "modules": sorted(metrics), "metrics": metrics}


def on_ranks(jobs: list[tuple[str, str, str]]) -> dict[str, dict[str, Any]]:
    """Each rank: every job (key, spec path, config of CONFIGS), one after the other (the states
    only on rank 0, to pickle less)."""
    from mrc.runtime import world as worlds

    torch.set_num_threads(1)
    out = {}
    for key, path, name in jobs:
        got = run_plan(path, CONFIGS[name], worlds.current())
        if worlds.current().rank != 0:
            got["state"] = {}
        out[key] = got
    return out


def run_loss(ranks: list[dict[str, Any]], name: str) -> list[float]:
    """The run's loss of each step: Σ weight·loss / Σ weight over the ranks that report one."""
    out = []
    for t in range(STEPS):
        rows = [r[name]["losses"][t] for r in ranks if r[name]["losses"][t][0] is not None]
        out.append(sum(w * v for v, w in rows) / sum(w for _, w in rows))
    return out


def one_process(path: Path, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    torch.set_num_threads(1)
    return run_plan(str(path), list(overrides), SOLO)


# ---- the stale reference, from the definition ----------------------------------------------------


def stale_reference(path: Path, world: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Rank r's first module trains at step t on the output and targets rank r−1 made at step
    max(t−1, 0); within a rank the modules pass their outputs on in the step; every module
    takes one SGD-momentum step on its local loss CE + mean(r²)/(2τ) per step."""
    torch.set_num_threads(1)
    compiled = compile_spec(path, world=1)
    model: nn.Module = copy.deepcopy(compiled.bound.model)
    model.train()
    k_count = 4

    def module(k: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if k == 0:
            h = model.stem(torch.flatten(h, 1))
        r = model.stack.h * model.stack.layers[k](h)
        return h + r, r

    def head(k: int, h: torch.Tensor) -> torch.Tensor:
        return model.aux[k](h) if k < k_count - 1 else model.head(model.drop(torch.flatten(model.pool(h), 1)))

    def params(k: int) -> list[nn.Parameter]:
        parts: list[nn.Module] = [model.stem] if k == 0 else []
        parts += [model.stack.layers[k], model.aux[k] if k < k_count - 1 else model.head]
        return [p for m in parts for p in m.parameters()]

    momentum: dict[int, torch.Tensor] = {}
    owner = blocks(k_count, world)
    before: list[tuple[torch.Tensor, torch.Tensor]] = []  # each rank's output and targets, last step
    losses = []
    for t, (x, y) in enumerate(batches(compiled.bound.data, STEPS, torch.float64)):
        now: list[tuple[torch.Tensor, torch.Tensor]] = []
        grads = []
        for r, (a, b) in enumerate(owner):
            h, targets = (x, y) if r == 0 else (now[r - 1] if t == 0 else before[r - 1])
            for k in range(a, b):
                h, res = module(k, h.detach())
                ce = F.cross_entropy(head(k, h), targets)
                ps = params(k)
                grads.append((ps, torch.autograd.grad(ce + res.pow(2).mean() / (2 * TAU), ps)))
                if k == k_count - 1:
                    losses.append(ce.item())
            now.append((h.detach(), targets))
        before = now
        with torch.no_grad():
            for ps, gs in grads:
                for p, g in zip(ps, gs, strict=True):
                    buf = momentum[id(p)] = g.clone() if id(p) not in momentum else 0.9 * momentum[id(p)] + g
                    p -= 0.1 * buf
    return model.state_dict(), losses


# ---- the tests -----------------------------------------------------------------------------------


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float | None) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if atol is None or not value.is_floating_point():
            assert torch.equal(got[key], value), key
        else:
            torch.testing.assert_close(got[key], value, rtol=0, atol=atol, msg=key)


def test_graph_places_modules_with_sends_recvs_and_phases(tmp_path: Path) -> None:
    """`mrc graph --nproc 2`: modules in rank scopes, a send/recv per micro-batch at the rank
    boundary, micro-batch j's ops in phase j; stale recvs take no edge from this step's send."""
    path = write(tmp_path)
    text = compile_spec(path, ["distributed.micro_batches=2"], world=2).graph.to_text()
    assert "placement: mode=pipeline world=2 backend=auto timeout=300s micro_batches=2 buffers=sync" in text
    assert "rank 0: m0, m1" in text and "rank 1: m2, m3" in text
    assert text.count("= send detached to rank 1 @[module=m1 rank=0") == 2
    assert "= recv micro-batch 2/2 from rank 0 @[module=m2 rank=1 phase=1]" in text
    assert "micro_batch 2/2 @[phase=1]" in text
    assert "× share of micro-batch 2/2 (accumulated) @[module=m3 rank=1 phase=1]" in text
    assert text.count("update_group") == 4  # once per step, not per micro-batch
    stale = compile_spec(path, ["distributed.buffers=stale"], world=4).graph
    recvs = [op for op in stale.stage.patterns[0].ops() if op.kind == "recv"]
    assert [(op.scope.rank, op.source, op.stale) for op in recvs] == [(1, 0, True), (2, 1, True), (3, 2, True)]
    assert all(not stale.stage.patterns[0].inputs(op) for op in recvs)


def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    ode = write(tmp_path)
    resnet = write(tmp_path, RESNET, RESNET_DATA, kernels="torch.optim")
    jobs = [(name, str(ode), name) for name in CONFIGS] + [("bn", str(resnet), "sync1")]
    ranks = run_ranks(on_ranks, 2, jobs, timeout=240)
    solo = one_process(ode)
    # sync, M = 1: the one-process parallel regime, exactly; its loss and each module's metrics
    assert_same(ranks[0]["sync1"]["state"], solo["state"], None)
    assert run_loss(ranks, "sync1") == [v for v, _ in solo["losses"]]
    # every module's metrics row on every rank, gathered from the rank that trains it
    assert [r["sync1"]["modules"] for r in ranks] == [["m0", "m1", "m2", "m3"]] * 2
    for r in ranks:
        for m, row in r["sync1"]["metrics"].items():
            assert row == solo["metrics"][m]
    assert [w for _, w in ranks[0]["sync1"]["losses"]] == [0.0] * STEPS  # m3 is on rank 1
    # sync, M = 2: the same training, up to rounding
    assert_same(ranks[0]["sync2"]["state"], solo["state"], 1e-12)
    assert run_loss(ranks, "sync2") == pytest.approx([v for v, _ in solo["losses"]], abs=1e-12, rel=0)
    # the fused SGD kernel's flat gradients accumulate over the micro-batches as well
    assert_same(ranks[0]["fused2"]["state"], one_process(ode, ("train.kernels=torch",))["state"], 1e-12)
    # stale: the delayed scheme of the definition, with one or two micro-batches
    want, losses = stale_reference(ode, 2)
    for name in ("stale1", "stale2"):
        assert_same(ranks[0][name]["state"], want, 1e-12)
        assert run_loss(ranks, name) == pytest.approx(losses, abs=1e-12, rel=0)
    assert not torch.equal(want["stack.layers.3.weight"], solo["state"]["stack.layers.3.weight"])
    # batch norm: running statistics of every module made whole on rank 0
    assert_same(ranks[0]["bn"]["state"], one_process(resnet)["state"], None)


def test_four_ranks_equal_one_process(tmp_path: Path) -> None:
    ode = write(tmp_path)
    ranks = run_ranks(on_ranks, 4, [(name, str(ode), name) for name in ("sync1", "sync2", "stale1")], timeout=300)
    solo = one_process(ode)
    assert_same(ranks[0]["sync1"]["state"], solo["state"], None)
    assert run_loss(ranks, "sync1") == [v for v, _ in solo["losses"]]
    assert_same(ranks[0]["sync2"]["state"], solo["state"], 1e-12)
    want, losses = stale_reference(ode, 4)
    assert_same(ranks[0]["stale1"]["state"], want, 1e-12)
    assert run_loss(ranks, "stale1") == pytest.approx(losses, abs=1e-12, rel=0)
    assert [r["stale1"]["modules"] for r in ranks] == [["m0", "m1", "m2", "m3"]] * 4


def train_here(spec: str, out: str) -> dict[str, Any]:
    """One run through mrc.api.train (the trainer of several processes), stale buffers."""
    import mrc.api as mrc

    result = mrc.train(spec, out=out, overrides=["distributed.buffers=stale"], tensorboard=False)
    return {"state": {k: v.detach().clone() for k, v in result.model.state_dict().items()},
            "losses": [(m["step"], m["loss"]) for m in result.metrics if "loss" in m],
            "modules": sorted(result.summary.get("modules", {})),
            "logged": [sorted(m["modules"]) for m in result.metrics if "modules" in m]}


def test_trainer_runs_a_stale_pipeline(tmp_path: Path) -> None:
    """Through mrc.api.train on 2 ranks, evaluating and checkpointing (the modules made whole while
    messages are in flight): every rank ends with the stale reference's model, rank 0 logs the
    last module's losses and writes the run."""
    spec = write(tmp_path, extra=", log_every=1, eval_every=2, checkpoint_every=3", name="e2e")
    ranks = run_ranks(train_here, 2, str(spec), str(tmp_path / "run"), timeout=240)
    want, losses = stale_reference(spec, 2)
    for r in ranks:
        assert_same(r["state"], want, 1e-12)
    assert [s for s, _ in ranks[0]["losses"]] == list(range(1, STEPS + 1))
    # each module's metrics row, gathered from the rank that trains it
    assert ranks[0]["logged"] and all(row == ["m0", "m1", "m2", "m3"] for row in ranks[0]["logged"])
    # a rank that reports no loss itself (rank 0 here) logs the run's loss all the same
    assert [v for _, v in ranks[0]["losses"]] == pytest.approx(losses, abs=1e-12, rel=0)
    saved = torch.load(tmp_path / "run" / "final.pt")  # the model, without the auxiliary heads
    assert saved and set(saved) < set(want)
    assert_same(saved, {k: want[k] for k in saved}, 1e-12)


def resume_here(spec: str, out: str, buffers: str, stop_at: int | None, resume: bool) -> dict[str, Any]:
    """A run through mrc.api.train, paused at `stop_at` or resumed from `out`."""
    import mrc.api as mrc

    result = mrc.train(spec, out=out, resume=out if resume else None, stop_at=stop_at,
                       overrides=[] if resume else [f"distributed.buffers={buffers}"], tensorboard=False)
    return {"state": {k: v.detach().clone() for k, v in result.model.state_dict().items()}}


@pytest.mark.parametrize("buffers", ["sync", "stale"])
def test_a_paused_pipeline_resumes_exactly(tmp_path: Path, buffers: str) -> None:
    """Paused at a checkpoint and resumed on 2 ranks, the run ends where the whole run does: the
    checkpoint (written by rank 0) holds the momentum of the modules rank 1 trains and, with
    stale buffers, the message in flight that rank 1 trains on next."""
    spec = write(tmp_path, extra=", log_every=1, eval_every=0, checkpoint_every=2", name=f"resume_{buffers}")
    whole = run_ranks(resume_here, 2, str(spec), str(tmp_path / "whole"), buffers, None, False, timeout=240)
    out = str(tmp_path / "paused")
    run_ranks(resume_here, 2, str(spec), out, buffers, 3, False, timeout=240)
    resumed = run_ranks(resume_here, 2, str(spec), out, buffers, None, True, timeout=240)
    for got, want in zip(resumed, whole, strict=True):
        assert_same(got["state"], want["state"], 0)


def test_micro_batches_are_checked(tmp_path: Path) -> None:
    from mrc.diagnostics import CompileError

    multipliers = write(tmp_path, name="mult").read_text().replace(
        "transport = fixed(tau=0.5)", "transport = multipliers(lambda0=1.0, h=0.1, every=2)")
    (tmp_path / "mult.mrs").write_text(multipliers)
    with pytest.raises(CompileError, match="method of multipliers updates λ from the whole batch's loss"):
        compile_spec(tmp_path / "mult.mrs", ["distributed.micro_batches=2"], world=2)
    compile_spec(tmp_path / "mult.mrs", world=2)  # one micro-batch: fine
    with pytest.raises(CompileError, match="a batch of 7 cannot be split into 8 micro-batches"):
        compile_spec(write(tmp_path), ["distributed.micro_batches=8"], world=2)
