"""The `distributed` statement and the placement of a schedule on a world of processes: checks
with spans, placement diagnostics at the statement, the graph's placement table and ops, and
the JSON form's round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrc.api import check_spec, compile_spec
from mrc.diagnostics import CompileError
from mrc.ir.graph import ScheduleGraph
from mrc.techniques.distributed.bind import blocks
from mrc.techniques.distributed.tables import PLACEMENT

BASE = """model mlp(hidden=[16])
data digits(batch={batch})
optimizer sgd(lr=0.1)
train(steps=4)
"""


def spec(tmp_path: Path, extra: str, batch: int = 32) -> Path:
    p = tmp_path / "s.mrs"
    p.write_text(BASE.format(batch=batch) + extra)
    return p


def errors(fn, *args, **kw) -> str:
    with pytest.raises(CompileError) as info:
        fn(*args, **kw)
    return str(info.value)


def test_modes_and_arguments_are_checked(tmp_path: Path) -> None:
    assert check_spec(spec(tmp_path, "distributed data(timeout=30)\n")).distributed.timeout == 30
    text = errors(check_spec, spec(tmp_path, "distributed dta\n"))
    assert "s.mrs:5:13: error: unknown distributed mode `dta`" in text and "did you mean `data`?" in text
    text = errors(check_spec, spec(tmp_path, "distributed data(timeout=0)\n"))
    assert "5:26" in text and "out of range" in text
    text = errors(check_spec, spec(tmp_path, 'distributed data(backend="mpi")\n'))
    assert "`backend` must be one of" in text
    text = errors(check_spec, spec(tmp_path, "distributed pipeline\n"))
    assert "5:13: error: `pipeline` places modules on ranks: the spec has no `modules` block" in text
    text = errors(check_spec, spec(tmp_path, "distributed brains\n"))
    assert "no `brain` statements" in text
    text = errors(check_spec, spec(tmp_path, "distributed data\ndistributed data\n"))
    assert "`distributed` is given twice" in text
    assert check_spec(spec(tmp_path, "distributed data\n"), ["distributed.timeout=7"]).distributed.timeout == 7


def test_placement_diagnostics_point_at_the_statement(tmp_path: Path) -> None:
    text = errors(compile_spec, spec(tmp_path, "distributed data\n", batch=3), world=4)
    assert "5:13: error: a batch of 3 cannot be split across 4 processes" in text
    text = errors(compile_spec, spec(tmp_path, "", batch=3), world=4)  # the default mode: at `data`
    assert "2:6: error: a batch of 3 cannot be split across 4 processes" in text
    two = "brain a { every = 1 }\nbrain b { every = 2 }\nmerge mean\ndistributed brains\n"
    text = errors(compile_spec, spec(tmp_path, two), world=4)
    assert "2 brains cannot fill 4 ranks" in text


def test_one_process_has_no_placement_and_several_are_data_parallel(tmp_path: Path) -> None:
    p = spec(tmp_path, "")
    one = compile_spec(p, world=1).graph
    assert one.table(PLACEMENT) is None and not any(op.kind in ("shard", "all_reduce") for op in one.ops())
    two = compile_spec(p, world=2).graph
    placed = two.table(PLACEMENT)
    assert placed is not None and (placed.mode, placed.world) == ("data", 2)
    kinds = [op.kind for op in two.at(0)]
    assert kinds == ["batch", "shard", "forward", "loss", "backward", "all_reduce", "update_group"]
    text = two.to_text()
    assert "placement: mode=data world=2" in text and "all_reduce grads {all} mean over 2 ranks" in text
    again = ScheduleGraph.from_json(two.to_json())
    again.verify()
    assert again.to_text() == text and again.table(PLACEMENT) == placed


def test_clipping_moves_after_the_reduction(tmp_path: Path) -> None:
    p = tmp_path / "c.mrs"
    p.write_text(BASE.format(batch=32).replace("train(steps=4)", "train(steps=4, grad_clip=1.5)"))
    ops = compile_spec(p, world=2).graph.at(0)
    back = next(op for op in ops if op.kind == "backward")
    reduce = next(op for op in ops if op.kind == "all_reduce")
    assert back.clip == 0 and reduce.clip == 1.5


def test_blocks_are_contiguous_and_even() -> None:
    assert blocks(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert blocks(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
