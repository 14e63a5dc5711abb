"""`mrc check` end to end: its exit status survives a closed stderr, and user code that exits or
is interrupted becomes a diagnostic at the spec line that names it, with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mrc.cli import main

BAD = "model mlp()\ndata digits(limit=64)\noptimizer sgd(lr=-1)\n"
GOOD = "model mlp()\ndata digits(limit=64)\noptimizer sgd(lr=0.1)\n"


def _with_closed_pipe(spec: Path, stream: str) -> int:
    """Run `mrc check SPEC` with stdout or stderr a pipe whose reader is gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "mrc.cli", "check", str(spec)],
                              **{stream: write}, timeout=300).returncode  # type: ignore[call-overload]
    finally:
        os.close(write)


@pytest.mark.parametrize("stream", ["stderr", "stdout"])
def test_a_closed_stream_keeps_the_exit_status(tmp_path: Path, stream: str) -> None:
    bad, good = tmp_path / "bad.mrs", tmp_path / "good.mrs"
    bad.write_text(BAD)
    good.write_text(GOOD)
    assert _with_closed_pipe(bad, stream) == 2
    assert _with_closed_pipe(good, stream) == 0


def test_a_stream_that_breaks_mid_write_keeps_the_exit_status(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def write(self, text: str) -> int:
            raise BrokenPipeError

        def flush(self) -> None:
            raise BrokenPipeError

    (tmp_path / "bad.mrs").write_text(BAD)
    monkeypatch.setattr(sys, "stderr", Broken())
    assert main(["check", str(tmp_path / "bad.mrs")]) == 2


FACTORIES = '''
import sys
import torch

if "EXIT_AT_IMPORT" in {flags!r}:
    sys.exit(4)


def exits(in_shape, classes):
    sys.exit(3)


def interrupted(in_shape, classes):
    raise KeyboardInterrupt


def exits_in_forward(in_shape, classes):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(in_shape[0], classes)

        def forward(self, x):
            sys.exit("bye")

    return Net()


def data_exits():
    sys.exit(5)
'''


@pytest.mark.parametrize(("model", "data", "flags", "message", "line"), [
    ('"f.py:exits"', "digits(limit=64)", "", "f.py:exits called sys.exit(3)", 1),
    ('"f.py:interrupted"', "digits(limit=64)", "", "f.py:interrupted raised KeyboardInterrupt", 1),
    ('"f.py:exits"', "digits(limit=64)", "EXIT_AT_IMPORT",
     "f.py:exits: importing f.py called sys.exit(4)", 1),
    ('"f.py:exits_in_forward"', "digits(limit=64)", "",
     "the model's forward called sys.exit('bye') while it was traced", 1),
    ("mlp()", '"f.py:data_exits"()', "", "f.py:data_exits called sys.exit(5)", 2),
])
def test_user_code_that_exits_is_a_diagnostic(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              model: str, data: str, flags: str, message: str,
                                              line: int) -> None:
    (tmp_path / "f.py").write_text(FACTORIES.format(flags=flags))
    spec = tmp_path / "s.mrs"
    spec.write_text(f"model {model}\ndata {data}\noptimizer sgd(lr=0.1)\n")
    status = main(["check", str(spec)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"{spec}:{line}:" in err and f"error: {message}" in err, err
    assert "Traceback" not in err
