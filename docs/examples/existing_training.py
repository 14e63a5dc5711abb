"""Drive mrc from an existing training file: your model, your data, your loss — mrc's schedule.

The model, data and loss below stand for what a training script already has. mrc takes them as
objects (`model=`, `data=`, `loss=`) and a spec — here as text — says only what mrc adds: two
time-scales (the head every step, the body every 4th step at 4× the rate, the multirate seed's
scheme). Run it from anywhere:

    python docs/examples/existing_training.py
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mrc.api as mrc

# ---- what the existing file already had ----------------------------------------------------
g = torch.Generator().manual_seed(0)
x = torch.randn(1200, 20, generator=g)
y = (x[:, 0] + 0.5 * x[:, 1] ** 2 > 0.5).long()
train_set, val_set = TensorDataset(x[:1000], y[:1000]), TensorDataset(x[1000:], y[1000:])
train_set.classes = val_set.classes = 2  # how mrc learns the class count of a bare Dataset
loaders = (DataLoader(train_set, batch_size=50, shuffle=True, generator=g), DataLoader(val_set, batch_size=200))
model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))


def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output, target, label_smoothing=0.05)


# ---- what mrc adds -------------------------------------------------------------------------
SPEC = """
optimizer sgd(lr=0.05, momentum=0.9)
partition head = module("4") { every = 1 }
partition body = rest { every = 4 }
train(epochs=10, seed=0)
"""

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        result = mrc.train(SPEC, model=model, data=loaders, loss=loss, out=f"{tmp}/run", quiet=True)
        print(f"val_acc {result.summary['val_acc']:.3f} after {result.summary['steps']} steps")
        fresh = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
        again = mrc.load(result.out_dir, model=fresh)  # the trained weights, read back weights-only
        assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
        print("reloaded: same weights")
