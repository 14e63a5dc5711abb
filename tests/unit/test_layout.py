"""The layout of the tree. Test modules: pytest imports them by basename (the folders have no
__init__.py), so two test files with one name in different folders break collection. Packages:
a non-editable install ships only those pyproject.toml lists."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_files_have_unique_basenames() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []


def test_every_package_is_installed_by_pyproject() -> None:
    """A non-editable `pip install .` ships only the packages pyproject.toml lists: every package
    under mrc/, grammar/, passes/ and kernels/ must be among them (a missing one installs an mrc
    that fails on import)."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = {name: root / path for name, path in config["package-dir"].items()}
    found = set()
    for name, base in dirs.items():
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found - listed == set()
