"""The reproductions' specs (specs/repro/) compile and train a few steps, and every experiment of
bench/repro.py lists its runs at both scales — so `python bench/repro.py NAME` works from a clean
clone. (The experiments themselves take minutes to hours: they are run by hand, and their reports
are in docs/reproductions/.)"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from spec_runs import data_missing

from mrc.api import compile_spec

ROOT = Path(__file__).resolve().parents[2]
REPRO_SPECS = sorted((ROOT / "specs" / "repro").glob("*.mrs"))


@pytest.mark.parametrize("spec", REPRO_SPECS, ids=[s.stem for s in REPRO_SPECS])
def test_every_reproduction_spec_compiles(spec: Path) -> None:
    missing = data_missing(spec)
    if missing:
        pytest.skip(missing)
    compiled = compile_spec(spec, ["train.device=cpu", "data.limit=256"])
    compiled.graph.verify()


@pytest.fixture
def experiments(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from reproductions import EXPERIMENTS

    yield EXPERIMENTS
    for name in [m for m in sys.modules if m == "reproductions" or m.startswith("reproductions.")]:
        sys.modules.pop(name)


def test_every_experiment_lists_its_runs_at_both_scales(experiments) -> None:
    for name in experiments:
        module = importlib.import_module(f"reproductions.{name}")
        assert module.NAME == name and module.CLAIM and module.TITLE
        assert (ROOT.parent / "shared" / "seeds" / module.SEED_DOC).exists() or module.SEED_DOC.endswith(".md")
        for scale in ("small", "full"):
            runs = module.runs(scale, [0, 1, 2])
            keys = [r.key for r in runs]
            assert runs and len(set(keys)) == len(keys), (name, scale)
