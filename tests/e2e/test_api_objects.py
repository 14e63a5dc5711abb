"""The Python API for existing code: spec text, model / data / loss objects, quiet, mrc.load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mrc.api as mrc
from mrc.diagnostics import CompileError

ROOT = Path(__file__).resolve().parents[2]

SPEC = """
model mlp(hidden=[16])
data digits(batch=32, val=0.2)
optimizer sgd(lr=0.1, momentum=0.9)
train(epochs=2, seed=0, log_every=5)
"""


def toy(n: int = 600) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long()
    cut = n * 4 // 5
    train_set, val_set = TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])
    train_set.classes = val_set.classes = 2
    return train_set, val_set


def test_spec_text_trains_like_the_same_spec_in_a_file(tmp_path: Path) -> None:
    (tmp_path / "s.mrs").write_text(SPEC)
    from_file = mrc.train(tmp_path / "s.mrs", out=tmp_path / "a", steps=6, quiet=True)
    from_text = mrc.train(SPEC, out=tmp_path / "b", steps=6, quiet=True)
    for key, value in from_file.model.state_dict().items():
        assert torch.equal(from_text.model.state_dict()[key], value)
    assert (tmp_path / "b" / "config.mrs").read_text().endswith(SPEC)


def test_objects_replace_the_statements_and_quiet_prints_nothing(tmp_path: Path,
                                                                  capfd: pytest.CaptureFixture[str]) -> None:
    train_set, val_set = toy()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    seen: list[int] = []

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(len(target))
        return nn.functional.cross_entropy(output, target)

    loaders = (DataLoader(train_set, batch_size=40), DataLoader(val_set, batch_size=60))
    result = mrc.train(SPEC, model=model, data=loaders, loss=loss, out=tmp_path / "run", quiet=True)
    assert capfd.readouterr() == ("", "")  # quiet: nothing at all
    assert result.model is model  # the instance itself was trained
    assert result.summary["val_acc"] > 0.85  # a linear rule of two features: learnt
    assert {40, 60} <= set(seen)  # the user's loss saw the user's batches: training 40, validation 60
    config = (tmp_path / "run" / "config.mrs").read_text()
    assert 'model "mrc.provided:model"' in config and 'data "mrc.provided:data"(batch=32, val=0.2)' in config
    assert 'loss "mrc.provided:loss"' in config  # added: the spec had no loss statement


def test_load_gives_the_trained_model_back(tmp_path: Path) -> None:
    done = mrc.train(SPEC, out=tmp_path / "run", steps=6, quiet=True)
    model = mrc.load(tmp_path / "run")
    for key, value in done.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    brains = mrc.train(ROOT / "specs" / "brains_two.mrs", out=tmp_path / "brains", steps=4, quiet=True,
                       overrides=["train.eval_every=0"])
    each = mrc.load(brains.out_dir, brains=True)
    assert set(each) == {"fast", "slow"} and all(isinstance(m, nn.Module) for m in each.values())
    with pytest.raises(FileNotFoundError, match=r"final\.pt"):
        mrc.load(tmp_path)


def test_the_provided_names_exist_only_inside_train(tmp_path: Path) -> None:
    import mrc.provided as provided

    assert not hasattr(provided, "model")
    with pytest.raises(CompileError, match=r"mrc\.provided.*has no attribute `model`"):
        mrc.train(SPEC.replace("model mlp(hidden=[16])", 'model "mrc.provided:model"'), out=tmp_path / "r",
                  quiet=True)


def test_the_readme_example_runs() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "examples" / "existing_training.py")],
                          capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr
    assert "reloaded: same weights" in done.stdout and float(done.stdout.split()[1]) > 0.8
