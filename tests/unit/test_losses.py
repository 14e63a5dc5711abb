"""Losses and metrics: the registry and its prepared callables against torch's functionals, the
scoring of an evaluation per task, the `loss` / `metric` statements in the Program, the loss op
(text, JSON, a graph edit that the run follows), and the loader's targets per task."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrc.api import compile_spec, train
from mrc.check.checker import check
from mrc.data.files import DataError
from mrc.data.loader import _bundle, _labels
from mrc.diagnostics import CompileError
from mrc.ir.graph import ScheduleGraph
from mrc.ir.ops import Loss
from mrc.losses import LOSSES, TASK_METRICS, metric_mode, prepare, scoring, task_of
from mrc.parser import parse
from mrc.program import Program
from mrc.runtime.evaluation import evaluate, evaluate_batches

BASE = "model mlp()\ndata digits()\noptimizer sgd(lr=0.1)\n"


def program(text: str) -> Program:
    return check(parse(text, "c.mrs"), Path("."))


def messages(text: str) -> list[str]:
    with pytest.raises(CompileError) as info:
        program(text)
    return [d.message for d in info.value.diagnostics]


# ---- the registry ---------------------------------------------------------------------------


def test_every_builtin_says_its_task() -> None:
    assert {e.name: task_of(e.name) for e in LOSSES} == {
        "cross_entropy": "classification", "nll": "classification", "mse": "regression",
        "l1": "regression", "smooth_l1": "regression", "bce_with_logits": "multilabel"}
    assert TASK_METRICS == {"classification": ("acc",), "regression": (), "multilabel": ("acc", "exact")}


def _inputs(task: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    if task == "classification":
        return out, torch.randint(0, 4, (7,), generator=gen)
    if task == "multilabel":
        return out, (torch.rand(7, 4, generator=gen) > 0.5).double()
    return out, torch.randn(7, 4, generator=gen, dtype=torch.float64)


FUNCTIONALS = [
    ("cross_entropy", {}, F.cross_entropy),
    ("cross_entropy", {"label_smoothing": 0.3}, lambda o, y: F.cross_entropy(o, y, label_smoothing=0.3)),
    ("nll", {}, F.nll_loss),
    ("mse", {}, F.mse_loss),
    ("l1", {}, F.l1_loss),
    ("smooth_l1", {"beta": 0.25}, lambda o, y: F.smooth_l1_loss(o, y, beta=0.25)),
    ("bce_with_logits", {}, F.binary_cross_entropy_with_logits),
    ("bce_with_logits", {"pos_weight": [0.5, 1, 2, 4]}, lambda o, y: F.binary_cross_entropy_with_logits(
        o, y, pos_weight=torch.tensor([0.5, 1, 2, 4], dtype=o.dtype))),
]


@pytest.mark.parametrize(("name", "args", "reference"), FUNCTIONALS,
                         ids=[f"{n}{a or ''}" for n, a, _ in FUNCTIONALS])
def test_prepared_loss_equals_torch_functional(name: str, args: dict, reference) -> None:
    gen = torch.Generator().manual_seed(0)
    prepared = prepare(name, args.items(), dtype=torch.float64)
    out, y = _inputs(task_of(name), gen)
    assert float(prepared.mean(out, y)) == pytest.approx(float(reference(out, y)), rel=1e-14)
    # stacked replicas: each its own batch's mean (one flattened call)
    outs = torch.stack([_inputs(task_of(name), gen)[0] for _ in range(3)])
    ys = torch.stack([_inputs(task_of(name), gen)[1] for _ in range(3)])
    each = prepared.per_replica(outs, ys)
    assert each.shape == (3,)
    for i in range(3):
        assert float(each[i]) == pytest.approx(float(reference(outs[i], ys[i])), rel=1e-12)


def test_user_loss_per_replica_calls_it_per_replica(tmp_path: Path) -> None:
    (tmp_path / "u.py").write_text("def loss(o, y, p=2):\n    return (o - y).abs().pow(p).mean()\n")
    prepared = prepare("u.py:loss", [("p", 3)], str(tmp_path))
    o, y = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    assert prepared.elementwise is None
    torch.testing.assert_close(prepared.per_replica(o, y), (o - y).abs().pow(3).mean((1, 2)))


# ---- scoring --------------------------------------------------------------------------------


def test_evaluation_measures_follow_the_task() -> None:
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 4).double()
    x = torch.randn(50, 3, dtype=torch.float64)
    with torch.no_grad():
        out = module(x)
    labels = torch.randint(0, 4, (50,))
    got = evaluate(module, x, labels, batch=7)
    assert set(got) == {"loss", "acc"}
    assert got["loss"] == pytest.approx(float(F.cross_entropy(out, labels)), rel=1e-12)
    assert got["acc"] == pytest.approx(float((out.argmax(1) == labels).double().mean()))

    targets = torch.randn(50, 4, dtype=torch.float64)
    got = evaluate(module, x, targets, batch=7, scoring=scoring(prepare("l1"), "regression"))
    assert set(got) == {"loss"} and got["loss"] == pytest.approx(float(F.l1_loss(out, targets)), rel=1e-12)

    tags = (torch.rand(50, 4) > 0.5).double()
    got = evaluate(module, x, tags, batch=7, scoring=scoring(prepare("bce_with_logits"), "multilabel",
                                                             [("mean_out", lambda o, y: o.mean())]))
    right = (out > 0) == (tags > 0.5)
    assert list(got) == ["loss", "acc", "exact", "mean_out"]
    assert got["acc"] == pytest.approx(float(right.double().mean()), rel=1e-12)
    assert got["exact"] == pytest.approx(float(right.all(1).double().mean()), rel=1e-12)
    assert got["mean_out"] == pytest.approx(float(out.mean()), rel=1e-12)  # batch means, size-weighted
    empty = evaluate_batches(module, [], scoring(prepare("mse"), "regression"))
    assert list(empty) == ["loss"] and math.isnan(empty["loss"])


def test_metric_modes() -> None:
    assert metric_mode("val_loss") == metric_mode("clean.loss") == "min"
    assert metric_mode("val_acc") == metric_mode("clean.exact") == "max"
    assert metric_mode("val_mae", {"mae": "min"}) == metric_mode("clean.mae", {"mae": "min"}) == "min"
    assert metric_mode("val_r2", {"r2": "max"}) == "max"


# ---- the statements -------------------------------------------------------------------------


def test_without_a_loss_statement_the_loss_is_cross_entropy_with_train_smoothing() -> None:
    p = program(BASE + "train(label_smoothing=0.2)")
    assert (p.loss.name, dict(p.loss.kwargs), p.loss.task, p.loss.user) == (
        "cross_entropy", {"label_smoothing": 0.2}, "classification", False)


def test_loss_statement_fills_settings_and_task() -> None:
    p = program(BASE + "loss smooth_l1(beta=0.5)")
    assert (p.loss.name, dict(p.loss.kwargs), p.loss.task) == ("smooth_l1", {"beta": 0.5}, "regression")
    p = program(BASE + "loss bce_with_logits")
    assert dict(p.loss.kwargs) == {"pos_weight": None} and p.loss.task == "multilabel"
    p = program(BASE + 'let s = 3\nloss "my.py:fn"(task=multilabel, scale=s)')
    assert (p.loss.name, dict(p.loss.kwargs), p.loss.task, p.loss.user) == ("my.py:fn", {"scale": 3}, "multilabel",
                                                                            True)
    assert program(BASE + 'loss "my.py:fn"').loss.task == "classification"


def test_metric_statements_and_what_can_be_watched() -> None:
    p = program(BASE + 'loss mse\nmetric mae = "m.py:mae" { mode = min, scale = 2 }\n'
                'metric r2 = "m.py:r2"\neval extra = "x.npz"\nearly_stopping(metric=extra.mae)')
    assert [(m.name, m.ref, m.mode, dict(m.kwargs)) for m in p.metrics] == [
        ("mae", "m.py:mae", "min", {"scale": 2}), ("r2", "m.py:r2", "max", {})]
    assert p.early_stopping is not None and p.early_stopping.mode == "min"
    assert program(BASE + 'metric r2 = "m.py:r2"\nearly_stopping(metric=val_r2)').early_stopping.mode == "max"
    assert program(BASE + "early_stopping(metric=val_acc)").early_stopping.mode == "max"
    assert program(BASE + "loss bce_with_logits\nearly_stopping(metric=val_exact)").early_stopping.mode == "max"
    # no accuracy for a regression loss; no exact match for classification
    assert messages(BASE + "loss l1\nearly_stopping(metric=val_acc)") == ["unknown metric `val_acc`"]
    assert messages(BASE + "early_stopping(metric=val_exact)") == ["unknown metric `val_exact`"]


def test_sweep_metric_follows_the_task() -> None:
    sweep = "sweep grid { optimizer.lr = [0.1, 0.2] }\n"
    p = program(BASE + "loss mse\n" + sweep)
    assert p.sweep is not None and (p.sweep.metric, p.sweep.direction) == ("val_loss", "minimize")
    p = program(BASE + sweep)
    assert (p.sweep.metric, p.sweep.direction) == ("val_acc", "maximize")
    p = program(BASE + 'metric mae = "m.py:mae" { mode = min }\n' + sweep.replace("grid", "grid(metric=val_mae)"))
    assert (p.sweep.metric, p.sweep.direction) == ("val_mae", "minimize")
    assert any("`metric` is one of" in m for m in messages(BASE + "loss mse\n" + sweep.replace(
        "grid", "grid(metric=val_acc)")))


def test_combinations_that_make_no_sense_are_refused_at_their_span() -> None:
    with pytest.raises(CompileError) as info:
        program(BASE + "loss nll(label_smoothing=0.1)\n")
    (d,) = info.value.diagnostics
    assert d.message == "unknown argument `label_smoothing` for loss `nll`"
    assert (d.span.line, d.span.col) == (4, 10)
    with pytest.raises(CompileError) as info:
        program(BASE + "loss cross_entropy\ntrain(label_smoothing=0.1)\n")
    (d,) = info.value.diagnostics
    assert d.message.startswith("label smoothing is given twice") and (d.span.line, d.span.col) == (5, 7)
    assert messages("model mlp()\ndata digits(augment=patch())\noptimizer sgd(lr=0.1)\nloss mse") == [
        "the `patch` transform plants a patch per class, but the loss `mse` is a regression loss "
        "(float targets, no classes)"]
    assert messages(BASE + "brain a { every = 1 }\nbrain b { every = 2 }\nmerge best(metric=val_acc)\nloss mse")[0] \
        .startswith("a regression loss (`mse`) has no accuracy")
    assert messages(BASE + 'loss "nothing"') == ['"nothing" is not a user function']
    assert messages(BASE + 'metric loss = "m.py:f"') == ["`loss` cannot name a user metric: it is a built-in measure"]


# ---- the loss op ----------------------------------------------------------------------------


def test_loss_op_text_and_json() -> None:
    op = Loss(fn="smooth_l1", args=(("beta", 0.5),), task="regression")
    assert op.text() == "loss smooth_l1(beta=0.5)"
    assert Loss(fn="bce_with_logits", args=(("pos_weight", None),), task="multilabel").text() == "loss bce_with_logits"
    assert Loss(label_smoothing=0.1).text() == "loss cross_entropy(label_smoothing=0.1)"
    assert Loss(fn="u.py:f", args=(("k", 2),), where="/x").text() == 'loss "u.py:f"(k=2)'
    back = Loss.from_attrs(op.attrs())
    assert back == op


def test_a_graph_edit_of_the_loss_is_what_runs(tmp_path: Path) -> None:
    """The graph is the program: swap the loss op's fn from mse to l1 and the run minimises l1."""
    path = tmp_path / "edit.mrs"
    path.write_text("model mlp(hidden=[8])\ndata linear(samples=100, batch=10)\nloss mse\noptimizer sgd(lr=0.01)\n"
                    "train(steps=1, seed=0, log_every=1, dtype=float64)\n")
    compiled = compile_spec(path)
    data, model = compiled.bound.data, compiled.bound.model
    idx = data.batch_indices(0)[0]
    with torch.no_grad():
        out, y = model(data.train_x[idx].double()), data.train_y[idx].double()
    graph: ScheduleGraph = compiled.graph
    for p in graph.patterns():
        for op in list(p.ops()):
            if isinstance(op, Loss):
                p.replace(op, replace(op, fn="l1"))
    compiled.graph.reindex()
    got = train(compiled, save=False).metrics[0]["loss"]
    assert got == pytest.approx(float(F.l1_loss(out, y)), rel=1e-12)
    assert got != pytest.approx(float(F.mse_loss(out, y)), rel=1e-3)


# ---- the loader's targets -------------------------------------------------------------------


def test_targets_per_task() -> None:
    y = np.array([0.5, -1.25, 2.0], dtype=np.float64)
    t = _labels(y, "y", "d", "regression")
    assert t.dtype == torch.float32 and t.shape == (3, 1)
    assert _labels(np.zeros((3, 2, 2)), "y", "d", "regression").shape == (3, 2, 2)
    with pytest.raises(DataError, match="holds integer labels"):
        _labels(np.array([0, 1, 2]), "y", "d", "regression")
    with pytest.raises(DataError, match=r"non-finite target \(nan\) at index \[1, 0\]"):
        _labels(np.array([[0.0], [np.nan]]), "y", "d", "regression")
    assert _labels(np.array([[0, 1], [1, 1]]), "y", "d", "multilabel").dtype == torch.float32
    with pytest.raises(DataError, match=r"has 2.0 at index \[1, 0\]; multi-label targets are 0 or 1"):
        _labels(np.array([[0, 1], [2, 1]]), "y", "d", "multilabel")
    with pytest.raises(DataError, match=r"shape \(N, C\)"):
        _labels(np.array([0, 1]), "y", "d", "multilabel")
    # classification keeps its messages
    with pytest.raises(DataError, match=r"must hold integer class labels, but has 0\.5 at index 0"):
        _labels(y, "y", "d")


def test_regression_classes_are_the_targets_feature_size() -> None:
    raw = {"x": np.zeros((10, 3), np.float32), "y": np.ones((10, 5), np.float32)}
    options = {"batch": 4, "val": 0.2, "keep": None, "shuffle": True, "normalize": False, "drop_last": False,
               "limit": 0, "augment": None}
    bundle = _bundle(raw, options, 0, "d", "regression")
    assert bundle.classes == 5 and bundle.train_y.shape == (8, 5) and bundle.train_y.dtype == torch.float32


def test_builtin_regression_sets_are_what_they_say() -> None:
    from mrc.data.builtin import linear, peaks_function, surface

    d = linear(3, samples=50, features=4, outputs=2, noise=0.0)
    x, y = d["x"].astype(np.float64), d["y"].astype(np.float64)
    design = np.hstack([x, np.ones((50, 1))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    assert np.abs(design @ coef - y).max() < 1e-5  # exactly affine without noise
    assert y.dtype == np.float64 and d["y"].dtype == np.float32 and d["y"].shape == (50, 2)
    s = surface(1, samples=30)
    np.testing.assert_allclose(s["y"][:, 0], peaks_function(s["x"][:, 0].astype(np.float64),
                                                           s["x"][:, 1].astype(np.float64)), rtol=1e-5, atol=1e-5)
    assert np.abs(s["x"]).max() <= 3.0


def test_a_loss_op_with_a_setting_its_loss_lacks_does_not_lower(tmp_path: Path) -> None:
    from mrc.lower import lower
    from mrc.lower.plan import LoweringError

    path = tmp_path / "e.mrs"
    path.write_text("model mlp()\ndata linear(samples=50)\nloss mse\noptimizer sgd(lr=0.1)\ntrain(steps=1)\n")
    compiled = compile_spec(path)
    for p in compiled.graph.patterns():
        for op in list(p.ops()):
            if isinstance(op, Loss):
                p.replace(op, replace(op, args=(("beta", 0.5),)))
    with pytest.raises(LoweringError, match="loss `mse` has no setting `beta`"):
        lower(compiled.graph, compiled.bound, 1)
