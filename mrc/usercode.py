"""Load user callables named in a spec as `"path/to/file.py:factory"` or `"package.module:factory"`.

Every way this can go wrong — a malformed reference, a missing file, a file that does not import,
a missing or non-callable attribute, a factory that raises, calls `sys.exit` or raises
`KeyboardInterrupt` — becomes a `UserCodeError` with a
one-line message, so the CLI reports it as a diagnostic instead of a Python traceback.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from mrc.registry import did_you_mean


class UserCodeError(Exception):
    """Loading or calling user code failed; `message` is one line fit for a diagnostic."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def is_file_ref(module_part: str) -> bool:
    """Whether the part before the colon names a file (rather than a dotted module)."""
    return module_part.endswith(".py") or "/" in module_part or "\\" in module_part


def load_callable(ref: str, base_dir: Path) -> Callable[..., Any]:
    """Resolve `ref` to a callable; relative file paths are taken from `base_dir`.

    `base_dir` is the spec's directory, so a spec and its user code can move together.
    """
    module_part, sep, attr = ref.rpartition(":")
    if not sep or not module_part or not attr:
        raise UserCodeError(
            f'"{ref}" is not a user-code reference: write "path/to/file.py:factory" or '
            f'"package.module:factory"')
    module = _load_file(ref, module_part, Path(base_dir)) if is_file_ref(module_part) \
        else _load_module(ref, module_part)
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = module_part if i == 0 else ".".join(attr.split(".")[:i])
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = did_you_mean(part, names)
            tip = f"; did you mean `{close}`?" if close else ""
            raise UserCodeError(f"{ref}: {owner} has no attribute `{part}`{tip}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserCodeError(f"{ref}: `{attr}` is not callable (it is a value of type "
                            f"{type(obj).__name__}; name a function or a class)")
    return obj


def call_user(fn: Callable[..., Any], ref: str, /, **kwargs: Any) -> Any:
    """Call user code, turning any exception it raises into a UserCodeError naming `ref`."""
    try:
        return fn(**kwargs)
    except Exception as e:
        raise UserCodeError(f"{ref} raised {type(e).__name__}: {e}") from e
    except STOPS as e:  # the factory must not end mrc itself (with its own exit status)
        raise UserCodeError(f"{ref} {stopped(e)}") from None


def _load_file(ref: str, module_part: str, base_dir: Path) -> ModuleType:
    path = Path(module_part).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    path = path.resolve()
    if not path.is_file():
        where = "" if Path(module_part).is_absolute() else f" (looked in {base_dir})"
        raise UserCodeError(f"{ref}: file {module_part} not found{where}")
    # A unique name per file: two user files called model.py never collide with each other or
    # with an installed `model` package; re-loading a file replaces its previous module.
    name = "mrc_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserCodeError(f"{ref}: cannot load {module_part} as a Python module")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module  # classes defined in the file need their module to be findable
    sys.path.insert(0, str(path.parent))  # so the file can import its sibling helper modules
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        if isinstance(e, STOPS):
            raise UserCodeError(f"{ref}: importing {module_part} {stopped(e)}") from None
        if not isinstance(e, Exception):
            raise
        raise UserCodeError(f"{ref}: importing {module_part} failed: {_describe(e)}") from e
    finally:
        try:
            sys.path.remove(str(path.parent))
        except ValueError:
            pass
    return module


def _load_module(ref: str, module_part: str) -> ModuleType:
    try:
        return importlib.import_module(module_part)
    except ModuleNotFoundError as e:
        if e.name and (module_part == e.name or module_part.startswith(e.name + ".")):
            raise UserCodeError(f"{ref}: no module named {module_part}") from e
        raise UserCodeError(f"{ref}: importing {module_part} failed: {_describe(e)}") from e
    except Exception as e:
        raise UserCodeError(f"{ref}: importing {module_part} failed: {_describe(e)}") from e
    except STOPS as e:
        raise UserCodeError(f"{ref}: importing {module_part} {stopped(e)}") from None


STOPS = (SystemExit, KeyboardInterrupt)
"""What user code may raise to stop the process; mrc reports it as the user code's error."""


def stopped(e: BaseException) -> str:
    """How user code stopped, for a message: `called sys.exit(3)`, `raised KeyboardInterrupt`."""
    if isinstance(e, SystemExit):
        return f"called sys.exit({'' if e.code is None else repr(e.code)})"
    return f"raised {type(e).__name__}"


def _describe(e: BaseException) -> str:
    """`Type: message` on one line; a SyntaxError also gives the line number and the line."""
    if isinstance(e, SyntaxError):
        where = f" at line {e.lineno}" if e.lineno else ""
        text = f": {e.text.strip()}" if e.text and e.text.strip() else ""
        return f"{type(e).__name__}: {e.msg}{where}{text}"
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
