"""TensorBoard events (issue 14, item 1): every run with a directory writes `DIR/tb/`, read back
here with TensorBoard's own reader; the tags of brains, modules and MGRIT runs; turned off by
`--no-tensorboard`; a paused and resumed run has each step of each tag once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mrc.api import train
from mrc.runtime.tensorboard import scalars

ROOT = Path(__file__).resolve().parents[2]
SPEC = """
model mlp(hidden=[16])
data digits(batch=32, val=0.2, normalize=true)
optimizer sgd(lr=0.05, momentum=0.9)
schedule cosine(warmup=5)
train(epochs=3, seed=2, log_every=2, eval_every=4)
"""


def events(run_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run_dir / "tb"))
    ea.Reload()
    return ea


def steps(ea: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in ea.Scalars(tag)]


def test_a_run_writes_its_metrics_spec_and_graph(tmp_path: Path) -> None:
    result = train(ROOT / "specs/quickstart.mrs", out=tmp_path / "run", steps=8,
                   overrides=["train.log_every=2", "train.eval_every=4"])
    ea = events(tmp_path / "run")
    tags = ea.Tags()
    assert {"train/loss", "lr/all", "val/loss", "val/acc"} <= set(tags["scalars"])
    assert {"spec/text_summary", "graph/text_summary"} <= set(tags["tensors"])
    assert steps(ea, "train/loss") == [2, 4, 6, 8]
    assert steps(ea, "val/acc") == [4, 8]
    logged = [r["loss"] for r in result.metrics if "loss" in r]
    assert all(abs(e.value - v) < 1e-5 for e, v in zip(ea.Scalars("train/loss"), logged, strict=True))
    text = ea.Tensors("spec/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "model mlp(hidden=[128, 64])" in text
    assert "log_every=2" in text and "eval_every=4" in text  # the spec as it ran: `--set` written in


def test_the_overrides_are_the_runs_hparams(tmp_path: Path) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    train(ROOT / "specs/quickstart.mrs", out=tmp_path / "run", steps=2,
          overrides=["optimizer.lr=0.2", "train.log_every=1"])
    ea = events(tmp_path / "run")
    content = ea.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in content
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    got = {k: v.number_value for k, v in data.session_start_info.hparams.items()}
    assert got == {"optimizer.lr": 0.2, "train.log_every": 1.0}
    graph = ea.Tensors("graph/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "step 0:" in graph


def test_brains_modules_and_mgrit_records_have_their_tags() -> None:
    """The mapping from records to tags, on records shaped as the trainer writes them; each
    technique's entry is mapped by the scalars hook its lowering registers on the Plan."""
    from mrc.techniques.brains.lower import brain_scalars
    from mrc.techniques.mgrit.lower import mgrit_scalars
    from mrc.techniques.modules.lower import module_scalars

    techniques = {"brains": brain_scalars, "modules": module_scalars, "mgrit": mgrit_scalars}
    train_rec = {"step": 4, "epoch": 0.1, "loss": 2.0, "lr": {"fast.all": 0.02, "all@m0": 0.1}, "time": 0.1,
                 "brains": {"fast": 2.0},
                 "modules": {"m0": {"tau": 0.5, "transport": 0.9, "loss": 2.1}, "r.m1": {"lambda": 0.2, "loss": 1.0}},
                 "mgrit": {"stack": {"forward": [16.0, 1.5], "forward_factor": [0.1], "adjoint": [0.08],
                                     "adjoint_factor": []}}}
    assert scalars(train_rec, techniques) == {
        "train/loss": 2.0, "lr/fast.all": 0.02, "lr/all_m0": 0.1, "brains/fast/loss": 2.0,
        "modules/m0/tau": 0.5, "modules/m0/transport": 0.9, "modules/m0/loss": 2.1,
        "modules/r.m1/lambda": 0.2, "modules/r.m1/loss": 1.0,
        "mgrit/stack/forward_residual": 1.5, "mgrit/stack/forward_factor": 0.1,
        "mgrit/stack/adjoint_residual": 0.08}
    eval_rec = {"step": 4, "epoch": 0.1, "val_loss": 1.0, "val_acc": 0.5, "time": 0.2,
                "brains": {"fast": {"val_loss": 1.1, "val_acc": 0.4}}, "evals": {"clean": {"loss": 0.9, "acc": 0.6}}}
    assert scalars(eval_rec, techniques) == {
        "val/loss": 1.0, "val/acc": 0.5, "eval/clean/loss": 0.9, "eval/clean/acc": 0.6,
        "brains/fast/val_loss": 1.1, "brains/fast/val_acc": 0.4,
        "brains/merged/val_loss": 1.0, "brains/merged/val_acc": 0.5}
    assert scalars({"step": 3, "loss": None, "lr": {}}, techniques) == {}
    assert scalars(train_rec) == {"train/loss": 2.0, "lr/fast.all": 0.02, "lr/all_m0": 0.1}  # no hooks: core tags


def test_brains_and_modules_specs_write_their_tags(tmp_path: Path) -> None:
    train(ROOT / "specs/brains_two.mrs", out=tmp_path / "b", steps=4,
          overrides=["train.log_every=2", "train.eval_every=4"])
    tags = set(events(tmp_path / "b").Tags()["scalars"])
    assert {"brains/fast/loss", "brains/fast/val_acc", "brains/slow/val_acc", "brains/merged/val_acc",
            "lr/fast.all", "lr/slow.all"} <= tags
    train(ROOT / "specs/modules_trgl.mrs", out=tmp_path / "m", steps=2,
          overrides=["train.log_every=2", "train.eval_every=2", "model.width=4"])
    tags = set(events(tmp_path / "m").Tags()["scalars"])
    assert {"modules/m0/loss", "modules/m0/transport", "modules/m0/tau", "lr/all_m0"} <= tags


def test_no_tensorboard_writes_no_tb(tmp_path: Path) -> None:
    spec = tmp_path / "s.mrs"
    spec.write_text(SPEC)
    done = subprocess.run([sys.executable, "-m", "mrc.cli", "train", str(spec), "--steps", "2", "--out",
                           str(tmp_path / "run"), "--no-progress", "--no-tensorboard"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "tb").exists()
    train(spec, out=tmp_path / "api", steps=2, tensorboard=False)
    assert not (tmp_path / "api" / "tb").exists()


def test_resume_appends_each_step_once(tmp_path: Path) -> None:
    """Paused at step 10 (its checkpoint there), a crash is simulated by events the paused run
    never checkpointed (steps 12 and 14 written after the pause); the resume discards them and
    logs its own: every tag has each step exactly once, and the values of the uninterrupted run."""
    from torch.utils.tensorboard import SummaryWriter

    spec = tmp_path / "s.mrs"
    spec.write_text(SPEC)
    whole = tmp_path / "whole"
    train(spec, out=whole, steps=20)
    split = tmp_path / "split"
    train(spec, out=split, steps=20, stop_at=10)
    stray = SummaryWriter(str(split / "tb"))  # what a crash after the checkpoint leaves behind
    for step in (12, 14):
        stray.add_scalar("train/loss", 99.0, step)
    stray.close()
    train(spec, resume=split)
    a, b = events(whole), events(split)
    assert set(a.Tags()["scalars"]) == set(b.Tags()["scalars"])
    for name in a.Tags()["scalars"]:
        got = steps(b, name)
        assert got == sorted(set(got)) == steps(a, name), name
        assert all(abs(x.value - y.value) < 1e-5 for x, y in zip(a.Scalars(name), b.Scalars(name), strict=True)), name
    assert steps(b, "train/loss") == list(range(2, 21, 2))
