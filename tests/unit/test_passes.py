"""Passes on hand-built multi-step schedule graphs, the pass manager, and `mrc graph`'s pass
options (--passes, --after, --print-after, --time-passes)."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from mrc.passes import DEFAULT_PIPELINE, PASSES, Pass
from mrc.passes.group_updates import GroupUpdates
from mrc.passes.prune_gradients import PruneGradients

from mrc.cli import main
from mrc.graph import Backward, Forward, GraphError, Loss, ScheduleGraph, Update, UpdateGroup
from mrc.passmanager import PassError, PassManager, parse_pipeline

SGD = "sgd(lr=0.1)"
ADAM = "adam(lr=0.001)"


def naive(period: int, parts: dict[str, tuple[int, str]]) -> ScheduleGraph:
    """The naive schedule as mrc.schedule builds it: every step differentiates every partition;
    partition `name` (every, rule) updates on steps divisible by `every`, at lr×every."""
    graph = ScheduleGraph(period, {n: {"every": e, "rule": r} for n, (e, r) in parts.items()})
    names = tuple(parts)
    for step in range(period):
        fwd = graph.add(Forward(step=step, segment="model", grad=names))
        loss = graph.add(Loss(step=step), [fwd])
        bwd = graph.add(Backward(step=step, wrt=names), [loss])
        for name, (every, rule) in parts.items():
            if step % every == 0:
                graph.add(Update(step=step, partition=name, rule=rule, scale=float(every)), [bwd])
    graph.verify()
    return graph


def listing(graph: ScheduleGraph) -> list[str]:
    """The graph's text without its header and partition lines."""
    return [line for line in graph.to_text().splitlines()
            if not line.startswith(("schedule", "  partition"))]


# ---- prune-gradients ------------------------------------------------------------------------


def test_prune_narrows_each_step_to_the_partitions_it_updates() -> None:
    graph = naive(2, {"body": (2, SGD), "head": (1, SGD)})
    before = graph.to_text()
    pruned = PruneGradients().apply(graph)
    pruned.verify()
    assert graph.to_text() == before  # the input is left untouched
    assert listing(pruned) == [
        "step 0:",
        "  %0 = forward model [grad {body, head}]",
        "  %1 = loss cross_entropy  after %0",
        "  %2 = backward wrt {body, head}  after %1",
        "  %3 = update body sgd(lr=0.1) lr×2  after %2",
        "  %4 = update head sgd(lr=0.1) lr×1  after %2",
        "step 1:",
        "  %0 = forward model [grad {head}]",
        "  %1 = loss cross_entropy  after %0",
        "  %2 = backward wrt {head}  after %1",
        "  %3 = update head sgd(lr=0.1) lr×1  after %2",
    ]


def test_prune_keeps_partition_order_not_update_order() -> None:
    graph = naive(1, {"c": (1, SGD), "a": (1, SGD), "b": (1, SGD)})
    graph.replace(graph.op("s0.backward"), Backward(step=0, wrt=("b", "a", "c")))
    pruned = PruneGradients().apply(graph)
    assert pruned.op("s0.backward").wrt == ("c", "a", "b")  # type: ignore[attr-defined]


def test_prune_removes_steps_where_nothing_updates() -> None:
    graph = naive(3, {"slow": (3, SGD)})
    pruned = PruneGradients().apply(graph)
    pruned.verify()
    assert [op.id for op in pruned.ops()] == ["s0.forward.model", "s0.loss", "s0.backward",
                                              "s0.update.slow"]
    assert listing(pruned)[-2:] == ["step 1:", "step 2:"]


def test_prune_with_three_rates() -> None:
    graph = naive(4, {"a": (1, SGD), "b": (2, SGD), "c": (4, SGD)})
    pruned = PruneGradients().apply(graph)
    wrt = {op.step: op.wrt for op in pruned.of_kind(Backward)}  # type: ignore[attr-defined]
    grad = {op.step: op.grad for op in pruned.of_kind(Forward)}  # type: ignore[attr-defined]
    assert wrt == {0: ("a", "b", "c"), 1: ("a",), 2: ("a", "b"), 3: ("a",)}
    assert grad == wrt


def test_prune_understands_groups_and_leaves_no_grad_forwards() -> None:
    graph = ScheduleGraph(2, {"body": {}, "head": {}})
    for step in range(2):
        pre = graph.add(Forward(step=step, segment="model[:2]", grad=()))
        post = graph.add(Forward(step=step, segment="model[2:]", grad=("body", "head")), [pre])
        loss = graph.add(Loss(step=step), [post])
        bwd = graph.add(Backward(step=step, wrt=("body", "head")), [loss])
        parts = ("body", "head") if step == 0 else ("head",)
        graph.add(UpdateGroup(step=step, name="+".join(parts), partitions=parts, rule=SGD), [bwd])
    pruned = PruneGradients().apply(graph)
    pruned.verify()
    assert pruned.op("s1.forward.model[:2]").grad == ()  # type: ignore[attr-defined]
    assert pruned.op("s1.forward.model[2:]").grad == ("head",)  # type: ignore[attr-defined]
    assert pruned.op("s1.backward").wrt == ("head",)  # type: ignore[attr-defined]
    assert pruned.op("s0.backward").wrt == ("body", "head")  # type: ignore[attr-defined]


def test_prune_is_idempotent() -> None:
    once = PruneGradients().apply(naive(2, {"body": (2, SGD), "head": (1, SGD)}))
    assert PruneGradients().apply(once).to_text() == once.to_text()


# ---- group-updates --------------------------------------------------------------------------


def test_group_updates_groups_same_rule_and_scale() -> None:
    graph = naive(1, {"head": (1, SGD), "body": (1, SGD), "bias": (1, SGD)})
    grouped = GroupUpdates().apply(graph)
    grouped.verify()
    (group,) = grouped.of_kind(UpdateGroup)
    assert isinstance(group, UpdateGroup)
    assert group.name == "head+body+bias" and group.partitions == ("head", "body", "bias")
    assert (group.rule, group.scale, group.lr, group.kernel) == (SGD, 1.0, None, "torch.optim")
    assert grouped.of_kind(Update) == []
    assert [o.id for o in grouped.preds(group)] == ["s0.backward"]
    assert listing(grouped)[-1] == ("  %3 = update_group head+body+bias {head, body, bias} "
                                    "sgd(lr=0.1) lr×1 kernel=torch.optim  after %2")


def test_group_updates_keeps_distinct_rules_scales_and_lrs_apart() -> None:
    graph = naive(1, {"a": (1, SGD), "b": (1, ADAM), "c": (1, SGD), "d": (1, ADAM),
                      "e": (1, SGD)})
    bwd = graph.op("s0.backward")
    graph.replace(graph.op("s0.update.e"), Update(step=0, partition="e", rule=SGD, scale=1.0,
                                                  lr=0.5))
    grouped = GroupUpdates().apply(graph)
    grouped.verify()
    groups = {op.name: op for op in grouped.of_kind(UpdateGroup)}  # type: ignore[attr-defined]
    assert set(groups) == {"a+c", "b+d", "e"}
    assert groups["a+c"].rule == SGD and groups["b+d"].rule == ADAM
    assert groups["e"].lr == 0.5 and groups["a+c"].lr is None
    assert all([o.id for o in grouped.preds(g)] == [bwd.id] for g in groups.values())


def test_group_updates_on_a_multi_step_graph() -> None:
    graph = naive(2, {"body": (2, SGD), "head": (1, SGD), "bias": (1, SGD)})
    grouped = GroupUpdates().apply(PruneGradients().apply(graph))
    grouped.verify()
    assert listing(grouped) == [
        "step 0:",
        "  %0 = forward model [grad {body, head, bias}]",
        "  %1 = loss cross_entropy  after %0",
        "  %2 = backward wrt {body, head, bias}  after %1",
        "  %3 = update_group body {body} sgd(lr=0.1) lr×2 kernel=torch.optim  after %2",
        "  %4 = update_group head+bias {head, bias} sgd(lr=0.1) lr×1 kernel=torch.optim  after %2",
        "step 1:",
        "  %0 = forward model [grad {head, bias}]",
        "  %1 = loss cross_entropy  after %0",
        "  %2 = backward wrt {head, bias}  after %1",
        "  %3 = update_group head+bias {head, bias} sgd(lr=0.1) lr×1 kernel=torch.optim  after %2",
    ]


def test_group_updates_keeps_what_came_after_the_updates() -> None:
    graph = naive(2, {"a": (1, SGD), "b": (1, SGD)})
    # step 1 waits for step 0's updates
    for up in ("s0.update.a", "s0.update.b"):
        graph.g.add_edge(up, "s1.forward.model")
    grouped = GroupUpdates().apply(graph)
    grouped.verify()
    assert [o.id for o in grouped.preds(grouped.op("s1.forward.model"))] == [
        "s0.update_group.a+b"]


def test_pipeline_order_does_not_matter_for_prune_and_group() -> None:
    graph = naive(2, {"body": (2, SGD), "head": (1, SGD)})
    a = GroupUpdates().apply(PruneGradients().apply(graph))
    b = PruneGradients().apply(GroupUpdates().apply(graph))
    assert a.to_text() == b.to_text()


# ---- the pass manager -----------------------------------------------------------------------


@dataclass(frozen=True)
class Boom(Pass):
    name: ClassVar[str] = "boom"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        raise RuntimeError("kaboom")


@dataclass(frozen=True)
class Unloss(Pass):
    """Leaves a broken graph: removes every loss."""

    name: ClassVar[str] = "unloss"

    def apply(self, graph: ScheduleGraph) -> ScheduleGraph:
        out = graph.copy()
        for op in out.of_kind(Loss):
            out.remove(op)
        return out


@pytest.fixture
def extra_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PASSES, "boom", Boom)
    monkeypatch.setitem(PASSES, "unloss", Unloss)


def test_pass_manager_names_the_failing_pass_and_those_before(extra_passes: None) -> None:
    graph = naive(2, {"body": (2, SGD), "head": (1, SGD)})
    manager = PassManager(["prune-gradients", "group-updates", "boom"], out=io.StringIO())
    with pytest.raises(PassError) as info:
        manager.run(graph)
    assert str(info.value) == ("error in pass boom after passes [prune-gradients, "
                               "group-updates]: RuntimeError: kaboom")
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(PassError, match=r"^error in pass boom after passes \[\]: "):
        PassManager(["boom", "prune-gradients"]).run(graph)


def test_pass_manager_verifies_after_every_pass(extra_passes: None) -> None:
    graph = naive(1, {"a": (1, SGD)})
    with pytest.raises(PassError) as info:
        PassManager(["prune-gradients", "unloss", "group-updates"]).run(graph)
    assert str(info.value).startswith("error in pass unloss after passes [prune-gradients]: "
                                      "GraphError: s0.backward: a backward needs the loss")
    assert isinstance(info.value.__cause__, GraphError)


def test_print_after_and_stop_after() -> None:
    graph = naive(2, {"body": (2, SGD), "head": (1, SGD)})
    out = io.StringIO()
    result = PassManager(["prune-gradients", "group-updates"], print_after=["all"],
                         out=out).run(graph)
    text = out.getvalue()
    pruned = PruneGradients().apply(graph)
    assert text == (f"// ----- after prune-gradients\n{pruned.to_text()}"
                    f"// ----- after group-updates\n{result.to_text()}")
    out = io.StringIO()
    PassManager(["prune-gradients", "group-updates"], print_after=["group-updates"],
                out=out).run(graph)
    assert out.getvalue() == f"// ----- after group-updates\n{result.to_text()}"
    out = io.StringIO()
    PassManager(["prune-gradients"], print_after=["build"], out=out).run(graph)
    assert out.getvalue() == f"// ----- after build\n{graph.to_text()}"
    manager = PassManager(["prune-gradients", "group-updates"], out=io.StringIO())
    stopped = manager.run(graph, stop_after="prune-gradients")
    assert stopped.to_text() == pruned.to_text()
    assert [name for name, _ in manager.timings] == ["prune-gradients"]


def test_time_passes() -> None:
    out = io.StringIO()
    manager = PassManager(["prune-gradients", "group-updates"], time_passes=True, out=out)
    manager.run(naive(2, {"body": (2, SGD), "head": (1, SGD)}))
    lines = out.getvalue().splitlines()
    assert lines[0] == "// pass timings"
    assert [line.split()[1] for line in lines[1:]] == ["prune-gradients", "group-updates", "total"]
    times = [float(re.fullmatch(r"//\s+\S+\s+(\d+\.\d{3}) ms", line).group(1))  # type: ignore[union-attr]
             for line in lines[1:]]
    assert times[2] == pytest.approx(times[0] + times[1], abs=2e-3)
    assert [name for name, _ in manager.timings] == ["prune-gradients", "group-updates"]


def test_parse_pipeline() -> None:
    assert parse_pipeline("prune-gradients, group-updates") == ["prune-gradients",
                                                                "group-updates"]
    assert parse_pipeline("group-updates,,") == ["group-updates"]
    with pytest.raises(PassError) as info:
        parse_pipeline("prune-gradients,group-update")
    assert str(info.value) == "unknown pass `group-update`; did you mean `group-updates`?"
    with pytest.raises(PassError) as info:
        parse_pipeline("zzz")
    assert str(info.value).startswith("unknown pass `zzz`; passes are prune-gradients")


def test_every_registered_pass_is_documented_and_named_like_its_file() -> None:
    root = Path(__file__).resolve().parents[2] / "passes"
    for name, cls in PASSES.items():
        assert cls.name == name and re.fullmatch(r"[a-z]+(-[a-z]+)*", name)
        assert (root / f"{name.replace('-', '_')}.py").is_file()
        doc = cls.__module__ and __import__(cls.__module__, fromlist=["_"]).__doc__
        assert doc and doc.startswith(f"{name}:") and "Requires:" in doc and "Ensures:" in doc
    assert all(name in PASSES for name in DEFAULT_PIPELINE)


# ---- `mrc graph` ----------------------------------------------------------------------------

SPEC = """\
model mlp(hidden=[8])
data digits(limit=64)
optimizer sgd(lr=0.1)
partition head = module("head")
partition body = rest { optimizer adam(lr=0.01) }
"""


@pytest.fixture
def spec(tmp_path: Path) -> str:
    path = tmp_path / "g.mrs"
    path.write_text(SPEC)
    return str(path)


def graph_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["graph", *args])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return status, out.out, out.err


def test_cli_print_after_all(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = graph_cli(capsys, spec, "--print-after", "all")
    assert status == 0
    headers = re.findall(r"^// ----- after (\S+)$", err, flags=re.M)
    assert headers == list(DEFAULT_PIPELINE)
    # the last printed graph is the one written to stdout
    assert err.endswith(out)
    assert "update_group head {head}" in out and "update_group body {body}" in out


def test_cli_print_after_one_pass_and_build(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = graph_cli(capsys, spec, "--print-after", "build", "--print-after",
                               "prune-gradients")
    assert status == 0
    assert re.findall(r"^// ----- after (\S+)$", err, flags=re.M) == ["build", "prune-gradients"]
    build = err.split("// ----- after prune-gradients\n")[0]
    assert "update head sgd(lr=0.1) lr×1" in build and "update_group" not in build


def test_cli_time_passes(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = graph_cli(capsys, spec, "--time-passes")
    assert status == 0
    lines = err.splitlines()
    start = lines.index("// pass timings")
    names = [line.split()[1] for line in lines[start + 1:]]
    assert names == [*DEFAULT_PIPELINE, "total"]
    assert all(re.fullmatch(r"//\s+\S+\s+\d+\.\d{3} ms", line) for line in lines[start + 1:])


def test_cli_after_build_and_a_pass(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = graph_cli(capsys, spec, "--after", "build")
    assert status == 0
    assert "backward wrt {head, body}" in out and "update_group" not in out
    status, out, _ = graph_cli(capsys, spec, "--after", "prune-gradients")
    assert status == 0 and "update head" in out and "update_group" not in out


def test_cli_passes_option(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = graph_cli(capsys, spec, "--passes", "group-updates")
    assert status == 0 and "update_group head {head}" in out


def test_cli_formats_and_output_file(spec: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = graph_cli(capsys, spec, "--format", "json")
    assert status == 0
    data = json.loads(out)
    assert data["period"] == 1 and list(data["partitions"]) == ["head", "body"]
    assert ScheduleGraph.from_json(out).to_json() == out
    target = tmp_path / "g.dot"
    status, out, _ = graph_cli(capsys, spec, "--format", "dot", "-o", str(target))
    assert status == 0 and out == ""
    assert target.read_text().startswith("digraph schedule {")


@pytest.mark.parametrize(("args", "message"), [
    (["--passes", "prune-gradient"],
     "mrc graph: unknown pass `prune-gradient`; did you mean `prune-gradients`?"),
    (["--after", "group-update"], "mrc graph: --after/--print-after `group-update` is not in the "
                                  "pipeline"),
    (["--passes", "group-updates", "--print-after", "prune-gradients"],
     "mrc graph: --after/--print-after `prune-gradients` is not in the pipeline (build, "
     "group-updates)"),
])
def test_cli_pass_errors(spec: str, capsys: pytest.CaptureFixture[str], args: list[str],
                         message: str) -> None:
    status, out, err = graph_cli(capsys, spec, *args)
    assert status == 2 and out == ""
    assert err.startswith(message), err


def test_cli_reports_a_failing_pass(spec: str, capsys: pytest.CaptureFixture[str],
                                    extra_passes: None) -> None:
    status, out, err = graph_cli(capsys, spec, "--passes", "prune-gradients,boom,group-updates")
    assert status == 2 and out == ""
    assert err == ("mrc graph: error in pass boom after passes [prune-gradients]: "
                   "RuntimeError: kaboom\n")


def test_select_kernels_picks_fused_sgd_and_leaves_other_rules() -> None:
    from mrc.passes.select_kernels import SelectKernels

    from mrc.graph import ScheduleGraph, UpdateGroup

    g = ScheduleGraph(1, {"a": {"rule": "sgd(lr=0.1)", "drift": "linear"},
                          "b": {"rule": "adam(lr=0.001)"},
                          "c": {"rule": "sgd(lr=0.1) ", "random": "random(0.1)"},
                          "d": {"rule": "sgd(lr=0.2)"}})
    for name, info in g.partitions.items():
        g.add(UpdateGroup(0, name, (name,), info["rule"]))
    g.meta["device"] = "cpu"
    kernels = {op.name: op.kernel for op in SelectKernels().apply(g).ops()}
    # on the CPU only the rule with a drifting partition goes through the fused path
    assert kernels == {"a": "torch", "b": "torch.optim", "c": "subset", "d": "torch.optim"}
