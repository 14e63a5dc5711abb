"""Brains on ranks (`distributed brains`, mrc/techniques/brains/ranks.py) against one process.

Each case compiles a spec for W processes, steps its Plan over the same batches on W gloo ranks
(each rank steps only its own brains; merges across ranks are collectives), synchronises, and
compares every brain's parameters and buffers, on every rank, with the one-process Plan of the
same spec (float64, 1e-12). The run's loss as the trainer reduces it — Σ_ranks weight·loss /
Σ weight, weight being the number of brains that stepped on the rank — equals the one-process
step loss (the mean over every brain that stepped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from gloo_ranks import run_ranks

from mrc.api import compile_spec
from mrc.ir.graph import ScheduleGraph
from mrc.lower import lower
from mrc.techniques.distributed.tables import PLACEMENT

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "distributed_brains.mrs"
SMALL = ["model.hidden=[8]", "train.dtype=float64", "data.batch=16"]

TEMPLATE = """
model mlp(hidden=[8], activation=tanh)
data spirals(samples=200, batch=10)
optimizer {optimizer}
{brains}
{merge}
distributed brains
train(steps=12, seed=3, dtype=float64)
"""


def write(path: Path, brains: dict[str, str], merge: str, optimizer: str = "sgd(lr=0.05, momentum=0.9)") -> Path:
    text = "\n".join(f"brain {n} {{ {body} }}" for n, body in brains.items())
    path.write_text(TEMPLATE.format(optimizer=optimizer, brains=text, merge=merge))
    return path


def steps_of(spec: str, overrides: list[str], world: int, steps: int, syncs: int = 1,
             resume_at: int | None = None) -> dict[str, Any]:
    """Run `steps` steps of the spec's Plan compiled for `world` processes (in this process when
    world is 1, else as one rank of `world`); every brain's state after a sync, and each step's
    run loss as the trainer reduces it (Σ weight·loss / Σ weight over the ranks). resume_at:
    after that many steps, sync, and go on with a fresh Plan that loads rank 0's state (what
    every rank does when a run resumes from the checkpoint rank 0 wrote)."""
    from mrc.runtime import world as worlds

    w = worlds.current()
    compiled = compile_spec(spec, overrides, world=world)
    data = compiled.bound.data
    dtype = next(compiled.bound.model.parameters()).dtype

    def fresh() -> Any:
        plan = lower(compiled.graph, compiled.bound, steps)
        plan.attach(data.train_x.to(dtype), data.train_y, data.val_x.to(dtype), data.val_y)
        return plan

    plan = fresh()
    ranked = plan.ctx.replicas.ranked
    counted = {"broadcasts": 0}
    if ranked is not None:  # count the sync's broadcasts
        real = ranked.world

        class Counting:
            rank, size, active = real.rank, real.size, real.active

            def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
                counted["broadcasts"] += 1
                return real.broadcast(t, src)

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)
        ranked.world = Counting()
    losses = []
    t, spe = 0, data.steps_per_epoch()
    while t < steps:
        if t == resume_at:
            plan.synchronize()
            state = w.all_gather_object(plan.state_dict() if w.rank == 0 else None)[0]
            plan = fresh()
            plan.load_state_dict(state)
        x, y = data.batch(t // spe, t % spe)
        loss = plan.step(t, x.to(dtype), y)
        weight = plan.env.weight if loss is not None else 0.0
        both = torch.tensor([0.0 if loss is None else float(loss) * weight, weight], dtype=torch.float64)
        w.all_reduce(both)
        losses.append(float(both[0] / both[1]))
        t += 1
    for _ in range(syncs):
        before = counted["broadcasts"]
        plan.synchronize()
        counted.setdefault("per_sync", []).append(counted["broadcasts"] - before)
    return {"brains": plan.ctx.replicas.brain_states(), "losses": losses, "final": plan.final_model().state_dict(),
            "per_sync": counted.get("per_sync", []), "rank": w.rank}


def assert_same(got: dict[str, Any], want: dict[str, Any], tol: float = 1e-12) -> None:
    assert set(got["brains"]) == set(want["brains"])
    for name, state in want["brains"].items():
        for key, value in state.items():
            torch.testing.assert_close(got["brains"][name][key], value, rtol=0, atol=tol, msg=f"{name}.{key}")
    for key, value in want["final"].items():
        torch.testing.assert_close(got["final"][key], value, rtol=0, atol=tol, msg=f"final {key}")
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-12, abs=1e-12)


def check(spec: str | Path, overrides: list[str], world: int, steps: int,
          resume_at: int | None = None) -> list[dict[str, Any]]:
    want = steps_of(str(spec), overrides, 1, steps)
    ranks = run_ranks(steps_of, world, str(spec), overrides, world, steps, 2, resume_at)
    for got in ranks:
        assert_same(got, want)
    return ranks


def test_the_example_spec_equals_one_process() -> None:
    """Four brains (every 1, 1 with its own batches, 2, 4) on 2 ranks, stacked per rank; mean
    merges local to rank 0 and across the ranks."""
    ranks = check(SPEC, SMALL, 2, 10)
    # the sync: one broadcast per rank (one dtype), and none when no step ran since the last
    assert all(r["per_sync"] == [2, 0] for r in ranks)


def test_five_brains_on_four_ranks_equal_one_process(tmp_path: Path) -> None:
    """Uneven blocks (rank 0 holds two brains, the others one each), own batches, mean merges."""
    path = write(tmp_path / "five.mrs", {"a": "every = 1", "b": "every = 1; data = own", "c": "every = 2",
                                         "d": "every = 4", "e": "every = 2; lr = 0.02"}, "merge mean")
    ranks = check(path, [], 4, 9)
    assert all(r["per_sync"] == [4, 0] for r in ranks)


def test_weighted_merges_of_unstacked_brains_average_torch_optim_state(tmp_path: Path) -> None:
    """Adam brains (no stacked form: each its own module and torch.optim), a weighted merge
    with averaged optimizer state over 2 ranks."""
    path = write(tmp_path / "adam.mrs", {"a": "every = 1", "b": "every = 2", "c": "every = 1", "d": "every = 4"},
                 "merge weighted(weights=[0.4, 0.1, 0.3, 0.2], momentum=average)",
                 "adam(lr=0.01)")
    check(path, [], 2, 9)


def test_a_resume_from_rank_0s_state_continues_every_ranks_brains(tmp_path: Path) -> None:
    """Every rank loads the state rank 0 saved after a sync: unstacked (Adam) brains keep their
    optimizer state, which lives on their own rank (stacked brains: the end-to-end test)."""
    path = write(tmp_path / "adam.mrs", {"a": "every = 1", "b": "every = 2", "c": "every = 1", "d": "every = 4"},
                 "merge mean", "adam(lr=0.01)")
    check(path, [], 2, 9, resume_at=5)


def test_best_merges_gather_the_metrics_and_broadcast_the_winner(tmp_path: Path) -> None:
    path = write(tmp_path / "best.mrs", {"a": "every = 1", "b": "every = 2; lr = 0.4", "c": "every = 2",
                                         "d": "every = 1; lr = 0.001"},
                 "merge best(metric=val_loss, momentum=reset)")
    check(path, [], 2, 8)


def test_ema_merges_keep_one_running_average_on_every_rank(tmp_path: Path) -> None:
    path = write(tmp_path / "ema.mrs", {"a": "every = 1", "b": "every = 1", "c": "every = 3"},
                 "merge ema(decay=0.6, momentum=average)")
    check(path, [], 2, 9)


@pytest.mark.parametrize("world", [2, 4])
def test_the_graph_places_each_brain_on_its_rank(world: int) -> None:
    compiled = compile_spec(SPEC, world=world)
    graph = compiled.graph
    owner = dict(graph.table(PLACEMENT).ranks)
    merges = 0
    for op in graph.ops():
        if op.scope.replica:
            assert {owner[b] for b in op.scope.replica} == {op.scope.rank}, op.id
        elif op.kind == "merge":
            merges += 1
            local = len({owner[b] for b in op.brains}) == 1
            assert (op.scope.rank >= 0) == local and (op.collective == "") == local, op.id
    assert merges
    text = graph.to_text()
    assert f"all_reduce sum over {world} ranks" in text
    assert f"placement: mode=brains world={world}" in text
    again = ScheduleGraph.from_json(graph.to_json())  # the placement and collectives survive JSON
    again.verify()
    assert again.to_text() == text


def test_a_best_merge_across_ranks_reads_as_an_all_gather(tmp_path: Path) -> None:
    path = write(tmp_path / "best.mrs", {"a": "every = 1", "b": "every = 2"}, "merge best(metric=val_acc)")
    text = compile_spec(path, world=2).graph.to_text()
    assert "merge {a, b} best(metric=val_acc) all_gather val_acc + broadcast winner over 2 ranks" in text


E2E = """
model mlp(hidden=[8], activation=tanh)
data spirals(samples=200, batch=10)
optimizer {optimizer}
brain a {{ every = 1 }}
brain b {{ every = 2 }}
brain c {{ every = 1; data = own }}
brain d {{ every = 4 }}
merge weighted(weights=[0.4, 0.1, 0.3, 0.2])
distributed brains
train(steps=12, seed=3, dtype=float64, log_every=2, eval_every=4, checkpoint_every=4)
"""


def train_here(spec: str, out: str | None, resume: str | None = None, stop_at: int | None = None) -> dict:
    """One run through mrc.api.train (in a rank, or in the test's own process)."""
    import mrc.api as mrc
    from mrc.runtime.world import current

    result = mrc.train(spec, out=out, resume=resume, stop_at=stop_at, save=out is not None, tensorboard=False)
    brains = {}
    if out is not None and current().rank == 0:
        brains = {p.stem: torch.load(p, weights_only=True) for p in sorted(Path(out, "brains").glob("*.pt"))}
    return {"rank": current().rank, "model": {k: v.clone() for k, v in result.model.state_dict().items()},
            "losses": [(m["step"], m["loss"]) for m in result.metrics if "loss" in m],
            "brain_losses": [(m["step"], m["brains"]) for m in result.metrics if "brains" in m and "loss" in m],
            "val": result.summary["val_loss"], "brains": brains}


def test_training_on_ranks_equals_one_process_and_resumes_exactly(tmp_path: Path) -> None:
    """Through mrc.api.train (stacked SGD-momentum brains): the final (merged) model, the
    logged losses, the summary's validation loss and the saved brains/NAME.pt equal one
    process; a run stopped at a checkpoint and resumed on the same ranks ends where the whole
    run does."""
    spec = tmp_path / "e2e.mrs"
    spec.write_text(E2E.format(optimizer="sgd(lr=0.05, momentum=0.9)"))
    want = train_here(str(spec), str(tmp_path / "one"))
    whole = run_ranks(train_here, 2, str(spec), str(tmp_path / "two"))
    for got in whole:
        for key, value in want["model"].items():
            torch.testing.assert_close(got["model"][key], value, rtol=0, atol=1e-12, msg=key)
        assert [s for s, _ in got["losses"]] == [s for s, _ in want["losses"]]
        assert [v for _, v in got["losses"]] == pytest.approx([v for _, v in want["losses"]], rel=1e-12)
        assert got["val"] == pytest.approx(want["val"], rel=1e-12)
    # each brain's logged loss, gathered from the rank that trains it
    assert [s for s, _ in whole[0]["brain_losses"]] == [s for s, _ in want["brain_losses"]]
    for (_, got_b), (_, want_b) in zip(whole[0]["brain_losses"], want["brain_losses"], strict=True):
        assert got_b.keys() == want_b.keys()
        assert list(got_b.values()) == pytest.approx(list(want_b.values()), rel=1e-12)
    assert set(whole[0]["brains"]) == {"a", "b", "c", "d"}
    for name, state in want["brains"].items():
        for key, value in state.items():
            torch.testing.assert_close(whole[0]["brains"][name][key], value, rtol=0, atol=1e-12)
    out = str(tmp_path / "stopped")
    run_ranks(train_here, 2, str(spec), out, None, 8)
    resumed = run_ranks(train_here, 2, str(spec), out, out)
    for key, value in whole[0]["model"].items():
        torch.testing.assert_close(resumed[0]["model"][key], value, rtol=0, atol=1e-12, msg=key)
