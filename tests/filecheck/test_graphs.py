"""Golden tests of the printed schedule graph of every spec in specs/ (text form), and checks
that the DOT and JSON forms describe the same graph."""

from __future__ import annotations

import json
from pathlib import Path

import golden as golden_file
import pytest
from spec_runs import SPECS, data_missing

from mrc.api import compile_spec
from mrc.ir.graph import ScheduleGraph
from mrc.techniques.distributed.tables import PLACEMENT

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "graphs"


@pytest.fixture(scope="module", params=SPECS, ids=[s.stem for s in SPECS])
def compiled(request: pytest.FixtureRequest):
    # the device is fixed so the golden graphs are the same on a GPU machine and a CPU one; the
    # specs of several processes are shown placed on 2 (their placement and collectives)
    missing = data_missing(request.param)
    if missing:
        pytest.skip(missing)
    world = 2 if request.param.stem.startswith("distributed_") else 1
    return compile_spec(request.param, ["train.device=cpu"], world=world)


def test_text_is_golden(compiled) -> None:
    golden = GOLDEN / f"{compiled.program.name}.txt"
    text = compiled.graph.to_text()
    golden_file.check(golden, text)


def test_json_round_trips(compiled) -> None:
    data = json.loads(compiled.graph.to_json())
    assert data["stages"][0]["period"] == compiled.graph.period
    again = ScheduleGraph.from_json(compiled.graph.to_json())
    again.verify()
    assert again.to_text() == compiled.graph.to_text()


def test_dot_lists_every_node_and_edge(compiled) -> None:
    dot = compiled.graph.to_dot()
    for pi, p in enumerate(compiled.graph.stage.patterns):
        for op in p.ops():
            assert f'"g0p{pi}/{op.id}" [label=' in dot
        for a, b in p.g.edges:
            assert f'"g0p{pi}/{a}" -> "g0p{pi}/{b}"' in dot


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_every_spec_places_on_two_processes(spec: Path) -> None:
    """`torchrun --nproc-per-node 2 -m mrc train SPEC` compiles every spec placed on 2 processes:
    a verified graph with its placement, whose JSON form reads back."""
    missing = data_missing(spec)
    if missing:
        pytest.skip(missing)
    graph = compile_spec(spec, ["train.device=cpu"], world=2).graph
    graph.verify()
    placed = graph.table(PLACEMENT)
    assert placed is not None and placed.world == 2
    assert any(op.kind in ("all_reduce", "send", "merge", "mgrit_sum_grads") for op in graph.ops())
    again = ScheduleGraph.from_json(graph.to_json())
    assert again.to_text() == graph.to_text()
