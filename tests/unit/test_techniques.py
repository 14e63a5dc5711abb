"""The technique registry (mrc/techniques): one record per folder, packaged, in an explicit order
that every stage follows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mrc.ir.graph import Pattern, ScheduleGraph, Stage
from mrc.ir.ops import EMPTY, Batch
from mrc.ir.tables import TableKind
from mrc.techniques import BUILTIN, TechniqueError, compose, load_all, table_kinds, techniques
from mrc.techniques.base import PassAt, Technique, resolve

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = sorted(p.parent.name for p in (ROOT / "mrc" / "techniques").glob("*/__init__.py"))


def test_pyproject_packages_every_technique_folder() -> None:
    block = re.search(r"^packages = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    assert block is not None
    packages = re.findall(r'"([\w.]+)"', block.group(1))
    missing = [f for f in FOLDERS if f"mrc.techniques.{f}" not in packages]
    assert not missing, f"pyproject.toml's packages lack mrc.techniques.{missing[0]}"


def test_every_folder_is_one_registered_technique() -> None:
    assert sorted(BUILTIN) == FOLDERS
    assert [t.name for t in techniques()[:len(BUILTIN)]] == list(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_every_reference_of_a_builtin_resolves(name: str) -> None:
    record = next(t for t in techniques() if t.name == name)
    for ref in record.refs():
        assert resolve(ref) is not None, ref
    for ref in record.tables:
        assert isinstance(resolve(ref), TableKind)


def test_the_default_pipeline_follows_the_registry() -> None:
    from mrc.passes import DEFAULT_PIPELINE, PASSES, pipeline

    assert DEFAULT_PIPELINE == ("prune-gradients", "freeze-prefix", "group-updates", "mgrit-regions", "select-kernels",
                                "fuse-drift", "batch-brains", "distribute", "precision", "stack-params")
    # a plugin's pass after fuse-drift comes after the passes earlier techniques chained there
    extra = Technique("late", passes=(PassAt("late-pass", "mrc.passes.fuse_drift:FuseDrift", after="fuse-drift"),))
    passes, order = pipeline((*techniques(), extra))
    assert order[-4:] == ("distribute", "late-pass", "precision", "stack-params")
    assert passes["late-pass"] is PASSES["fuse-drift"]
    first = Technique("first", passes=(PassAt("first-pass", "mrc.passes.fuse_drift:FuseDrift", after=""),))
    assert pipeline((*techniques(), first))[1][:2] == ("first-pass", "prune-gradients")
    before = Technique("before", passes=(PassAt("before-pass", "mrc.passes.fuse_drift:FuseDrift",
                                                before="select-kernels"),))
    order = pipeline((*techniques(), before))[1]
    assert order.index("before-pass") == order.index("select-kernels") - 1
    with pytest.raises(ValueError, match="runs before `nothing`, which is no pass"):
        pipeline((*techniques(), Technique("bad", passes=(PassAt("p", "mrc.passes.fuse_drift:FuseDrift",
                                                                 before="nothing"),))))


def test_plugins_come_after_the_builtins_or_after_what_they_name() -> None:
    builtin = list(techniques()[:len(BUILTIN)])
    a, b = Technique("a"), Technique("b", after=("brains",))
    c = Technique("c", after=("brains",))
    order = [t.name for t in compose(builtin, [("a", a), ("b", b), ("c", c)])]
    assert order.index("b") == order.index("brains") + 1 and order.index("c") == order.index("b") + 1
    assert order[-1] == "a"
    with pytest.raises(TechniqueError, match="comes after `nothing`, which is no technique"):
        compose(builtin, [("x", Technique("x", after=("nothing",)))])
    with pytest.raises(TechniqueError, match="is called `core`, as a technique already is"):
        compose(builtin, [("x", Technique("core"))])


def test_lowering_variants_follow_the_registry_not_import_order() -> None:
    from mrc.lower.plan import VARIANTS, variants_of

    load_all()
    modules = [fn.__module__ for _, fn in variants_of("forward")]
    assert modules == ["mrc.techniques.brains.lower", "mrc.techniques.modules.lower", "mrc.techniques.mgrit.lower"]
    saved = {kind: list(v) for kind, v in VARIANTS.items()}
    try:
        for variants in VARIANTS.values():
            variants.reverse()  # as if the techniques had been imported the other way round
        assert [fn.__module__ for _, fn in variants_of("forward")] == modules
    finally:
        VARIANTS.update(saved)


def test_tables_are_kept_by_kind_and_shared_by_copies() -> None:
    from mrc.techniques.brains.tables import BRAINS, Brains, ReplicaInfo
    from mrc.techniques.distributed.tables import PLACEMENT

    p = Pattern((0,))
    p.add(Batch(EMPTY))
    graph = ScheduleGraph([Stage("train", 1, [p], (0,))])
    assert graph.table(BRAINS) == Brains() and graph.table(PLACEMENT) is None  # empty where absent
    table = Brains({"a": ReplicaInfo(2)}, stack_obstacle="why")
    graph.set_table(BRAINS, table)
    copy = graph.copy()
    assert copy.table(BRAINS) is table
    assert [k.name for k in table_kinds()] == ["stacked", "brains", "modules", "stacks", "placement"]
    again = ScheduleGraph.from_json(graph.to_json())
    assert again.table(BRAINS) == table and "  brain a: every=2 data=shared" in again.to_text()
