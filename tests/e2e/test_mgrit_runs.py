"""Layer-parallel MGRIT end to end (issue 12): broken `mgrit` statements give diagnostics at
their spans, the graph shows the solves and the trace shows them run, warm-started one-shot
training resumes bit-identically, and MGRIT composes with partitions and brains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mrc.api import compile_spec, train
from mrc.cli import main
from mrc.diagnostics import CompileError
from mrc.ir.graph import ScheduleGraph
from mrc.techniques import load_all

SPEC = """model ode_resnet(width=4, depth={depth}, h=0.1)
data levelsets(batch=64)
optimizer sgd(lr=0.05, momentum=0.9)
train(epochs=1, seed=1, log_every=5)
{extra}
mgrit "{stack}" {{ {settings} }}
"""


def write(tmp_path: Path, *, depth: int = 32, stack: str = "stack", settings: str = "levels = 3; coarsening = 4",
          extra: str = "") -> Path:
    path = tmp_path / "g.mrs"
    path.write_text(SPEC.format(depth=depth, stack=stack, settings=settings, extra=extra))
    return path


def error_at(path: Path) -> tuple[str, str]:
    with pytest.raises(CompileError) as err:
        compile_spec(path)
    d = err.value.diagnostics[0]
    line = path.read_text().splitlines()[d.span.line - 1]
    return d.message, line[d.span.col - 1:d.span.end_col - 1]


def test_a_stack_that_is_not_there_or_not_a_stack_is_reported_at_the_target(tmp_path: Path) -> None:
    msg, text = error_at(write(tmp_path, stack="stak"))
    assert "no module `stak`" in msg and text == '"stak"'
    msg, text = error_at(write(tmp_path, stack="head"))
    assert "is not a residual stack" in msg and "Linear" in msg and text == '"head"'


def test_a_hierarchy_that_does_not_fit_the_depth_is_reported(tmp_path: Path) -> None:
    msg, text = error_at(write(tmp_path, depth=8, settings="levels = 4; coarsening = 4"))
    assert "8 layers" in msg and text == "4"


def test_bad_settings_are_checked_before_any_model_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, settings="levels = 3; coarsening = [4, 2, 2]; relax = FG; forward_iters = 0")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "`relax` must be F or FCF" in err and "`forward_iters` = 0 is out of range" in err
    assert "Traceback" not in err


def test_the_graph_shows_the_solves_and_round_trips(tmp_path: Path) -> None:
    compiled = compile_spec(write(tmp_path, settings="levels = 3; coarsening = 2; forward_iters = 2; "
                                  "backward_iters = 1"))
    g = compiled.graph
    kinds = [(op.kind, op.solve, op.scope.level, op.scope.iteration) for op in g.at(0) if op.kind.startswith("mgrit")]
    assert kinds[:7] == [("mgrit_relax", "forward", 0, 0), ("mgrit_restrict", "forward", 0, 0),
                         ("mgrit_relax", "forward", 1, 0), ("mgrit_restrict", "forward", 1, 0),
                         ("mgrit_coarse_solve", "forward", 2, 0), ("mgrit_correct", "forward", 1, 0),
                         ("mgrit_correct", "forward", 0, 0)]
    assert len(kinds) == 7 * 3 and kinds[-1] == ("mgrit_correct", "adjoint", 0, 0)
    assert "mgrit stack: N=32" in g.to_text()
    assert "level=2" in g.to_dot()
    load_all()
    assert ScheduleGraph.from_json(g.to_json()).to_text() == g.to_text()


def test_the_trace_shows_the_solves_run(tmp_path: Path) -> None:
    compiled = compile_spec(write(tmp_path, settings="levels = 2; coarsening = 4; forward_iters = 3; "
                                  "forward_tol = 1e9"))
    trace = tmp_path / "trace.txt"
    train(compiled, save=False, steps=1, trace=trace)
    ran = [line.split()[1] for line in trace.read_text().splitlines()]
    # a tolerance any residual meets: the forward solve stops after its first iteration
    assert ran.count("mgrit_relax.stack.forward@L0.i0") == 1
    assert "mgrit_relax.stack.forward@L0.i1" not in ran
    assert ran.index("forward") < ran.index("mgrit_relax.stack.forward@L0.i0") < ran.index("loss")
    assert ran.index("backward") < ran.index("mgrit_relax.stack.adjoint@L0.i0")


def test_warm_started_training_resumes_bit_identically(tmp_path: Path) -> None:
    path = write(tmp_path, settings="levels = 3; coarsening = 4; forward_iters = 1; backward_iters = 1")
    whole = train(path, out=tmp_path / "whole")
    train(path, out=tmp_path / "split", stop_at=30)
    resumed = train(path, resume=tmp_path / "split")
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_slow_stack_needs_no_adjoint_on_fast_steps(tmp_path: Path) -> None:
    path = write(tmp_path, extra='partition body = module("stem") | module("stack") { every = 3 }\n'
                                 "partition head = rest")
    g = compile_spec(path).graph
    adjoint = [[op for op in g.at(t) if getattr(op, "solve", "") == "adjoint"] for t in range(3)]
    forward = [[op for op in g.at(t) if getattr(op, "solve", "") == "forward"] for t in range(3)]
    assert adjoint[0] and not adjoint[1] and not adjoint[2]
    assert all(forward)
    assert train(path, save=False, steps=6).summary["status"] == "completed"


def test_brains_each_solve_their_own_stack(tmp_path: Path) -> None:
    path = write(tmp_path, extra="brain fast { every = 1 }\nbrain slow { every = 2 }\nmerge mean")
    g = compile_spec(path).graph
    scopes = {op.scope.replica for op in g.ops() if op.kind == "mgrit_relax"}
    assert scopes == {("fast",), ("slow",)}
    result = train(path, save=False, steps=4)
    rows = [r["mgrit"] for r in result.metrics if "mgrit" in r]
    assert rows and set(rows[-1]) == {"fast.stack", "slow.stack"}


def test_a_diverging_solve_is_a_warning_naming_the_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Coarse Euler steps of 16·h = 8 on a relu stack amplify the error: the convergence factor
    exceeds 1 and `mrc train` says so, naming the step."""
    path = tmp_path / "d.mrs"
    path.write_text("model ode_resnet(width=8, depth=64, h=0.5, activation=relu)\ndata levelsets(batch=64)\n"
                    "optimizer sgd(lr=0.001)\ntrain(steps=10, seed=0, log_every=5)\n"
                    'mgrit "stack" { levels = 2; coarsening = 16; relax = F; forward_iters = 3; backward_iters = 2 }\n')
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "mrc: warning: step " in err and "forward MGRIT solve of `stack` diverges" in err
    assert "r_fwd" in err  # the residuals are on the progress line


def test_a_stacked_conv_stack_trains_as_the_per_layer_one_and_saves_the_per_layer_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stacked parameters (issue 24, item 1) end to end: `mrc graph` shows the stack's tensors, `mrc train`
    with MGRIT over a conv stack writes a final.pt that the plain per-layer model loads strictly, equal
    bit for bit to the run of the pipeline without `stack-params`."""
    from mrc.passes import DEFAULT_PIPELINE

    from mrc.api import run
    from mrc.models.ode_resnet import build_ode_resnet

    path = tmp_path / "conv.mrs"
    path.write_text("model ode_resnet(width=4, depth=8, h=0.05, variant=conv)\n"
                    "data digits(shape=image, batch=16, normalize=true)\noptimizer adam(lr=0.01)\n"
                    "train(steps=3, seed=0)\n"
                    'mgrit "stack" { levels = 2; coarsening = 2; forward_iters = 2; backward_iters = 1 }\n')
    assert main(["graph", str(path)]) == 0
    assert "  stack stack: N=8 conv stacked weight all[0:8] bias all[0:8]" in capsys.readouterr().out.splitlines()
    assert main(["train", str(path), "--out", str(tmp_path / "stacked"), "--no-progress"]) == 0
    per_layer = compile_spec(path, training=True, pipeline=[p for p in DEFAULT_PIPELINE if p != "stack-params"])
    run(per_layer, out=tmp_path / "per_layer", quiet=True)
    model = build_ode_resnet((1, 8, 8), 10, width=4, depth=8, h=0.05, variant="conv")
    saved = torch.load(tmp_path / "stacked" / "final.pt")
    model.load_state_dict(saved, strict=True)
    reference = torch.load(tmp_path / "per_layer" / "final.pt")
    assert list(saved) == list(reference) and all(torch.equal(saved[k], reference[k]) for k in saved)
