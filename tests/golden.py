"""Golden files: compare, or rewrite on request — and then fail, so a rewrite is never a pass.

`MRC_UPDATE_GOLDEN=1 pytest tests/filecheck` rewrites every golden file that differs; each
test whose file it rewrote fails, naming the file, so the change is reviewed (`git diff`) and the
tests are run again. Only the value `1` asks for a rewrite (`0`, `no` or empty compare as usual),
and a rewrite is refused where `CI` is set: CI checks the files, it never writes them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FLAG = "MRC_UPDATE_GOLDEN"


def rewriting() -> bool:
    """Whether this run rewrites golden files (the flag is exactly `1`); a failure under CI."""
    if os.environ.get(FLAG, "") != "1":
        return False
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{FLAG}=1 under CI: golden files are checked there, never rewritten")
    return True


def check(golden: Path, actual: str) -> None:
    """Assert `actual` is the content of `golden`; with MRC_UPDATE_GOLDEN=1 rewrite it and fail."""
    expected = golden.read_text() if golden.is_file() else None
    if rewriting():
        if actual != expected:
            golden.write_text(actual)
            pytest.fail(f"rewrote {golden.name}: review the change with `git diff` and run the tests again")
        return
    assert expected is not None, f"no golden file {golden}: make it with {FLAG}=1"
    assert actual == expected
