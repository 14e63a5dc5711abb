"""Load user callables named in a spec as `"path/to/file.py:factory"` or `"package.module:factory"`.

Every way this can go wrong — a malformed reference, a missing file, a file that does not import,
a missing or non-callable attribute, a factory that raises, calls `sys.exit` or raises
`KeyboardInterrupt` — becomes a `UserCodeError` with a
one-line message, so the CLI reports it as a diagnostic instead of a Python traceback.

A dotted reference `"pkg.mod:fn"` is looked up beside the spec first, then in the working
directory, then among installed modules (sys.path). A local module is imported with its folder on
sys.path only while it imports; it never takes the name of a module that is imported or installed
from elsewhere (that is an error naming both places: rename the local one, or name it by file).

An exception raised inside user code — a factory, a model's forward, a dataset, a loss — is told
as one line by `describe_user_error`: the user's file and line (`user_frame`, the innermost frame
of the traceback that is the user's, not torch's, mrc's or the standard library's) and the
original message, e.g. `mymodel.py:14: RuntimeError: mat1 and mat2 shapes cannot be multiplied`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import linecache
import os
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, TracebackType
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
        else _load_module(ref, module_part, Path(base_dir))
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
    """Call user code, turning any exception it raises into a UserCodeError: the user's file and
    line where it was raised (`describe_user_error`), or `ref` where no user frame is known."""
    try:
        return fn(**kwargs)
    except Exception as e:
        raise UserCodeError(describe_user_error(e, ref)) from e
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


_LOCAL: dict[str, Path] = {}
"""Top-level names of modules imported from a spec's folder or the working directory → that
folder, so that a later spec beside other files of the same name gets its own."""


def _load_module(ref: str, module_part: str, base_dir: Path) -> ModuleType:
    """Import `module_part` from beside the spec, the working directory or sys.path, in that
    order (see the module docstring)."""
    top = module_part.split(".")[0]
    folder = _local_folder(module_part, base_dir)
    if folder is not None:
        elsewhere = _installed_elsewhere(top, folder)
        if elsewhere:
            raise UserCodeError(
                f"{ref}: `{top}` is both in {folder} and installed ({elsewhere}); rename the "
                f'local one or name it by file ("{module_part.replace(".", "/")}.py:…")')
        if _LOCAL.get(top, folder) != folder:  # the same name imported from another folder
            _forget(top)
        _LOCAL[top] = folder
        sys.path.insert(0, str(folder))
        importlib.invalidate_caches()  # a file written since the last import is found
    elif top in _LOCAL:  # imported from beside another spec: not this one's (installed) module
        _forget(top)
        del _LOCAL[top]
    try:
        return importlib.import_module(module_part)
    except ModuleNotFoundError as e:
        if e.name and (module_part == e.name or module_part.startswith(e.name + ".")):
            places = dict.fromkeys(str(d) for d in (base_dir.resolve(), Path.cwd().resolve()))
            raise UserCodeError(f"{ref}: no module named {module_part} (looked in "
                                f"{', '.join(places)} and among installed modules)") from e
        raise UserCodeError(f"{ref}: importing {module_part} failed: {_describe(e)}") from e
    except Exception as e:
        raise UserCodeError(f"{ref}: importing {module_part} failed: {_describe(e)}") from e
    except STOPS as e:
        raise UserCodeError(f"{ref}: importing {module_part} {stopped(e)}") from None
    finally:
        if folder is not None:
            try:
                sys.path.remove(str(folder))
            except ValueError:
                pass


def _forget(top: str) -> None:
    """Drop module `top` and its submodules from sys.modules (a local one of another folder)."""
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]


def _local_folder(module_part: str, base_dir: Path) -> Path | None:
    """The first of the spec's folder and the working directory that holds module `module_part`
    (`a/b.py` or `a/b/__init__.py` for `a.b`; folders without `__init__.py` are namespace
    packages), or None."""
    parts = module_part.split(".")
    for folder in dict.fromkeys((base_dir.resolve(), Path.cwd().resolve())):
        here = folder.joinpath(*parts)
        if here.with_name(parts[-1] + ".py").is_file() or (here / "__init__.py").is_file():
            return folder
    return None


def _installed_elsewhere(top: str, folder: Path) -> str | None:
    """Where top-level module `top` is imported or installed from other than `folder`; None if
    nowhere else (or from `folder` itself, e.g. an editable install or `.` on sys.path)."""
    module = sys.modules.get(top) if top not in _LOCAL else None  # ours: replaced if need be
    if module is not None:
        places = [getattr(module, "__file__", None), *list(getattr(module, "__path__", []))]
    else:
        search = [p for p in sys.path if Path(p or ".").resolve() != folder]
        try:
            spec = importlib.machinery.PathFinder.find_spec(top, search)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return "built in" if top in sys.builtin_module_names else None
        places = [spec.origin, *list(spec.submodule_search_locations or [])]
    places = [Path(p).resolve() for p in places if p and p not in ("built-in", "frozen")]
    if not places:
        return "built in"
    if any(p == folder or folder in p.parents for p in places):
        return None
    return str(places[0])


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


# ---- exceptions raised inside user code ----------------------------------------------------------


def not_user_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(folders whose code is never the user's: torch, mrc, the standard library;
    folders of installed packages, the user's only when no frame of their own is found)."""
    import mrc

    paths = sysconfig.get_paths()
    never = [os.path.dirname(os.path.abspath(mrc.__file__)), paths["stdlib"], paths["platstdlib"]]
    for name in ("torch", "mrc.passes", "mrc.kernels"):  # mrc's packages outside mrc/ too
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            never.append(os.path.dirname(os.path.abspath(module.__file__)))
    installed = [paths["purelib"], paths["platlib"]]
    return (tuple(os.path.join(p, "") for p in never),
            tuple(os.path.join(p, "") for p in installed))


def user_frame(exc: BaseException) -> tuple[str, int] | None:
    """(file, line) of the innermost frame of `exc`'s traceback that is user code, or None.

    A frame is the user's unless it is torch's, mrc's or the standard library's; an installed
    package's frame counts only when no other is found. A frame that runs a torch.fx node — a
    GraphModule's generated forward, or an interpreter of its graph (ShapeProp, stacked brains)
    with the node in a local `node` or `n` — counts through the node, at the line of the user's
    forward that created it when it was traced (`node.meta["mrc"]["source"]`, set by
    mrc.models.trace.MrcTracer).
    """
    never, installed = not_user_dirs()
    best: tuple[str, int] | None = None
    fallback: tuple[str, int] | None = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        name, line = tb.tb_frame.f_code.co_filename, tb.tb_lineno
        path = os.path.abspath(name) if not name.startswith("<") else name
        if name.startswith("<") or path.startswith(never):
            found = _fx_source(tb, name, line)
            if found is not None:
                best = found
        elif path.startswith(installed):
            fallback = (path, line)
        else:
            best = (path, line)
        tb = tb.tb_next
    return best if best is not None else fallback


def _fx_source(tb: TracebackType, filename: str, line: int) -> tuple[str, int] | None:
    """The user source line of the fx node a frame was running, or None."""
    local = tb.tb_frame.f_locals
    node = None
    if filename.startswith("<eval_with_key>"):  # generated code: `name = op(…);  …` per node
        text = linecache.getline(filename, line).strip()
        target = text.split("=", 1)[0].strip() if "=" in text else ""
        graph = getattr(local.get("self"), "graph", None)
        if graph is not None and target.isidentifier():
            node = next((n for n in getattr(graph, "nodes", ()) if n.name == target), None)
    else:
        node = next((v for k in ("node", "n") if _is_node(v := local.get(k))), None)
    meta = getattr(node, "meta", None)
    source = meta.get("mrc", {}).get("source") if isinstance(meta, dict) else None
    return (source[0], source[1]) if source else None


def _is_node(value: Any) -> bool:
    """Whether `value` is a torch.fx Node (without importing torch here)."""
    return type(value).__name__ == "Node" and type(value).__module__.startswith("torch.fx")


def shown_path(path: str) -> str:
    """`path` relative to the working directory when it lies below it, else as it is."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if rel.startswith("..") else rel


def describe_user_error(exc: BaseException, ref: str | None = None) -> str:
    """One line for an exception raised inside user code: `FILE:LINE: Type: message` with the
    user's file and line (`user_frame`), or `REF raised Type: message` where no user frame is
    known (ref: what was called, e.g. the spec's `"nets.py:build"`)."""
    what = _describe(exc)
    where = user_frame(exc)
    if where is not None:
        return f"{shown_path(where[0])}:{where[1]}: {what}"
    return f"{ref} raised {what}" if ref else what
