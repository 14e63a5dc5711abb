"""The schedule drawn: the Graphviz SVG (one cluster per step pattern, sub-clusters per scope, ops
filled by kind), the one-line error without `dot`, and the timeline data the HTML page shows
(rows per partition and brain, columns per step, marks, the column cap)."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mrc.cli import main
from mrc.ir.draw import DotMissing, color_of, group_of, palette, render, to_graphviz
from mrc.ir.graph import PartitionInfo, Pattern, ScheduleGraph, Stage
from mrc.ir.html import layers_of, timeline, to_html
from mrc.ir.html import marks as legend
from mrc.ir.ops import Backward, Batch, Forward, Loss, Rule, Scope, UpdateGroup, Value
from mrc.techniques.brains.ops import Merge
from mrc.techniques.brains.tables import BRAINS, Brains, ReplicaInfo
from mrc.techniques.multirate.ops import Drift

ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")


def _step(brains: tuple[str, ...], update: tuple[str, ...], merge: bool, drift: str = "") -> Pattern:
    """One step of two brains on partitions `body` (layer 0) and `head` (layer 1)."""
    p = Pattern()
    both = Scope(brains)
    batches = [p.add(Batch(Scope((b,)))) for b in brains]
    fwd = p.add(Forward(both, 0, None, update), [(b, Value("batch")) for b in batches])
    loss = p.add(Loss(both), [(fwd, Value("logits")), *[(b, Value("batch")) for b in batches]])
    bwd = p.add(Backward(both, update), [(loss, Value("loss"))])
    upd = p.add(UpdateGroup(both, "g", update, Rule("sgd"), (0.1,) * (len(update) * len(brains))),
                [(bwd, Value("grads", update))])
    if drift:
        p.add(Drift(both, drift, 2), p.after([upd]))
    if merge:
        p.add(Merge(brains=("fast", "slow")), p.after([upd]))
    return p


def small() -> ScheduleGraph:
    """Period 2: step 0 both brains update body and head; step 1 only `fast` updates head,
    `body` drifts, and the brains merge."""
    p0 = _step(("fast", "slow"), ("body", "head"), merge=False)
    p1 = _step(("fast",), ("head",), merge=True, drift="body")
    p0.steps, p1.steps = (0,), (1,)
    parts = {"body": PartitionInfo(("layers.0.weight",), 10, 2), "head": PartitionInfo(("head.weight",), 5, 1)}
    graph = ScheduleGraph([Stage("train", 2, [p0, p1], (0, 1))], parts,
                          layers=("layers.0", "head"),
                          tables={BRAINS: Brains({"fast": ReplicaInfo(1), "slow": ReplicaInfo(2)})})
    graph.verify()
    return graph


def test_every_kind_has_a_palette_colour() -> None:
    assert color_of("forward") == palette()["forward"] != color_of("backward")
    assert color_of("update") == color_of("update_group")
    assert color_of("restore") == color_of("resample")
    assert color_of("aux_head") == color_of("local_loss")
    assert group_of("mgrit_relax") == group_of("mgrit_correct") == "mgrit"
    assert color_of("someone_elses_kind") == palette()["other"]


def test_graphviz_source_has_a_cluster_per_pattern_and_per_scope() -> None:
    source = to_graphviz(small()).source
    assert len(re.findall(r"subgraph cluster_g0p\d+ \{", source)) == 2
    assert 'label="brains=fast,slow"' in source and 'label="brain=fast"' in source
    assert 'label="pattern 1 — step 1"' in source
    assert 'label="grads{body, head}"' in source and "style=dashed" in source  # values and order edges


def _svg_nodes(svg: bytes) -> tuple[list[str], dict[str, set[str]]]:
    """Top-level pattern clusters' titles, and the fill colours of op nodes by kind."""
    root = ET.fromstring(svg)
    clusters, fills = [], {}
    for g in root.iter(f"{SVG}g"):
        classes = g.get("class", "").split()
        title = g.findtext(f"{SVG}title", "")
        if "cluster" in classes and re.fullmatch(r"cluster_g\d+p\d+", title):
            clusters.append(title)
        if "node" in classes:
            kind = next(c[len("kind-"):] for c in classes if c.startswith("kind-"))
            shape = next(e for e in g.iter() if e.tag in (f"{SVG}path", f"{SVG}polygon") and e.get("fill"))
            fills.setdefault(kind, set()).add(shape.get("fill", ""))
    return clusters, fills


@needs_dot
def test_svg_of_a_small_graph_parses_and_is_coloured_by_kind() -> None:
    clusters, fills = _svg_nodes(render(small(), "svg"))
    assert clusters == ["cluster_g0p0", "cluster_g0p1"]
    assert set(fills) == {"batch", "forward", "loss", "backward", "update_group", "drift", "merge"}
    assert all(colours == {color_of(kind)} for kind, colours in fills.items())


@needs_dot
def test_svg_of_a_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = ROOT / "specs" / "brains_two.mrs"
    assert main(["graph", str(spec), "--format", "svg", "--set", "train.device=cpu"]) == 0
    clusters, fills = _svg_nodes(capsys.readouterr().out.encode())
    assert len(clusters) == 3  # the period's three step patterns
    assert fills["forward"] == {palette()["forward"]} and fills["merge"] == {palette()["merge"]}
    out = tmp_path / "g.png"
    assert main(["graph", str(spec), "--format", "png", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_dot_one_line_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DotMissing, match="apt-get install graphviz"):
        render(small(), "svg")
    assert main(["graph", str(ROOT / "specs" / "partitions.mrs"), "--format", "svg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apt-get install graphviz" in err[0] and "brew install graphviz" in err[0]


def test_png_needs_an_output_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", str(ROOT / "specs" / "partitions.mrs"), "--format", "png"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_timeline_rows_columns_and_marks() -> None:
    line = timeline(small())
    rows = [r["label"] for r in line["rows"] if r["kind"] == "partition"]
    assert rows == ["fast · body", "fast · head", "slow · body", "slow · head"]
    assert [(c["step"], c["pattern"]) for c in line["columns"]] == [(0, 0), (1, 1)]
    index = {r["label"]: str(i) for i, r in enumerate(line["rows"])}

    def marks(pattern: int, row: str) -> list[str]:
        return [m for m, _ in line["marks"][0][pattern].get(index[row], [])]

    assert marks(0, "slow · body") == ["F", "B", "U"]
    assert marks(1, "fast · head") == ["F", "B", "U", "M"]
    assert marks(1, "fast · body") == ["f", "D", "M"]  # no gradient, drifts, merged
    assert marks(1, "slow · head") == ["M"]
    assert set(legend()) >= {m for p in line["marks"][0] for cell in p.values() for m, _ in cell}


def test_timeline_caps_the_columns() -> None:
    pattern = _step(("fast",), ("head",), merge=False)
    pattern.steps = tuple(range(1000))
    graph = ScheduleGraph([Stage("train", 1000, [pattern], (0,) * 1000)],
                          {"body": PartitionInfo(("layers.0.weight",), 10), "head": PartitionInfo(("head.weight",), 5)},
                          layers=("layers.0", "head"), tables={BRAINS: Brains({"fast": ReplicaInfo()})})
    line = timeline(graph)
    assert (len(line["columns"]), line["total"]) == (256, 1000)
    assert "The period has 1000 steps; the first 256 are shown." in to_html(graph)


def test_layers_are_topological() -> None:
    pattern = small().stage.patterns[0]
    layers = layers_of(pattern)
    depth = {op.id: i for i, layer in enumerate(layers) for op in layer}
    assert [op.kind for op in layers[0]] == ["batch", "batch"]
    assert all(depth[a] < depth[b] for a, b in pattern.g.edges)


def test_timeline_columns_run_through_the_stages() -> None:
    graph = small()
    second = graph.stage.copy()
    second.name = "tune"
    graph.stages.append(second)
    line = timeline(graph)
    assert [(c["stage"], c["step"]) for c in line["columns"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [s["name"] for s in line["stages"]] == ["train", "tune"]
