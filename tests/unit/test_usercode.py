"""Loading user callables from files and modules, and the one-line errors when that fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mrc.usercode import UserCodeError, call_user, load_callable, shown_path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _error(ref: str, base: Path) -> str:
    with pytest.raises(UserCodeError) as info:
        load_callable(ref, base)
    message = info.value.message
    assert "\n" not in message and str(info.value) == message
    return message


def test_loads_relative_file_and_calls_factory(tmp_path):
    _write(tmp_path / "code" / "net.py", "def factory(width=2, scale=1):\n"
                                         "    return [width * scale] * width\n")
    fn = load_callable("code/net.py:factory", tmp_path)
    assert call_user(fn, "code/net.py:factory", width=3, scale=5) == [15, 15, 15]


def test_loads_absolute_file_and_sibling_import(tmp_path):
    _write(tmp_path / "helpers_mrc_test.py", "OFFSET = 41\n")
    path = _write(tmp_path / "m.py", "from helpers_mrc_test import OFFSET\n"
                                     "class Model:\n    def __init__(self, k):\n"
                                     "        self.k = k + OFFSET\n")
    cls = load_callable(f"{path}:Model", Path("/nonexistent"))
    assert cls(1).k == 42
    assert str(tmp_path) not in sys.path
    sys.modules.pop("helpers_mrc_test", None)


def test_same_file_name_in_two_places_does_not_collide(tmp_path):
    _write(tmp_path / "a" / "model.py", "def f():\n    return 'a'\n")
    _write(tmp_path / "b" / "model.py", "def f():\n    return 'b'\n")
    fa = load_callable("a/model.py:f", tmp_path)
    fb = load_callable("b/model.py:f", tmp_path)
    assert (fa(), fb()) == ("a", "b")
    assert "model" not in sys.modules
    assert fa.__module__.startswith("mrc_user_") and fa.__module__ != fb.__module__


def test_loads_module_reference(tmp_path):
    fn = load_callable("os.path:join", tmp_path)
    assert fn("a", "b") == str(Path("a") / "b")
    assert load_callable("collections:OrderedDict", tmp_path)().__class__.__name__ == "OrderedDict"


def test_no_colon(tmp_path):
    assert "path/to/file.py:factory" in _error("model.py", tmp_path)
    assert "not a user-code reference" in _error("model.py:", tmp_path)


def test_missing_file(tmp_path):
    message = _error("nope/model.py:build", tmp_path)
    assert "nope/model.py not found" in message and str(tmp_path) in message


def test_syntax_error_gives_line(tmp_path):
    _write(tmp_path / "bad.py", "x = 1\n\ndef f(:\n    pass\n")
    message = _error("bad.py:f", tmp_path)
    assert "SyntaxError" in message and "line 3" in message and "def f(:" in message


def test_import_error_gives_type_and_message(tmp_path):
    _write(tmp_path / "boom.py", "def f():\n    pass\nraise RuntimeError('no GPU here')\n")
    message = _error("boom.py:f", tmp_path)
    assert "importing boom.py failed: RuntimeError: no GPU here" in message
    assert not any(m.startswith("mrc_user_") and getattr(sys.modules[m], "__file__", "")
                   == str((tmp_path / "boom.py").resolve()) for m in list(sys.modules))


def test_missing_module(tmp_path):
    assert "no module named mrc_no_such_pkg.sub" in _error("mrc_no_such_pkg.sub:f", tmp_path)


def test_missing_attribute_suggests(tmp_path):
    _write(tmp_path / "net.py", "def build_model():\n    return 1\n")
    message = _error("net.py:build_modle", tmp_path)
    assert "has no attribute `build_modle`" in message
    assert "did you mean `build_model`" in message


def test_not_callable(tmp_path):
    _write(tmp_path / "net.py", "WIDTH = 3\n")
    message = _error("net.py:WIDTH", tmp_path)
    assert "`WIDTH` is not callable (it is a value of type int" in message


def test_call_user_wraps_exceptions():
    def factory(depth):
        raise ValueError(f"depth {depth} too large")

    with pytest.raises(UserCodeError) as info:
        call_user(factory, "net.py:factory", depth=9)
    line = factory.__code__.co_firstlineno + 1  # this test file is the user's code here
    assert info.value.message == f"{shown_path(__file__)}:{line}: ValueError: depth 9 too large"
    assert isinstance(info.value.__cause__, ValueError)
    assert call_user(lambda ref: ref * 2, "x.py:f", ref=3) == 6
