"""`warm_start = cache` end to end: a run that stops and resumes mid-epoch trains bit-identically
to one that did not (the cache is in the checkpoint), streamed data train as the same arrays in
memory, a user's DataLoader — whose batches do not say which examples they hold — is refused in
one line before training, and a brain's own batch order is refused at lowering."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mrc.api import train
from mrc.cli import main
from mrc.lower.plan import LoweringError

SPEC = """model ode_resnet(width=4, depth=32, h=0.1)
data levelsets(batch=64)
optimizer sgd(lr=0.05, momentum=0.9)
train(epochs=2, seed=1, log_every=5)
{extra}
mgrit "stack" {{ levels = 3; coarsening = 4; forward_iters = 1; backward_iters = 1; warm_start = {guess} }}
"""


def write(tmp_path: Path, guess: str = "cache", extra: str = "") -> Path:
    path = tmp_path / f"{guess}.mrs"
    path.write_text(SPEC.format(guess=guess, extra=extra))
    return path


def test_cached_training_resumes_bit_identically(tmp_path: Path) -> None:
    path = write(tmp_path)
    whole = train(path, out=tmp_path / "whole", quiet=True)
    train(path, out=tmp_path / "split", stop_at=80, quiet=True)  # in the second epoch: the cache in use
    resumed = train(path, resume=tmp_path / "split", quiet=True)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    # the cache made a difference: the `shifted` run (which its first epoch equals) ends elsewhere
    other = train(write(tmp_path, "shifted"), out=tmp_path / "shifted", quiet=True)
    assert not torch.equal(other.model.state_dict()["stack.layers.0.weight"],
                           whole.model.state_dict()["stack.layers.0.weight"])


LOADERS = """
import torch
from torch.utils.data import DataLoader, TensorDataset


def make():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(320, 2, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long()
    return {"train": DataLoader(TensorDataset(x[:256], y[:256]), batch_size=64),
            "val": DataLoader(TensorDataset(x[256:], y[256:]), batch_size=64), "classes": 2}
"""


def test_a_users_dataloader_is_refused_in_one_line_before_training(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "loaders.py").write_text(LOADERS)
    spec = write(tmp_path).read_text().replace("data levelsets(batch=64)", 'data "loaders.py:make"(batch=64)')
    (tmp_path / "user.mrs").write_text(spec)
    assert main(["train", str(tmp_path / "user.mrs"), "--out", str(tmp_path / "run"), "--steps", "2"]) == 1
    err = capsys.readouterr().err
    assert "error: `warm_start = cache` of the MGRIT stack `stack` keeps states per training example, but the " \
           "batches of a user's DataLoader do not say which training examples they hold" in err
    assert "Traceback" not in err and "step 1/" not in err


def test_streamed_data_trains_as_the_in_memory_arrays(tmp_path: Path) -> None:
    """The streamed source names the examples of its batches as the in-memory one does."""
    memory = train(write(tmp_path), out=tmp_path / "memory", quiet=True, steps=70)
    spec = write(tmp_path).read_text().replace("levelsets(batch=64)", "levelsets(batch=64, stream=true)")
    (tmp_path / "streamed.mrs").write_text(spec)
    streamed = train(tmp_path / "streamed.mrs", out=tmp_path / "streamed", quiet=True, steps=70)
    for key, value in memory.model.state_dict().items():
        assert torch.equal(value, streamed.model.state_dict()[key]), key


def test_a_brains_own_batches_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, extra="brain fast { every = 1 }\nbrain slow { every = 2; data = own }\nmerge mean")
    with pytest.raises(LoweringError, match=r"`warm_start = cache` of the MGRIT stack `stack` keeps the states of "
                                            r"the step's examples, but the stack runs on `batch own"):
        train(path, out=tmp_path / "brains", quiet=True, steps=2)
