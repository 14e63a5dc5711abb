"""`mrc plot` (issue 14, item 2): a quickstart run, a brains run and two runs together draw valid
PNGs with the panels their records call for; a directory that is not a run, or an unknown
metric, is one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from mrc.api import train
from mrc.plot import PlotError, choose, plot, read_run

ROOT = Path(__file__).resolve().parents[2]
FAST = ["train.log_every=2", "train.eval_every=4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    train(ROOT / "specs/quickstart.mrs", out=base / "quick", steps=8, overrides=FAST, tensorboard=False)
    train(ROOT / "specs/brains_two.mrs", out=base / "brains", steps=8, overrides=FAST, tensorboard=False)
    return {"quick": base / "quick", "brains": base / "brains"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mrc.cli", "plot", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def valid_png(path: Path, rows: int, cols: int) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    height, width = image.shape[:2]
    assert (height, width) == (round(320 * rows), round(460 * cols)), (height, width)
    assert image.std() > 0.01  # something is drawn


def test_plot_a_quickstart_run_by_default_into_its_directory(runs: dict[str, Path]) -> None:
    done = cli(str(runs["quick"]))
    assert done.returncode == 0, done.stderr
    target = runs["quick"] / "plot.png"
    assert done.stdout.strip() == f"mrc: wrote {target}"
    names = [p.name for p, _ in choose([read_run(runs["quick"])], None)]
    assert names == ["loss", "val_acc", "loss_time", "val_acc_time", "lr"]
    valid_png(target, rows=2, cols=3)


def test_plot_a_brains_run_has_brains_against_the_merged_model(runs: dict[str, Path], tmp_path: Path) -> None:
    panels = choose([read_run(runs["brains"])], None)
    names = [p.name for p, _ in panels]
    assert {"brains_acc", "brains_loss"} <= set(names)
    brains = next(lines for p, lines in panels if p.name == "brains_acc")
    assert [label for label, _, _ in brains[0]] == ["fast", "slow", "merged"]
    target = plot([runs["brains"]], ["brains"], tmp_path / "b.png")
    valid_png(target, rows=1, cols=2)


def test_two_runs_together(runs: dict[str, Path], tmp_path: Path) -> None:
    done = cli(str(runs["quick"]), str(runs["brains"]), "--metric", "val_acc,lr", "--metric", "time",
               "-o", str(tmp_path / "both.png"))
    assert done.returncode == 0, done.stderr
    valid_png(tmp_path / "both.png", rows=2, cols=3)  # val_acc, lr, loss_time, val_acc_time


def test_a_resumed_runs_clock_runs_on(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    recs = [{"step": 2, "loss": 1.0, "time": 1.0}, {"step": 4, "loss": 0.9, "time": 2.0},
            {"step": 6, "loss": 0.8, "time": 0.5}]  # resumed after step 4: the clock restarted
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 8, "lo')
    assert [r["time"] for r in read_run(run).train] == [1.0, 2.0, 2.5]


def test_not_a_run_and_unknown_metric_are_one_line_exit_2(runs: dict[str, Path], tmp_path: Path) -> None:
    done = cli(str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"mrc plot: {tmp_path} is not a run directory (it has no "
                                                "metrics.jsonl)"]
    done = cli(str(runs["quick"]), "--metric", "nonsense")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mrc plot: unknown metric `nonsense` (known: ")
    with pytest.raises(PlotError, match="no run has `mgrit` metrics"):
        plot([runs["quick"]], ["mgrit"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _lines(fig, title: str):
    [ax] = [a for a in fig.axes if a.get_title() == title]
    return ax, ax.get_lines()


def test_sparse_series_get_markers_and_equal_lines_stay_apart(tmp_path: Path) -> None:
    """One evaluation (after one epoch) is a dot, not an invisible line; two partitions at the
    same rate draw in two styles and markers, so the second does not hide the first."""
    from mrc.plot import draw

    run = tmp_path / "r"
    run.mkdir()
    rows = [{"step": s, "epoch": s / 10, "loss": 2.0 - s / 10, "lr": {"a": 0.1, "b": 0.1}, "time": s / 100}
            for s in range(1, 11)] + [{"step": 10, "epoch": 1.0, "val_loss": 1.5, "val_acc": 0.6, "time": 0.1}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = [read_run(run)]
    fig = draw(runs, choose(runs, None))
    _, [val] = _lines(fig, "validation accuracy")
    assert val.get_marker() == "o" and len(val.get_xdata()) == 1
    _, (a, b) = _lines(fig, "learning rate per partition")
    assert (a.get_linestyle(), a.get_marker()) != (b.get_linestyle(), b.get_marker())


def test_the_x_axis_and_smoothing(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mrc import plot as plotting

    seen = {}
    real = plotting.draw

    def keep(runs_, panels, smooth=0.0):
        seen["fig"] = real(runs_, panels, smooth)
        return seen["fig"]

    monkeypatch.setattr(plotting, "draw", keep)
    run = tmp_path / "dense"
    run.mkdir()
    rows = [{"step": s, "epoch": s / 20, "loss": 2.0 / s + (s % 3) / 10, "time": s / 100} for s in range(1, 61)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot([run], ["loss"], tmp_path / "e.png", x="epoch", smooth=0.6)
    ax, lines = _lines(seen["fig"], "loss")
    assert ax.get_xlabel() == "epoch"
    raw = [ln for ln in lines if ln.get_alpha() == 0.25]
    assert raw, "smoothing keeps the raw line, faint"
    smooth = next(ln for ln in lines if ln.get_label().endswith("train loss"))
    assert list(smooth.get_ydata()) == plotting.ema(list(raw[0].get_ydata()), 0.6)
    assert max(smooth.get_xdata()) <= 3.0  # epochs, not steps
    assert plotting.ema([1.0, 3.0], 0.5) == pytest.approx([1.0, 1.0 * 0.25 / 0.75 + 3.0 * 0.5 / 0.75])
    with pytest.raises(PlotError, match=r"--smooth 1\.5"):
        plot([runs["quick"]], ["loss"], tmp_path / "x.png", smooth=1.5)
