"""No file mrc reads back runs code: a pickle planted as a run's checkpoint.pt, as `init`
weights or as a CIFAR batch would run a command when unpickled naively; mrc refuses each in one
line naming the file, and the command's marker file never appears. What mrc writes (checkpoints,
final weights) is plain data that the weights-only loader reads back."""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mrc.api import bind_spec, train
from mrc.cli import main
from mrc.data import DATASETS, DataError
from mrc.data.files import SafeUnpickler
from mrc.diagnostics import CompileError
from mrc.runtime.checkpoint import CheckpointError, load_checkpoint
from mrc.safeload import plain, read_weights

SPEC = ("model mlp(hidden=[16])\ndata digits(batch=64, limit=256)\noptimizer sgd(lr=0.1)\n"
        "train(steps=4, seed=3)\n")


class Planted:
    """Unpickled naively, this runs `command` (here: creating the marker file)."""

    def __init__(self, call: Any, *args: Any) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.call, self.args


def touch(marker: Path) -> Planted:
    return Planted(os.system, f"touch {marker}")


def planted_files(marker: Path) -> dict[str, bytes]:
    """Three ways to plant code: a torch.save zip, a raw pickle and a protocol-2 pickle whose
    global is a builtin (exec); each creates `marker` when loaded without restriction."""
    zipped = io.BytesIO()
    torch.save({"format": "mrc-checkpoint-1", "model": touch(marker)}, zipped)
    return {
        "torch.save": zipped.getvalue(),
        "pickle": pickle.dumps({"format": "mrc-checkpoint-1", "x": touch(marker)}),
        "exec": pickle.dumps({b"data": Planted(exec, f"open({str(marker)!r}, 'w')")}, protocol=2),
    }


def test_the_planted_pickles_do_run_code_when_loaded_naively(tmp_path: Path) -> None:
    """The control: without mrc's guard each file creates the marker (so the tests below can
    fail)."""
    for kind in ("torch.save", "pickle", "exec"):
        marker = tmp_path / f"marker.{kind}"
        blob = planted_files(marker)[kind]
        if kind == "torch.save":
            torch.load(io.BytesIO(blob), weights_only=False)
        else:
            pickle.loads(blob)
        assert marker.exists(), kind


@pytest.mark.parametrize("kind", ["torch.save", "pickle", "exec"])
def test_a_planted_checkpoint_is_refused_and_runs_nothing(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(planted_files(marker)[kind])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(run)
    message = str(info.value)
    assert message.startswith(f"cannot resume: {run / 'checkpoint.pt'}: ")
    assert "\n" not in message and "weights_only" not in message
    if kind == "torch.save":
        assert "refused: it would load the Python global `posix.system`" in message
    assert not marker.exists()


def test_resume_from_a_planted_checkpoint_is_one_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    spec, marker, run = tmp_path / "spec.mrs", tmp_path / "marker", tmp_path / "run"
    spec.write_text(SPEC)
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(planted_files(marker)["torch.save"])
    assert main(["train", str(spec), "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"mrc train: cannot resume: {run / 'checkpoint.pt'}: refused: it would load "
                   f"the Python global `posix.system`, but a file mrc reads back may hold only "
                   f"tensors and plain data (nothing in it was run)")
    assert not marker.exists()


def test_planted_init_weights_are_a_diagnostic(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "w.pt").write_bytes(planted_files(marker)["torch.save"])
    spec = tmp_path / "spec.mrs"
    spec.write_text(SPEC + 'init "w.pt"\n')
    with pytest.raises(CompileError) as info:
        bind_spec(spec)
    (d,) = info.value.diagnostics
    assert d.message == (f"cannot read initial weights from {tmp_path / 'w.pt'}: refused: it would "
                         f"load the Python global `posix.system`, but a file mrc reads back may "
                         f"hold only tensors and plain data (nothing in it was run)")
    assert not marker.exists()


@pytest.mark.parametrize(("kind", "qualname"), [("pickle", "posix.system"),
                                                ("exec", "__builtin__.exec")])
def test_a_planted_cifar_batch_is_refused_and_runs_nothing(tmp_path: Path, kind: str,
                                                           qualname: str) -> None:
    marker = tmp_path / "marker"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    row = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}
    for name in ("data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (folder / name).write_bytes(pickle.dumps(row, protocol=2))
    (folder / "data_batch_1").write_bytes(planted_files(marker)[kind])
    with pytest.raises(DataError) as info:
        DATASETS.get("cifar10").build(0, root=str(tmp_path))
    assert info.value.message == (
        f"{folder / 'data_batch_1'}: refused: the pickle would load the Python global "
        f"`{qualname}`; a data file may hold only containers, numbers, bytes and numpy arrays, "
        f"so nothing in it was run")
    assert not marker.exists()


def test_the_safe_unpickler_admits_numpy_arrays_and_latin1_bytes_only() -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    record = {b"data": array, "labels": [1, 2.5, None, (True, "x")]}
    back = SafeUnpickler(io.BytesIO(pickle.dumps(record, protocol=2)), encoding="bytes").load()
    np.testing.assert_array_equal(back[b"data"], array)
    assert back["labels"] == [1, 2.5, None, (True, "x")]
    # `_codecs.encode` is admitted only as Python 3 writes bytes at protocol 2: (str, latin1)
    other = pickle.dumps(Planted(__import__("_codecs").encode, "abc", "rot13"), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="rot13"):
        SafeUnpickler(io.BytesIO(other), encoding="bytes").load()
    for call in (np.load, np.frombuffer, OrderedDict):
        with pytest.raises(pickle.UnpicklingError, match=call.__name__):  # refused, naming what
            SafeUnpickler(io.BytesIO(pickle.dumps(Planted(call, b""), protocol=2))).load()


# ---- what mrc writes, it reads back weights-only -----------------------------------------------

@dataclass
class Record:
    value: int


def test_plain_keeps_plain_data_and_converts_numpy() -> None:
    state = OrderedDict(a=torch.ones(2), b={1: np.float64(0.5), "c": [np.int64(3), (True, None)]},
                        d={"x", "y"}, e=torch.Size([2, 3]), f=np.arange(3), g=torch.float64)
    out = plain(state)
    assert type(out) is OrderedDict and type(out["b"]["c"][0]) is int
    assert type(out["b"][1]) is float and out["b"][1] == 0.5
    assert type(out["e"]) is torch.Size and type(out["b"]["c"][1]) is tuple
    assert torch.equal(out["f"], torch.arange(3))
    blob = io.BytesIO()
    torch.save(out, blob)
    blob.seek(0)
    back = torch.load(blob, weights_only=True)
    assert back["b"] == {1: 0.5, "c": [3, (True, None)]} and back["d"] == {"x", "y"}
    assert back["g"] is torch.float64


@pytest.mark.parametrize("bad", [Record(1), object()])
def test_plain_refuses_what_a_weights_only_load_cannot_read(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"cannot save /plan/x\[1\]: a .* is not tensors or plain "
                                        r"data"):
        plain({"plan": {"x": [1, bad]}})


def test_a_run_writes_files_the_weights_only_loader_reads(tmp_path: Path) -> None:
    spec = tmp_path / "spec.mrs"
    spec.write_text(SPEC + "early_stopping(metric=val_loss, patience=5)\n")
    train(spec, out=tmp_path / "run")
    state = load_checkpoint(tmp_path / "run")
    assert state["step"] == 4 and state["format"].startswith("mrc-checkpoint-")
    assert state["early"] is not None and isinstance(state["last_eval"]["val_loss"], float)
    final = read_weights(tmp_path / "run" / "final.pt")
    assert set(final) == {"layers.0.weight", "layers.0.bias", "head.weight", "head.bias"}
    # the model's state_dict keeps its module versions, as load_state_dict reads them
    assert state["model"]._metadata == train(spec, save=False).model.state_dict()._metadata
