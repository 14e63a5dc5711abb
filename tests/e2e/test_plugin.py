"""A technique outside mrc, installed as a plugin through the entry-point group `mrc.techniques`:
tests/plugins/mrc_demo_technique (an exponential moving average of the weights, `ema(decay=…)`)
is found by `mrc`'s own commands, shown in `mrc graph`, and trains end to end with the average
it promises. A plugin that cannot load is one line naming its entry point, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
SPEC = """model mlp(hidden=[16])
data digits(batch=32, val=0.2)
optimizer sgd(lr=0.05, momentum=0.9)
train(seed=0, eval_every=0, log_every=1, device=cpu)
ema(decay=0.9)
"""


def install(site: Path, entry: str) -> dict[str, str]:
    """An environment in which a package whose entry point is `ema = ENTRY` is installed (a
    `.dist-info` folder on the path, as pip would leave it) and the plugin's code importable."""
    info = site / "mrc_demo_technique-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mrc-demo-technique\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[mrc.techniques]\nema = {entry}\n")
    path = os.pathsep.join([str(site), str(PLUGINS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def mrc(env: dict[str, str] | None, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mrc", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_plugin_technique_trains_end_to_end(tmp_path: Path) -> None:
    spec = tmp_path / "ema.mrs"
    spec.write_text(SPEC)
    unknown = mrc({**os.environ, "PYTHONPATH": str(PLUGINS)}, "check", str(spec))  # importable, not installed
    assert unknown.returncode == 2 and "unknown statement `ema`" in unknown.stderr
    env = install(tmp_path / "site", "mrc_demo_technique:TECHNIQUE")
    graph = mrc(env, "graph", str(spec))
    assert graph.returncode == 0, graph.stderr
    assert "= ema of the weights decay=0.9  ← %4\n" in graph.stdout  # after the step's update
    weights = []
    for steps in (1, 2, 3):
        run = mrc(env, "train", str(spec), "--steps", str(steps), "--out", str(tmp_path / f"run{steps}"))
        assert run.returncode == 0, run.stderr
        weights.append(torch.load(tmp_path / f"run{steps}" / "final.pt", weights_only=True))
    state = torch.load(tmp_path / "run3" / "checkpoint.pt", weights_only=True)["plan"]["state"]
    assert int(state["ema.#steps"]) == 3
    for name, first in weights[0].items():
        expected = first.double()  # e1 = θ1; e_t = 0.9·e_{t−1} + 0.1·θ_t
        for w in weights[1:]:
            expected = 0.9 * expected + 0.1 * w[name].double()
        got = state[f"ema.{name}"].double()
        assert torch.allclose(got, expected, rtol=0, atol=1e-6), name
        assert (got - weights[2][name].double()).abs().max() > 1e-3  # an average, not the last weights


@pytest.mark.parametrize(("entry", "says"), [
    ("mrc_no_such_plugin:TECHNIQUE", "cannot be loaded: ModuleNotFoundError: No module named 'mrc_no_such_plugin'"),
    ("json:dumps", "is a function, not an mrc.techniques.base.Technique record"),
])
def test_a_broken_plugin_is_one_line_naming_its_entry_point(tmp_path: Path, entry: str, says: str) -> None:
    spec = tmp_path / "plain.mrs"
    spec.write_text(SPEC.replace("ema(decay=0.9)\n", ""))
    out = mrc(install(tmp_path / "site", entry), "check", str(spec))
    assert out.returncode == 2
    line, total = out.stderr.splitlines()  # the diagnostic, then the count of errors
    assert line.startswith(f"error: the technique plugin `ema = {entry}` (entry point group mrc.techniques) ")
    assert says in line and total == "1 error found"
