"""`mrc show`: what a spec bound, read from the compiled graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrc.cli import main
from mrc.show import abbreviate

ROOT = Path(__file__).resolve().parents[2]


def test_names_are_grouped_by_shape_and_module() -> None:
    names = ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "head.weight", "head.bias"]
    assert abbreviate(names) == "layers.[0-1].{weight,bias}, head.{weight,bias}"
    assert abbreviate([f"stack.layers.{i}.weight" for i in (0, 1, 2, 5, 7, 8)]) == "stack.layers.[0-2,5,7-8].weight"
    assert abbreviate(["w"]) == "w"
    many = [f"block{i}.weight" for i in range(12)]
    assert abbreviate(many, limit=3) == "block0.weight, block1.weight, block2.weight, … (+9 more)"


def test_show_lists_partitions_with_their_parameters_rates_and_periods(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(ROOT / "specs" / "multirate_layers.mrs"), "--set", "optimizer.lr=0.01"]) == 0
    out = capsys.readouterr().out.splitlines()
    first = out.index("  first: 8,320 elements in 2 tensors")
    assert out[first + 1] == "    params: layers.0.{weight,bias}"
    assert out[first + 2] == "    update: sgd(momentum=0.9) lr=0.04, every 4 steps (drift linear)"  # k·h = 4 · 0.01
    assert "    update: sgd(momentum=0.9) lr=0.01, every step" in out


def test_show_lists_modules_brains_and_stacks(capsys: pytest.CaptureFixture[str]) -> None:
    for spec in ("modules_trgl", "brains_two", "mgrit_levelsets"):
        assert main(["check", "--show", str(ROOT / "specs" / f"{spec}.mrs")]) == 0
    out = capsys.readouterr().out
    assert "  m1: layer1.1 — 5 layers" in out
    assert "brains:\n  fast: every=1" in out and "  slow: every=4" in out
    assert "mgrit stacks:\n  stack: N=64" in out and "stack.layers.[0-63].{weight,bias}" in out
