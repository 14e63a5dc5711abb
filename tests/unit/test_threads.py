"""Thread count (issue 10, item 15): one thread for a small model on the CPU, the setting when
given, torch's own count restored after the run."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mrc.api import train
from mrc.runtime.trainer import SMALL_STEP, choose_threads, oversubscribed

CPU = torch.device("cpu")


def test_a_small_model_runs_on_one_thread_and_a_large_one_keeps_torchs_count() -> None:
    small, large = nn.Linear(64, 10), nn.Linear(2048, 2048)
    assert choose_threads(0, small, 32, CPU) == 1
    assert sum(p.numel() for p in large.parameters()) * 32 >= SMALL_STEP
    assert choose_threads(0, large, 32, CPU) == torch.get_num_threads()
    assert choose_threads(3, small, 32, CPU) == 3  # train(threads=3) / --threads 3


def test_the_run_restores_torchs_thread_count(tmp_path: Path) -> None:
    spec = tmp_path / "t.mrs"
    spec.write_text("model mlp(hidden=[8])\ndata digits(batch=16)\noptimizer sgd(lr=0.1)\n"
                    "train(steps=3, threads=1)\n")
    before = torch.get_num_threads()
    seen = []
    train(spec, save=False, observe=lambda step, m: seen.append(torch.get_num_threads()))
    assert seen == [1]
    assert torch.get_num_threads() == before


def test_a_busy_machine_is_named(monkeypatch) -> None:
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert oversubscribed() == "the machine is busy (load 9.0 on 2 cores)"
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert oversubscribed() == ""
