"""The Target: the machine a spec compiles for, decided once at the edge (mrc/target.py).

`detect` reads the launcher's environment and the machine; everything below the edge reads the
Target it is given: the schedule graph carries it, select-kernels chooses every kernel from it
(MGRIT's included, written on the phase ops that the lowering reads), and compiling reads no
environment variable and asks torch nothing about the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from mrc.passes import DEFAULT_PIPELINE

import mrc.target as target_module
from mrc.api import compile_spec, lower, train
from mrc.ir.graph import ScheduleGraph
from mrc.target import Target, TargetError, detect, launcher_place
from mrc.techniques.mgrit.ops import SolvePhase

MGRIT = """model ode_resnet(width=4, depth=8, h=0.1, activation=tanh)
data levelsets(batch=8)
optimizer sgd(lr=0.1)
train(steps=2, seed=0, kernels={kernels})
mgrit "stack" {{ levels = 2; coarsening = 2; relax = F; forward_iters = 1; backward_iters = 1 }}
"""


def spec(tmp_path: Path, kernels: str = "auto") -> Path:
    path = tmp_path / "s.mrs"
    path.write_text(MGRIT.format(kernels=f'"{kernels}"'), encoding="utf-8")
    return path


# ---- made at the edge ---------------------------------------------------------------------


def test_the_launchers_environment_gives_the_world_and_the_rank() -> None:
    assert launcher_place({}) is None
    assert launcher_place({"WORLD_SIZE": "1"}) is None
    assert launcher_place({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == (4, 2, 0)
    assert launcher_place({"WORLD_SIZE": "2", "RANK": "1"}) == (2, 1, 1)
    for env, said in (({"WORLD_SIZE": "two"}, "not a number"), ({"WORLD_SIZE": "2"}, "RANK is not"),
                      ({"WORLD_SIZE": "2", "RANK": "2"}, "not one of")):
        with pytest.raises(TargetError, match=said):
            launcher_place(env)


def test_detect_decides_device_backend_world_and_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    t = detect("auto", "bf16", environ={"WORLD_SIZE": "2", "RANK": "1"})
    assert (t.device, t.precision, t.world, t.rank, t.local_rank, t.backend) == ("cpu", "bf16", 2, 1, 1, "gloo")
    assert not t.leader
    assert detect("cpu", world=3, environ={}) == Target("cpu", "32", False, 3, 0, 0, "gloo")  # --nproc 3
    assert detect("cuda", environ={}).device == "cuda"  # asked for: the runtime says if it cannot run
    has_triton = target_module.importlib.util.find_spec("triton") is not None
    assert detect(environ={"TRITON_INTERPRET": "1"}).triton == has_triton
    assert not detect(environ={}).triton
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    t = detect("auto", environ={})
    assert (t.device, t.backend, t.triton) == ("cuda", "nccl", has_triton)
    assert detect("auto", backend="gloo", environ={}).backend == "gloo"  # `distributed … (backend=gloo)`


def test_a_target_is_checked_when_made() -> None:
    for bad in ({"device": "tpu"}, {"backend": "mpi"}, {"world": 2, "rank": 2}, {"world": 0}):
        with pytest.raises(ValueError):
            Target(**bad)  # type: ignore[arg-type]


def test_importing_the_target_imports_no_torch() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys, mrc.target; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


# ---- passed to compile ----------------------------------------------------------------------


def test_compiling_reads_no_environment_and_asks_torch_nothing(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a Target, compiling reads neither WORLD_SIZE nor CUDA nor Triton: here all three would fail."""
    monkeypatch.setenv("WORLD_SIZE", "bogus")
    monkeypatch.setenv("MRC_KERNELS", "bogus")  # dead: nothing reads it any more

    def asked() -> bool:
        raise AssertionError("torch.cuda.is_available() called below the edge")

    monkeypatch.setattr(torch.cuda, "is_available", asked)
    monkeypatch.setitem(sys.modules, "triton", None)
    given = Target(device="cuda", triton=True, world=1)
    compiled = compile_spec(spec(tmp_path), target=given)
    assert compiled.target is compiled.graph.target is given
    assert {op.kernel for op in compiled.graph.ops() if isinstance(op, SolvePhase)} == {"triton"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Exception, match="WORLD_SIZE='bogus' is not a number"):
        compile_spec(spec(tmp_path))  # without a Target, the edge reads the launcher's environment


def test_the_graph_carries_the_target_through_json(tmp_path: Path) -> None:
    given = Target(device="cuda", precision="bf16", triton=True)
    graph = compile_spec(spec(tmp_path), target=given).graph
    assert (graph.device, graph.precision) == ("cuda", "bf16")
    assert json.loads(graph.to_json())["target"] == {"device": "cuda", "precision": "bf16", "world": 1,
                                                      "backend": "gloo"}
    assert {op.kernel for op in graph.ops() if isinstance(op, SolvePhase)} == {"triton"}  # what Triton changed
    again = ScheduleGraph.from_json(graph.to_json())
    assert (again.device, again.precision) == ("cuda", "bf16") and again.to_text() == graph.to_text()


def test_every_rank_compiles_the_same_schedule(tmp_path: Path) -> None:
    """The graph's JSON (and the fingerprint a checkpoint keeps) leaves out the process's own rank."""
    graphs = [compile_spec(spec(tmp_path), target=Target(world=2, rank=r, local_rank=r)).graph for r in (0, 1)]
    assert graphs[0].to_json() == graphs[1].to_json()


# ---- MGRIT's kernel: chosen by select-kernels, read from the ops ----------------------------


def test_mgrit_regions_run_before_select_kernels() -> None:
    assert DEFAULT_PIPELINE.index("mgrit-regions") < DEFAULT_PIPELINE.index("select-kernels")


@pytest.mark.parametrize(("kernels", "target", "expected"), [
    ("auto", Target(device="cuda", triton=True), "triton"),
    ("triton", Target(device="cuda", triton=True), "triton"),
    ("torch", Target(device="cuda", triton=True), "torch"),
    ("torch.optim", Target(device="cuda", triton=True), "torch"),
    ("auto", Target(device="cuda", triton=False), "torch"),
    ("auto", Target(device="cpu", triton=True), "torch"),  # the interpreter is for tests only
])
def test_select_kernels_chooses_mgrits_kernel(tmp_path: Path, kernels: str, target: Target, expected: str) -> None:
    graph = compile_spec(spec(tmp_path, kernels), target=target).graph
    phases = [op for op in graph.ops() if isinstance(op, SolvePhase)]
    assert phases and {op.kernel for op in phases} == {expected}
    assert ("kernel=triton" in graph.to_text()) == (expected == "triton")


def _propagator_kernels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import mrc.techniques.mgrit.propagate as propagate

    made: list[str] = []
    real = propagate.propagator_for

    def spy(stack: torch.nn.Module, kernel: str = "torch", storage: object = None):
        made.append(kernel)
        return real(stack, kernel, storage)

    monkeypatch.setattr(propagate, "propagator_for", spy)
    return made


def test_the_lowering_reads_mgrits_kernel_from_the_ops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lowered on the CPU, a graph whose phase ops say `triton` gets a Triton propagator (the
    lowering decides nothing of its own); edit the ops and it follows."""
    made = _propagator_kernels(monkeypatch)
    compiled = compile_spec(spec(tmp_path), target=Target(device="cuda", triton=True))
    lower(compiled, 2, "cpu")
    assert made == ["triton"]
    for p in compiled.graph.patterns():
        for op in [op for op in p.ops() if isinstance(op, SolvePhase)]:
            p.replace(op, replace(op, kernel="torch"))
    compiled.graph.reindex()
    lower(compiled, 2, "cpu")
    assert made == ["triton", "torch"]


def test_kernels_torch_runs_mgrit_on_the_torch_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`kernels = torch` on a target where Triton runs: the phase ops say torch, the lowering's
    propagator is the torch one, and training never reaches a Triton kernel of kernels/mgrit.py."""
    import mrc.kernels.mgrit as mgrit_kernels

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Triton MGRIT kernel was called under kernels = torch")

    monkeypatch.setattr(mgrit_kernels, "dense_step_triton", refused)
    monkeypatch.setattr(mgrit_kernels, "fas_correct_triton", refused)
    made = _propagator_kernels(monkeypatch)
    compiled = compile_spec(spec(tmp_path, "torch"), target=Target(device="cuda", triton=True))
    assert {op.kernel for op in compiled.graph.ops() if isinstance(op, SolvePhase)} == {"torch"}
    result = train(compiled, device="cpu", steps=2, save=False, quiet=True)
    assert result.status == "completed" and made == ["torch"]
