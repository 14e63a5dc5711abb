"""The package's import structure: every module imports on its own; the import graph of `mrc`
has no cycle; and the compiler never imports the runtime.

Each module has a role, declared in `ROLES` below (a table here rather than a marker in each
module: one place to read the whole layering, and a new module that matches no row fails the
test until someone decides its side):

* compile: checking, binding, the schedule graph and its passes, and each technique's check,
  bind, expand, place and ops modules — what `mrc check` and `mrc graph` run;
* run: lowering, the runtime, the kernels, and each technique's lowering, solvers and other
  tensor machinery — what only training runs;
* shared: libraries both sides use (data, models, optimizers, losses, user code), which may
  reach run modules only inside the functions that run them;
* edge: the command line, the API, the launcher and the technique packages — what ties the two
  sides together, and may import either.

The rules: a compile module imports no run module, and importing one loads none. Imports are
read from the source with `ast`: module-level and function-level imports, those under
`if TYPE_CHECKING:`, and string literals given to `importlib.import_module(…)` or
`mrc.lazy.Lazy("module:name")`.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
# the installed package's layout: mrc/ plus grammar/, passes/, kernels/ as mrc.grammar, …
PACKAGES = {"mrc": ROOT / "mrc", "mrc.passes": ROOT / "passes", "mrc.kernels": ROOT / "kernels"}

COMPILE, RUN, SHARED, EDGE = "compile", "run", "shared", "edge"
TECHNIQUE = r"mrc\.techniques\.\w+"
ROLES: tuple[tuple[str, str], ...] = (
    # (a regular expression the whole module name matches, its role): the first row that matches
    (r"mrc|mrc\.__main__|mrc\.api|mrc\.cli|mrc\.launch|mrc\.show|mrc\.plot|mrc\.sweep(\..+)?", EDGE),
    (r"mrc\.techniques", EDGE),
    (r"mrc\.target|mrc\.ast|mrc\.parser|mrc\.spectext|mrc\.diagnostics|mrc\.program|mrc\.registry", COMPILE),
    (r"mrc\.check(\..+)?|mrc\.binding|mrc\.schedule|mrc\.passmanager|mrc\.ir(\..+)?|mrc\.passes(\..+)?", COMPILE),
    (TECHNIQUE + r"\.(check|bind|expand|place|ops|tables|draw)", COMPILE),
    (r"mrc\.techniques\.mgrit\.grid|mrc\.techniques\.brains\.batchable|mrc\.techniques\.random_subsets\.masks",
     COMPILE),
    (r"mrc\.techniques\.distributed\.p2p", COMPILE),  # the op kinds send and recv
    (r"mrc\.techniques\.modules\.(cost|fxsplit|heads)", COMPILE),
    (r"mrc\.lower(\..+)?|mrc\.runtime(\..+)?|mrc\.kernels(\..+)?", RUN),
    (TECHNIQUE + r"\.(lower|solver|ranks|stack|propagate|batchnorm|buckets|messages|evaluate|integrator)", RUN),
    (r"mrc\.techniques\.mgrit\.(guess|buffers)", RUN),
    (r"mrc\.data(\..+)?|mrc\.models(\..+)?|mrc\.optim(\..+)?", SHARED),
    (r"mrc\.losses|mrc\.usercode|mrc\.safeload|mrc\.lazy|mrc\.provided|mrc\.uptime", SHARED),
    (TECHNIQUE, EDGE),  # a technique's package: its record names both sides
)


def role(name: str) -> str | None:
    """The role `ROLES` gives the module `name` (None: no row matches)."""
    return next((r for pattern, r in ROLES if re.fullmatch(pattern, name)), None)


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "mrc" and parts[:1] in (["passes"], ["kernels"]):
                continue
            out[name] = path
    return out


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _literal(node: ast.Call) -> str | None:
    """The module a call names by a string literal: `import_module("m")`, `Lazy("m:f")`."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if called not in ("import_module", "Lazy") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value.partition(":")[0]
    return None


def imports(name: str, path: Path, known: set[str], kind: str = "all") -> set[str]:
    """The mrc modules `name` imports. `all`: statements at any depth, those under
    `if TYPE_CHECKING:` and dynamic imports of a literal name; `executed`: the same without the
    TYPE_CHECKING blocks; `eager`: only what importing `name` runs (no function bodies)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node) and kind != "all":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and kind == "eager":
            return
        if isinstance(node, ast.Call):
            named = _literal(node)
            if named:
                found.add(named)
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            for alias in node.names:
                found.add(f"{base}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    out = set()
    for mod in found:
        while mod and mod not in known:
            mod = mod.rpartition(".")[0]
        if mod and mod != name and mod.startswith("mrc"):
            out.add(mod)
    return out


def import_graph(kind: str = "all") -> nx.DiGraph:
    """The import graph of every mrc module (`kind`: which imports count, see `imports`)."""
    mods = modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, path in mods.items():
        for dep in imports(name, path, set(mods), kind):
            # importing a package's submodule runs the package's __init__ first, but an
            # __init__ that imports its own submodules is not a cycle through its parent
            if not name.startswith(dep + "."):
                g.add_edge(name, dep)
    return g


def test_the_import_graph_has_no_cycle() -> None:
    """Imports that run (type-only imports may go both ways)."""
    g = import_graph("executed")
    cycles = list(nx.simple_cycles(g))
    shown = ["  " + " → ".join([*c, c[0]]) for c in sorted(cycles, key=len)[:10]]
    assert not cycles, f"{len(cycles)} import cycles, e.g.:\n" + "\n".join(shown)


def test_every_module_has_a_role() -> None:
    missing = sorted(m for m in modules() if role(m) is None)
    assert not missing, f"modules without a role (add a row to ROLES): {missing}"


def test_the_roles_classify_as_the_layering_says() -> None:
    """A few modules whose side is known, so that a row that matches too much is caught."""
    expected = {"mrc.schedule": COMPILE, "mrc.techniques.mgrit.place": COMPILE, "mrc.techniques.mgrit.ranks": RUN,
                "mrc.techniques.brains.stack": RUN, "mrc.techniques.distributed.bind": COMPILE,
                "mrc.techniques.distributed.batchnorm": RUN, "mrc.kernels.mgrit": RUN, "mrc.passes.select_kernels":
                COMPILE, "mrc.runtime.world": RUN, "mrc.techniques.mgrit": EDGE, "mrc.api": EDGE, "mrc.target": COMPILE}
    assert {m: role(m) for m in expected} == expected


def test_the_compiler_imports_nothing_of_the_runtime() -> None:
    """No compile module imports a run module, however it imports it (shared libraries may,
    inside the functions that run: see the next test)."""
    g = import_graph()
    bad = sorted(f"{m} → {d}" for m, d in g.edges if role(m) == COMPILE and role(d) == RUN)
    assert not bad, "compile-side modules import run-side ones:\n  " + "\n  ".join(bad)


def test_importing_the_compiler_loads_no_runtime_module() -> None:
    """What importing a compile module runs — its module-level imports, and theirs, through
    shared libraries too — loads no run module."""
    g = import_graph("eager")
    for m in [m for m in g if role(m) == COMPILE]:
        bad = sorted(d for d in nx.descendants(g, m) if role(d) == RUN)
        assert not bad, f"importing {m} loads {bad}"


def test_the_import_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """Type-only and dynamic imports count (a reader that skips them passes broken layering)."""
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nimport importlib\nfrom mrc.lazy import Lazy\n"
                      "if TYPE_CHECKING:\n    from mrc.runtime.world import World\n"
                      "def f():\n    importlib.import_module('mrc.lower.plan')\n"
                      "g = Lazy('mrc.kernels.sgd:sgd_torch')\n", encoding="utf-8")
    known = {"mrc.runtime.world", "mrc.lower.plan", "mrc.kernels.sgd", "mrc.lazy"}
    assert imports("mrc.m", source, known) == known
    assert imports("mrc.m", source, known, "executed") == known - {"mrc.runtime.world"}
    assert imports("mrc.m", source, known, "eager") == {"mrc.kernels.sgd", "mrc.lazy"}


def test_the_runtime_imports_nothing_from_the_api() -> None:
    """(A type-only import of the API's records is no dependency.)"""
    g = import_graph("executed")
    runtime = [m for m in g if m.startswith("mrc.runtime")]
    bad = [(m, d) for m in runtime for d in g.successors(m) if d in ("mrc.api", "mrc.cli")]
    assert not bad



FORK_EACH = """
import importlib, os, sys, traceback
import torch, numpy, lark, networkx  # heavy third-party imports once; mrc's own in each child
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print("FAILED:" + ",".join(failed))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_each_module_imports_alone() -> None:
    """Each module in an interpreter where no other mrc module was imported before it (one
    forked child per module, after the third-party libraries are loaded once)."""
    names = sorted(m for m in modules() if not m.startswith("mrc.kernels.") or m == "mrc.kernels.configs")
    if __import__("importlib.util").util.find_spec("triton") is not None:
        names = sorted(modules())
    done = subprocess.run([sys.executable, "-c", FORK_EACH, *names], capture_output=True, text=True, timeout=600)
    failed = done.stdout.strip().rpartition("FAILED:")[2]
    assert done.returncode == 0 and not failed, f"{failed}\n{done.stderr[-3000:]}"
