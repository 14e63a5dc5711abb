"""`warm_start = cache` end to end: a run that stops and resumes mid-epoch trains bit-identically
to one that did not (the cache is in the checkpoint), a user's DataLoader — whose batches do not
say which examples they hold — is refused before training, a Dataset is not, and a brain's own
batch order is refused at lowering."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mrc.api import train
from mrc.data.stream import StreamError
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


def _toy(n: int = 320) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long()
    train_set, val_set = TensorDataset(x[:256], y[:256]), TensorDataset(x[256:], y[256:])
    train_set.classes = val_set.classes = 2
    return train_set, val_set


def test_a_users_dataloader_is_refused_before_training_and_a_dataset_trains(tmp_path: Path) -> None:
    train_set, val_set = _toy()
    loaders = (DataLoader(train_set, batch_size=64), DataLoader(val_set, batch_size=64))
    with pytest.raises(StreamError, match=r"`warm_start = cache` of the MGRIT stack `stack` keeps states per "
                                          r"training example, but the batches of a user's DataLoader do not say"):
        train(write(tmp_path), data=loaders, out=tmp_path / "loader", quiet=True, steps=2)
    done = train(write(tmp_path), data=(train_set, val_set), out=tmp_path / "set", quiet=True, steps=6)
    assert done.summary["status"] == "completed"


def test_a_brains_own_batches_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, extra="brain fast { every = 1 }\nbrain slow { every = 2; data = own }\nmerge mean")
    with pytest.raises(LoweringError, match=r"`warm_start = cache` of the MGRIT stack `stack` keeps the states of "
                                            r"the step's examples, but the stack runs on `batch own"):
        train(path, out=tmp_path / "brains", quiet=True, steps=2)
