"""bench/repro.py's harness: cached runs continue after a kill, reports and the summary are written."""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def harness(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    mod = importlib.import_module("reproductions.harness")
    monkeypatch.setattr(mod, "DOCS", tmp_path / "docs" / "reproductions")
    return mod


def fake(h, calls: list[str], fail_at: str | None = None) -> types.ModuleType:
    mod = types.ModuleType("fake")
    mod.NAME, mod.TITLE, mod.SEED_DOC, mod.CLAIM = "fake", "A fake experiment", "x.md", "x beats y."

    def work(key: str):
        def run(folder: Path) -> dict:
            if key == fail_at:
                raise KeyboardInterrupt
            calls.append(key)
            return {"acc": 0.5 + 0.1 * len(calls)}
        return run

    def runs(scale, seeds):
        return [h.Run(f"c{c}/seed{s}", work(f"c{c}/seed{s}")) for c in (0, 1) for s in seeds]

    def report(results):
        accs = h.spread(results[f"c1/seed{s}"]["acc"] for s in results.seeds)
        return h.Finding("partly", {"acc": accs.json()}, f"acc {accs}")

    mod.runs, mod.report = runs, report
    return mod


def test_a_killed_experiment_continues_from_the_cache(harness, tmp_path):
    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        harness.execute(fake(harness, calls, fail_at="c1/seed0"), "small", [0, 1], tmp_path / "runs")
    assert calls == ["c0/seed0", "c0/seed1"]
    results = harness.execute(fake(harness, calls), "small", [0, 1], tmp_path / "runs")
    assert calls == ["c0/seed0", "c0/seed1", "c1/seed0", "c1/seed1"]  # the first two came from the cache
    assert results["c0/seed0"]["acc"] == pytest.approx(0.6)
    assert results["c1/seed1"]["acc"] == pytest.approx(0.9)


def test_the_report_leads_with_its_verdict_and_the_summary_lists_it(harness, tmp_path):
    mod = fake(harness, [])
    results = harness.execute(mod, "small", [0, 1, 2], tmp_path / "runs")
    path = harness.write_report(mod, results, mod.report(results))
    first = path.read_text().splitlines()[0]
    assert first.startswith("**Verdict: partly.**")
    assert json.loads((harness.DOCS / "fake.json").read_text())["numbers"]["acc"]["median"] == pytest.approx(1.0)
    summary = harness.write_summary(["fake", "other"]).read_text()
    assert "[`fake`](reproductions/fake.md)" in summary and "**partly**" in summary and "not run yet" in summary


def test_a_bad_verdict_is_refused(harness):
    with pytest.raises(ValueError):
        harness.Finding("maybe", {}, "")


def test_bands_draws_a_png(harness, tmp_path):
    out = harness.bands(tmp_path / "f.png", [("acc", "epoch", "acc", {"a": [([1, 2], [0.1, 0.2]), ([1, 2], [0.2, 0.4])],
                                                                       "b": [([1], [0.5])]})])
    assert out.read_bytes()[:4] == b"\x89PNG"


def teardown_module():
    sys.modules.pop("reproductions.harness", None)
    sys.modules.pop("reproductions", None)
