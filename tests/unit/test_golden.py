"""tests/golden.py: a golden test cannot pass by rewriting its own file."""

from __future__ import annotations

from pathlib import Path

import golden
import pytest


@pytest.fixture
def file(tmp_path: Path) -> Path:
    path = tmp_path / "case.expected"
    path.write_text("old")
    return path


def test_a_difference_fails_whatever_the_flag_but_1(file, monkeypatch) -> None:
    for value in ("0", "", "yes", "true"):
        monkeypatch.setenv("MRC_UPDATE_GOLDEN", value)
        with pytest.raises(AssertionError):
            golden.check(file, "new")
        assert file.read_text() == "old"


def test_a_rewrite_writes_and_fails(file, monkeypatch) -> None:
    monkeypatch.setenv("MRC_UPDATE_GOLDEN", "1")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.fail.Exception, match=r"rewrote case\.expected"):
        golden.check(file, "new")
    assert file.read_text() == "new"
    golden.check(file, "new")  # nothing to rewrite: passes


def test_a_rewrite_is_refused_under_ci(file, monkeypatch) -> None:
    monkeypatch.setenv("MRC_UPDATE_GOLDEN", "1")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="under CI"):
        golden.check(file, "new")
    assert file.read_text() == "old"


def test_a_missing_golden_file_says_how_to_make_it(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MRC_UPDATE_GOLDEN", raising=False)
    with pytest.raises(AssertionError, match="MRC_UPDATE_GOLDEN=1"):
        golden.check(tmp_path / "none.txt", "x")
