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


def _forget(top: str) -> None:
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]


def test_dotted_reference_finds_a_package_beside_the_spec(tmp_path, monkeypatch):
    spec_dir, other = tmp_path / "spec", tmp_path / "elsewhere"
    _write(spec_dir / "zoo_mrc_t1" / "nets.py", "from zoo_mrc_t1.helpers import W\n"
                                                 "def fn():\n    return W\n")
    _write(spec_dir / "zoo_mrc_t1" / "helpers.py", "W = 'beside the spec'\n")  # no __init__.py
    other.mkdir()
    monkeypatch.chdir(other)
    try:
        assert load_callable("zoo_mrc_t1.nets:fn", spec_dir)() == "beside the spec"
        assert str(spec_dir) not in sys.path and str(spec_dir.resolve()) not in sys.path
    finally:
        _forget("zoo_mrc_t1")


def test_dotted_reference_searches_the_spec_folder_then_the_working_directory(tmp_path, monkeypatch):
    spec_dir, cwd = tmp_path / "spec", tmp_path / "cwd"
    _write(cwd / "where_mrc_t2.py", "def fn():\n    return 'cwd'\n")
    _write(cwd / "only_cwd_mrc_t2" / "__init__.py", "def fn():\n    return 'cwd package'\n")
    spec_dir.mkdir()
    monkeypatch.chdir(cwd)
    try:
        assert load_callable("where_mrc_t2:fn", spec_dir)() == "cwd"
        assert load_callable("only_cwd_mrc_t2:fn", spec_dir)() == "cwd package"
        _write(spec_dir / "where_mrc_t2.py", "def fn():\n    return 'spec'\n")
        assert load_callable("where_mrc_t2:fn", spec_dir)() == "spec"  # the spec's folder first
    finally:
        _forget("where_mrc_t2")
        _forget("only_cwd_mrc_t2")


def test_two_spec_folders_with_one_package_name_each_get_their_own(tmp_path):
    for name in ("a", "b"):
        _write(tmp_path / name / "pkg_mrc_t3" / "mod.py", f"def fn():\n    return {name!r}\n")
    try:
        assert load_callable("pkg_mrc_t3.mod:fn", tmp_path / "a")() == "a"
        assert load_callable("pkg_mrc_t3.mod:fn", tmp_path / "b")() == "b"
        assert load_callable("pkg_mrc_t3.mod:fn", tmp_path / "a")() == "a"
        (tmp_path / "c").mkdir()  # nothing of that name beside this spec: not a's or b's
        assert "no module named pkg_mrc_t3.mod" in _error("pkg_mrc_t3.mod:fn", tmp_path / "c")
    finally:
        _forget("pkg_mrc_t3")


def test_a_local_module_never_shadows_an_installed_one(tmp_path):
    import json

    _write(tmp_path / "json" / "decoder.py", "def JSONDecoder():\n    return 'local'\n")
    message = _error("json.decoder:JSONDecoder", tmp_path)
    assert "`json` is both in" in message and str(tmp_path.resolve()) in message
    assert "rename the local one" in message and '"json/decoder.py:…"' in message
    assert sys.modules["json"] is json  # the installed module is left as it was
    assert load_callable("json/decoder.py:JSONDecoder", tmp_path)() == "local"
    assert load_callable("os.path:join", tmp_path)("a", "b") == str(Path("a") / "b")


def test_missing_dotted_module_says_where_it_looked(tmp_path):
    message = _error("mrc_no_such_pkg_t4.sub:f", tmp_path)
    assert "no module named mrc_no_such_pkg_t4.sub" in message
    assert str(tmp_path.resolve()) in message and "installed modules" in message


def test_describe_user_error_gives_the_innermost_user_line(tmp_path):
    from mrc.usercode import describe_user_error, user_frame

    path = _write(tmp_path / "ds_mrc.py", "def helper(i):\n    return [1, 2][i]\n\n"
                                          "def get(i):\n    return helper(i) + 1\n")
    get = load_callable(f"{path}:get", tmp_path)
    try:
        get(5)
    except IndexError as e:
        assert user_frame(e) == (str(path.resolve()), 2)
        assert describe_user_error(e, "ds_mrc.py:get").endswith(
            "ds_mrc.py:2: IndexError: list index out of range")
    import torch

    try:  # raised inside torch, called from here: this file is the user's
        torch.zeros(2) @ torch.zeros(3)
    except RuntimeError as e:
        assert user_frame(e)[0] == __file__


def test_factory_gets_only_the_keywords_its_signature_names():
    from mrc.binding import _accepted

    def torchvision_like(*, weights=None, progress=True, num_classes=1000, **kwargs):
        return kwargs

    def asks(in_shape, classes, width=3):
        return in_shape

    class Net:
        def __init__(self, classes, *args, **kwargs):
            pass

    assert _accepted(torchvision_like) == {"weights", "progress", "num_classes"}
    assert _accepted(asks) == {"in_shape", "classes", "width"}
    assert _accepted(Net) == {"classes"}
