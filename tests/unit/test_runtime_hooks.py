"""The runtime knows no technique: what a technique adds to a run reaches the loop only through
the Plan's hooks, and when the run evaluates and saves is the graph's cadence ops.

A probe layout (a replica layout registered the way a technique registers one) fills every hook;
the run must then show its metrics, TensorBoard tags, evaluated models, summary entry and file —
without the runtime naming it. The cadence tests edit the graph's `eval` and `checkpoint` ops and
see the run follow them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from mrc.api import compile_spec, train
from mrc.ir.cadence import Checkpoint, Evaluate
from mrc.ir.graph import ScheduleGraph
from mrc.lower import replicas
from mrc.lower.plan import Finished
from mrc.runtime.checkpoint import fingerprint, load_checkpoint

SPEC = """\
model mlp(hidden=[8])
data digits(batch=32, val=0.2)
optimizer sgd(lr=0.1)
train(steps=12, seed=0, log_every=3, eval_every=0, device=cpu)
"""


def spec(tmp_path: Path) -> Path:
    path = tmp_path / "probe.mrs"
    path.write_text(SPEC)
    return path


class Probe(replicas.Replicas):
    """The model itself, with every hook a technique may fill."""

    taken = "head.bias"  # the state entry the probe's artifact takes out of final.pt

    def prepare(self, ctx: Any) -> None:
        hooks = ctx.hooks
        hooks.metrics.append(lambda: {"probe": {"x": 1.5}})
        hooks.scalars["probe"] = lambda entry, record: {"probe/x": entry["x"]}
        hooks.eval_models.append(lambda: {"probes": {"copy": self.module}})
        hooks.summaries["probe"] = lambda done: {"batch": done.batch, "in_memory": done.splits() is not None}
        hooks.summaries["nothing"] = lambda done: None

        def artifact(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
            return {"probe/taken.pt": {self.taken: state.pop(self.taken)}}
        hooks.artifacts.append(artifact)


def test_a_technique_reaches_the_run_only_through_the_plan_hooks(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replicas, "LAYOUTS", [lambda graph, bound, device: Probe(bound, device)])
    out = tmp_path / "run"
    result = train(spec(tmp_path), out=out, quiet=True)
    logged = [r for r in result.metrics if "loss" in r]
    assert logged and all(r["probe"] == {"x": 1.5} for r in logged)
    evals = [r for r in result.metrics if "val_loss" in r]
    assert evals and all(set(r["probes"]) == {"copy"} for r in evals)
    assert evals[-1]["probes"]["copy"]["val_loss"] == evals[-1]["val_loss"]  # the copy is the model
    summary = json.loads((out / "summary.json").read_text())
    assert summary["probe"] == {"batch": 32, "in_memory": True} and "nothing" not in summary
    assert set(summary["probes"]["copy"]) >= {"train_loss", "train_acc", "val_loss", "val_acc"}
    taken = torch.load(out / "probe" / "taken.pt", weights_only=True)
    final = torch.load(out / "final.pt", weights_only=True)
    assert Probe.taken in taken and Probe.taken not in final and "head.weight" in final
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("probe/x")] == [1.5] * len(logged)


def test_the_graph_lists_its_cadence(tmp_path: Path) -> None:
    graph = compile_spec(spec(tmp_path), ["train.eval_every=4"]).graph
    assert graph.cadence == (Evaluate(every=4), Checkpoint(every=0))
    text = graph.to_text()
    assert "  cadence: eval every=4 steps and at the end\n" in text
    assert "  cadence: checkpoint every=epoch and at the end\n" in text
    again = ScheduleGraph.from_json(graph.to_json())
    assert again.cadence == graph.cadence and again.to_json() == graph.to_json()


def test_the_run_evaluates_and_saves_when_the_graph_says(tmp_path: Path) -> None:
    """The spec says: evaluate and save at each epoch's end (past step 12); the edited graph
    evaluates every 5 steps and saves every 4 — and the run follows the graph."""
    compiled = compile_spec(spec(tmp_path))
    compiled.graph.cadence = (Evaluate(every=5), Checkpoint(every=4))
    out = tmp_path / "edited"
    on_disk: dict[int, int | None] = {}

    def observe(step: int, metrics: dict[str, Any]) -> None:  # the checkpoint on disk at each evaluation
        on_disk[step] = load_checkpoint(out)["step"] if (out / "checkpoint.pt").is_file() else None

    result = train(compiled, out=out, observe=observe, quiet=True)
    assert [r["step"] for r in result.metrics if "val_loss" in r] == [5, 10, 12]
    # the checkpoint due at step 4 is kept once step 5's loss is known (after step 5's evaluation),
    # the one due at 8 once step 9's is
    assert on_disk == {5: None, 10: 8, 12: 8}
    assert result.summary["last_checkpoint_step"] == 12
    compiled.graph.cadence = (Checkpoint(every=4),)  # no eval op: the run never evaluates
    result = train(compiled, out=tmp_path / "no_eval", quiet=True)
    assert not [r for r in result.metrics if "val_loss" in r]


def test_a_resume_may_change_how_often_the_run_evaluates_and_saves(tmp_path: Path) -> None:
    """The cadence changes no parameter: it is not part of the run's fingerprint, so a resumed
    run may evaluate or save on another cadence; any other setting that changes the graph is."""
    path = spec(tmp_path)
    base = compile_spec(path).graph
    assert fingerprint(compile_spec(path, ["train.eval_every=3", "train.checkpoint_every=2"]).graph) == \
        fingerprint(base)
    assert fingerprint(replace(base, cadence=())) == fingerprint(base)
    assert fingerprint(compile_spec(path, ["optimizer.lr=0.2"]).graph) != fingerprint(base)
    train(path, out=tmp_path / "run", stop_at=6, quiet=True)
    resumed = train(path, resume=tmp_path / "run", overrides=["train.eval_every=3"], quiet=True)
    assert [r["step"] for r in resumed.metrics if "val_loss" in r] == [9, 12]


def test_a_finished_run_gives_its_splits_only_in_memory() -> None:
    class Feed:
        in_memory = False

    assert Finished(torch.nn.Linear(1, 1), 8, None, Feed()).splits() is None


def test_ranks_start_from_rank_0s_parameters_in_one_message_per_dtype() -> None:
    """`Trainer._broadcast_state` gives every parameter and buffer rank 0's values — views of a stacked
    tensor, non-contiguous tensors and integer buffers included — in one broadcast per dtype (not one per
    tensor: 2050 at depth 1024)."""
    from types import SimpleNamespace

    import torch
    from torch import nn

    from mrc.runtime.trainer import Trainer

    sent: list[torch.Tensor] = []

    def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:  # rank 0's values: 1, 2, 3, … per message
        sent.append(t)
        return torch.arange(1, t.numel() + 1, dtype=t.dtype).reshape(t.shape)

    storage = torch.zeros(3, 2, 2)
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    model[0].weight = nn.Parameter(torch.zeros(2, 3).t())  # non-contiguous
    model.add_module("layers", nn.ParameterList([nn.Parameter(v) for v in storage.unbind(0)]))  # views of it
    plan = SimpleNamespace(checkpointed_models=lambda: [model])
    Trainer._broadcast_state(SimpleNamespace(world=SimpleNamespace(broadcast=broadcast)), plan)  # type: ignore[arg-type]
    assert len(sent) == 2 and {t.dtype for t in sent} == {torch.float32, torch.int64}
    got = {dtype: [] for dtype in (torch.float32, torch.int64)}
    for t in [*model.parameters(), *model.buffers()]:
        got[t.dtype].append(t.detach().reshape(-1))
    for dtype, parts in got.items():
        assert torch.equal(torch.cat(parts), torch.arange(1, sum(p.numel() for p in parts) + 1, dtype=dtype))
    assert torch.equal(torch.stack(list(model.layers)).detach(), storage)  # written through the views
    assert storage.abs().sum() > 0
