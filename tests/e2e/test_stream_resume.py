"""Streaming (issue 21, deliverable 2): a run that reads its data through a DataLoader with
worker processes is bit-identical to the in-memory run of the same arrays, resumes bit-identically
mid-epoch, and trains (its loss goes down) — with and without per-sample augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mrc.api import train

SPEC = """
model mlp(hidden=[16], dropout=0.1)
data digits(shape=image, batch=32, val=0.2{data})
optimizer sgd(lr=0.1, momentum=0.9)
train(steps={steps}, seed=3, log_every=1, checkpoint_every=5)
"""
AUGMENT = ", augment = [random_crop(8, padding=1), hflip, cutout(size=3), normalize(mean=0.3, std=0.4)]"


def write(tmp_path: Path, name: str, data: str = "", steps: int = 20) -> Path:
    path = tmp_path / name
    path.write_text(SPEC.format(data=data, steps=steps))
    return path


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("augment", ["", AUGMENT], ids=["plain", "augmented"])
def test_streamed_resume_with_workers_is_bit_identical(tmp_path: Path, augment: str) -> None:
    """20 steps with 2 workers in one go, and stopped at 7 (mid-epoch: an epoch has 45
    batches) then resumed: the same parameters, bit for bit."""
    path = write(tmp_path, "s.mrs", f", stream=true, workers=2{augment}")
    whole = train(path, out=tmp_path / "whole", progress=False)
    train(path, out=tmp_path / "split", stop_at=7, progress=False)
    resumed = train(path, resume=tmp_path / "split", progress=False)
    assert resumed.summary["steps"] == 20
    assert same(whole.model, resumed.model)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_and_in_memory_runs_of_the_same_arrays_end_equal(tmp_path: Path, workers: int) -> None:
    """The batch sampler yields the in-memory order and the loader never draws from torch's
    generator (dropout draws from it), so the parameters end equal."""
    memory = train(write(tmp_path, "m.mrs"), progress=False)
    streamed = train(write(tmp_path, "s.mrs", f", stream=true, workers={workers}"), progress=False)
    assert same(memory.model, streamed.model)
    assert not same(memory.model, train(write(tmp_path, "o.mrs", steps=19), progress=False).model)


def test_augmented_streamed_run_equals_the_in_memory_one(tmp_path: Path) -> None:
    memory = train(write(tmp_path, "m.mrs", AUGMENT), progress=False)
    streamed = train(write(tmp_path, "s.mrs", f", stream=true, workers=2{AUGMENT}"), progress=False)
    assert same(memory.model, streamed.model)
    plain = train(write(tmp_path, "p.mrs"), progress=False)
    assert not same(memory.model, plain.model)  # the augmentation did change the batches


def test_a_streamed_augmented_run_learns(tmp_path: Path) -> None:
    mild = ", augment = [random_crop(8, padding=1), normalize(mean=0.3, std=0.4)]"
    run = train(write(tmp_path, "s.mrs", f", stream=true, workers=2{mild}", steps=90), progress=False)
    losses = [m["loss"] for m in run.metrics if m.get("loss") is not None]
    assert sum(losses[-10:]) / 10 < 0.75 * sum(losses[:10]) / 10  # 2.3 → about 1.5
    assert run.summary["val_acc"] > 0.5
