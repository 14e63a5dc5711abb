"""`--overwrite` removes a run's files — the core's and those the techniques name as their
artifacts (brains/, aux.pt) — and nothing else."""

from __future__ import annotations

from pathlib import Path

from mrc.runtime.rundir import clear
from mrc.techniques import techniques


def test_clear_removes_the_core_and_the_techniques_artifacts_only(tmp_path: Path) -> None:
    artifacts = {a for t in techniques() for a in t.artifacts}
    assert {"brains", "aux.pt"} <= artifacts  # brains and module-wise training name theirs
    for name in ("metrics.jsonl", "final.pt", "summary.json", "aux.pt", "notes.txt"):
        (tmp_path / name).write_text("x")
    for folder in ("tb", "brains", "mine"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "f").write_text("x")
    clear(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "notes.txt"]
