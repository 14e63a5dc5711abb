"""Golden tests of diagnostics: `mrc check CASE.mrs` must print exactly CASE.expected.

Each case in diagnostics/ is a broken spec; its .expected file is the exact stderr (file, line,
column, source line, carets, notes, hints). Regenerate after an intended change with
`MRC_UPDATE_GOLDEN=1 pytest tests/filecheck` (see tests/golden.py: the rewritten cases fail once).
"""

from __future__ import annotations

from pathlib import Path

import golden as golden_file
import pytest

from mrc.cli import main

HERE = Path(__file__).parent / "diagnostics"
CASES = sorted(HERE.glob("*.mrs"))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_diagnostic(case: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE)
    status = main(["check", case.name])
    out = capsys.readouterr()
    assert status == 2, out.err
    assert out.out == ""
    assert "Traceback" not in out.err
    err = out.err.replace(str(HERE), "$DIR")
    expected = case.with_suffix(".expected")
    golden_file.check(expected, err)
