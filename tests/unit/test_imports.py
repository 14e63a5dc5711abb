"""The package's import structure: every module imports on its own, and the import graph of
`mrc` (read from the source with `ast`, function-level imports included, `TYPE_CHECKING` blocks
left out) has no cycle — the compiler never reaches the runtime's objects, and the runtime
imports nothing from `mrc.api`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
# the installed package's layout: mrc/ plus grammar/, passes/, kernels/ as mrc.grammar, …
PACKAGES = {"mrc": ROOT / "mrc", "mrc.passes": ROOT / "passes", "mrc.kernels": ROOT / "kernels"}


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


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The mrc modules `name` imports anywhere in its body (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
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


def import_graph() -> nx.DiGraph:
    mods = modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, path in mods.items():
        for dep in imports(name, path, set(mods)):
            # importing a package's submodule runs the package's __init__ first, but an
            # __init__ that imports its own submodules is not a cycle through its parent
            if not name.startswith(dep + "."):
                g.add_edge(name, dep)
    return g


def test_the_import_graph_has_no_cycle() -> None:
    g = import_graph()
    cycles = list(nx.simple_cycles(g))
    shown = ["  " + " → ".join([*c, c[0]]) for c in sorted(cycles, key=len)[:10]]
    assert not cycles, f"{len(cycles)} import cycles, e.g.:\n" + "\n".join(shown)


def test_the_runtime_imports_nothing_from_the_api() -> None:
    g = import_graph()
    runtime = [m for m in g if m.startswith("mrc.runtime")]
    bad = [(m, d) for m in runtime for d in g.successors(m) if d in ("mrc.api", "mrc.cli")]
    assert not bad


def test_the_compiler_builds_no_runtime_object() -> None:
    """Checking, binding, building the schedule and the passes reach neither the lowering nor
    the runtime."""
    g = import_graph()
    compiler = [m for m in g if m in ("mrc.schedule", "mrc.binding", "mrc.passmanager") or m.startswith(
        ("mrc.check", "mrc.ir", "mrc.passes")) or m.endswith((".check", ".expand"))]
    for m in compiler:
        reach = nx.descendants(g, m)
        bad = sorted(d for d in reach if d.startswith(("mrc.runtime", "mrc.lower")) or d.endswith(".lower"))
        assert not bad, f"{m} reaches {bad}"


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
