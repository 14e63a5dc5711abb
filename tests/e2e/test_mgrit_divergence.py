"""Convergence control that acts (issue 24, item 4): `on_divergence = warn | more_iterations |
serial` with `check_every = K`. The graph holds every path a step may take (`when=…`); a check
step runs each solve twice its iterations and reads its convergence factor; a factor above 1
doubles the later solves' iterations, or makes the stack run serially — exactly serial training
— from the next step on; the switch is in metrics.jsonl, on the progress line, and in checkpoints."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from mrc.api import SpecText, compile_spec, lower, train
from mrc.cli import main
from mrc.ir.graph import ScheduleGraph
from mrc.techniques import load_all

# coarse Euler steps of 16·h = 8 on a relu stack: the cold first step's solves diverge
# (convergence factors ≈ 24 forward, ≈ 18 adjoint, measured over 2 iterations)
BASE = """model ode_resnet(width=8, depth=64, h=0.5, activation=relu)
data levelsets(batch=64)
optimizer sgd(lr=0.001, momentum=0.9)
train(steps={steps}, seed=0, log_every=1)
"""
SOLVE = ('mgrit "stack" {{ levels = 2; coarsening = 16; relax = F; forward_iters = {iters}; backward_iters = 1; '
         '{extra} }}\n')


def spec(extra: str, steps: int = 6, iters: int = 1) -> SpecText:
    return SpecText(BASE.format(steps=steps) + SOLVE.format(iters=iters, extra=extra))


def solves(graph: ScheduleGraph, which: str) -> list[tuple[str, int, str]]:
    return [(op.kind, op.scope.iteration, op.when) for op in graph.at(0) if getattr(op, "solve", "") == which]


def test_the_graph_shows_every_path_with_its_condition() -> None:
    g = compile_spec(spec("on_divergence = serial; check_every = 5", iters=2)).graph
    fwd = solves(g, "forward")
    assert {(i, w) for _, i, w in fwd if i >= 0} == {(0, "mgrit"), (1, "mgrit"), (2, "check"), (3, "check")}
    assert fwd[-1] == ("mgrit_serial", -1, "serial")
    assert solves(g, "adjoint")[-1] == ("mgrit_serial", -1, "serial")
    text = g.to_text()
    assert "on_divergence=serial check_every=5" in text
    assert "mgrit_serial stack (forward) when=serial" in text and "mgrit_serial stack (adjoint) when=serial" in text
    assert "mgrit_relax F stack (forward) when=check @[level=0 iteration=2]" in text
    load_all()
    assert ScheduleGraph.from_json(g.to_json()).to_text() == text
    # more_iterations: the graph holds up to 4× the spec's iterations, and no serial path
    g = compile_spec(spec("on_divergence = more_iterations; check_every = 5", iters=3)).graph
    fwd = solves(g, "forward")
    assert {(i, w) for _, i, w in fwd} == {*((i, "") for i in range(3)), *((i, "more") for i in range(3, 12))}
    assert {(i, w) for _, i, w in solves(g, "adjoint")} == {(0, ""), *((i, "more") for i in range(1, 4))}
    # the default: no control, and the graph reads as it did before convergence control existed
    g = compile_spec(spec("", iters=2)).graph
    assert {w for _, _, w in solves(g, "forward") + solves(g, "adjoint")} == {""}
    assert "when=" not in g.to_text() and "on_divergence" not in g.to_text()


def test_settings_reach_the_ops_by_set() -> None:
    g = compile_spec(spec(""), ["mgrit.stack.on_divergence=serial", "mgrit.stack.check_every=7"]).graph
    (op,) = [op for op in g.at(0) if op.kind == "mgrit_serial" and op.solve == "forward"]
    assert (op.settings.on_divergence, op.settings.check_every) == ("serial", 7)


def test_the_switch_to_serial_is_in_the_metrics_and_on_the_progress_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "d.mrs"
    path.write_text(spec("on_divergence = serial; check_every = 1").text)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress", "--trace",
                 str(tmp_path / "trace.txt")]) == 0
    err = capsys.readouterr().err
    assert "step 0: the forward MGRIT solve of `stack` diverges" in err and "runs serially from step 1 on" in err
    assert "mgrit stack serial since step 1" in err
    rows = [json.loads(line)["mgrit"]["stack"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if "mgrit" in line]
    assert rows[0]["mode"] == "mgrit" and rows[0]["forward_iters"] == 2 and rows[0]["forward_check"] > 1
    assert all(r == {"mode": "serial", "serial_since": 1} for r in rows[1:]) and len(rows) == 6
    ran = [line.split() for line in (tmp_path / "trace.txt").read_text().splitlines()]
    # step 0 ran the measuring iterations; from step 1 only the serial path runs, forward and back
    assert ["0", "mgrit_relax.stack.forward@L0.i1"] in [r[:2] for r in ran]
    later = [r[1] for r in ran if r[0] == "1" and r[1].startswith("mgrit")]
    assert later == ["mgrit_serial.stack.forward", "mgrit_serial.stack.adjoint"]


@pytest.mark.parametrize("policy", ["serial", "warn"])
def test_the_fallback_trains_exactly_as_serial_training(policy: str) -> None:
    """From the state after the switch, the fallback's steps equal serial training's (the spec
    without `mgrit`) bit for bit; with `warn` the stack stays on MGRIT and they differ (so the
    comparison can fail)."""
    solved = compile_spec(spec(f"on_divergence = {policy}; check_every = 1"))
    serial = compile_spec(SpecText(BASE.format(steps=6)))
    a, b = lower(solved, 6), lower(serial, 6)
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(64, 2, generator=gen) * 2, torch.randint(0, 5, (64,), generator=gen)) for _ in range(5)]
    a.step(0, *batches[0])  # the check step: the solves diverge
    serial.bound.model.load_state_dict(solved.bound.model.state_dict())
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # the optimizer's momentum too (a copy: not shared)
    for t in range(1, 5):
        a.step(t, *batches[t])
        b.step(t, *batches[t])
    got, want = solved.bound.model.state_dict(), serial.bound.model.state_dict()
    same = all(torch.equal(got[k], want[k]) for k in want)
    assert same == (policy == "serial")


def test_resume_keeps_the_switch(tmp_path: Path) -> None:
    path = tmp_path / "d.mrs"
    path.write_text(spec("on_divergence = serial; check_every = 1", steps=8).text)
    whole = train(path, out=tmp_path / "whole", quiet=True)
    train(path, out=tmp_path / "split", stop_at=3, quiet=True)
    resumed = train(path, resume=tmp_path / "split", quiet=True)
    rows = [r["mgrit"]["stack"] for r in resumed.metrics if "mgrit" in r and r["step"] > 3]
    assert len(rows) == 5 and all(r["mode"] == "serial" for r in rows)  # a fresh control would run MGRIT
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_more_iterations_raises_the_iteration_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One forward iteration; the check at step 1 (two iterations) diverges: from step 2 every
    solve runs two, and each later check four."""
    result = train(spec("on_divergence = more_iterations; check_every = 2", steps=6, iters=1), save=False)
    rows = [r["mgrit"]["stack"] for r in result.metrics if "mgrit" in r]
    assert [r["forward_iters"] for r in rows] == [1, 2, 2, 4, 2, 4]
    assert [r["adjoint_iters"] for r in rows] == [1, 2, 2, 4, 2, 4]
    assert rows[1]["forward_check"] > 1 and rows[3]["forward_check"] < 1
    err = capsys.readouterr().err
    assert "step 1: the forward MGRIT solve of `stack` diverges" in err
    assert "its solves run 2× the spec's iterations from step 2 on" in err
    assert "iters×2" in err  # the progress line


@pytest.mark.parametrize(("policy", "iters"), [("more_iterations", [2, 4, 4, 4]), ("warn", [2, 2, 2, 2])])
def test_more_iterations_stops_at_its_cap(policy: str, iters: list[int], monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Every measure says 2 (a solver whose factors are patched): the iterations double at each
    check up to 4× the spec's (the graph's), and there the solve warns and stays; `warn` keeps them."""
    from mrc.techniques.mgrit.solver import MGRIT

    monkeypatch.setattr(MGRIT, "factors", lambda self: [2.0] * (len(self.residuals) - 1))
    result = train(spec(f"on_divergence = {policy}; check_every = 1", steps=4), save=False)
    rows = [r["mgrit"]["stack"] for r in result.metrics if "mgrit" in r]
    assert [r["forward_iters"] for r in rows] == iters
    err = capsys.readouterr().err
    if policy == "more_iterations":
        assert "step 0: the forward MGRIT solve of `stack` diverges" in err and "run 2× the spec's" in err
        assert "step 1: the forward" in err and "run 4× the spec's iterations from step 2 on" in err
        assert "step 2: the forward MGRIT solve of `stack` diverges (convergence factor 2 > 1, measured over 4 " \
               "iterations); its iterations are at their cap (4× the spec's) and stay there" in err
    else:
        assert "run 2×" not in err and "its output is not to be trusted" in err
