"""Layer-parallel training by MGRIT against serial propagation and autograd (issue 12, item 7).

The stack of an `ode_resnet` solved by MGRIT inside a training step: with enough iterations its
output equals the serial network's and every parameter gradient (the stack's from the adjoint
solve, the opening layer's through λ_0, the classifier's) equals autograd's through the serial
network; one level is serial propagation exactly; one-shot training learns.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mrc.api import compile_spec, lower, train
from mrc.techniques.mgrit.tables import STACKS

BASE = """model ode_resnet(width={width}, depth={depth}, h=0.1, activation={act}, variant={variant})
data {data}
optimizer sgd(lr=0.1)
train(steps=2, seed=0, dtype=float64, kernels="torch.optim")
"""
DATA = {"dense": "levelsets(batch=8)", "conv": "synthetic(shape=[2,5,5], classes=3, samples=64, batch=6)"}


def one_step(tmp_path: Path, extra: str, depth: int, variant: str, act: str = "tanh", steps: int = 1,
             width: int = 4) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The gradients of the last of `steps` steps, and its loss."""
    path = tmp_path / "s.mrs"
    path.write_text(BASE.format(depth=depth, variant=variant, act=act, data=DATA[variant], width=width) + extra)
    c = compile_spec(path)
    plan = lower(c, steps)
    d = c.bound.data
    loss = None
    for t in range(steps):
        idx = d.batch_indices(0)[t]
        loss = plan.step(t, d.train_x[idx].double(), d.train_y[idx])
    assert loss is not None
    return {n: g.clone() for n, g in plan.ctx.replicas.gradients().items()}, loss  # stacked layers' too


def solve(levels: int, cf: str, relax: str, iters: int, warm: bool = False) -> str:
    return (f'mgrit "stack" {{ levels = {levels}; coarsening = {cf}; relax = {relax}; forward_iters = {iters}; '
            f'backward_iters = {iters}; warm_start = {"true" if warm else "false"} }}\n')


@pytest.mark.parametrize(("variant", "depth", "levels", "cf", "relax"), [
    ("dense", 16, 2, "4", "FCF"),
    ("dense", 37, 3, "2", "F"),       # uneven: 37 = 18·2 + 1, 18 = 9·2
    ("dense", 50, 4, "2", "FCF"),     # uneven on a coarse level
    ("dense", 64, 3, "[4, 2]", "[F, FCF]"),
    ("conv", 16, 3, "2", "FCF"),
    ("conv", 21, 2, "4", "F"),        # uneven
])
def test_converged_solves_give_autograds_gradients(tmp_path: Path, variant: str, depth: int, levels: int,
                                                   cf: str, relax: str) -> None:
    ref, ref_loss = one_step(tmp_path, "", depth, variant)
    got, loss = one_step(tmp_path, solve(levels, cf, relax, 40), depth, variant)
    assert abs(loss.item() - ref_loss.item()) < 1e-12  # the output equals serial propagation
    for name, g in ref.items():
        assert torch.allclose(got[name], g, rtol=0, atol=1e-10), name
    assert any(n.startswith("stack.") for n in ref) and any(n.startswith("stem.") for n in ref)


def test_after_an_update_the_solve_uses_the_new_weights(tmp_path: Path) -> None:
    """Three steps of training: the solve re-reads the weights the optimizer moved."""
    ref, _ = one_step(tmp_path, "", 32, "dense", steps=3)
    got, _ = one_step(tmp_path, solve(3, "4", "FCF", 40, warm=True), 32, "dense", steps=3)
    for name, g in ref.items():
        assert torch.allclose(got[name], g, rtol=0, atol=1e-10), name


def test_one_level_is_serial_propagation_exactly(tmp_path: Path) -> None:
    ref, ref_loss = one_step(tmp_path, "", 24, "dense", act="relu")
    got, loss = one_step(tmp_path, solve(1, "2", "FCF", 1), 24, "dense", act="relu")
    assert torch.equal(loss, ref_loss)
    for name, g in ref.items():
        assert torch.allclose(got[name], g, rtol=0, atol=1e-14), name


def test_few_iterations_are_inexact_and_the_residuals_fall(tmp_path: Path) -> None:
    """One-shot settings give gradients that differ from autograd's (the test above can fail)
    and report a residual per iteration, decreasing on this contractive stack."""
    path = tmp_path / "s.mrs"
    path.write_text(BASE.format(depth=64, variant="dense", act="tanh", data=DATA["dense"], width=4)
                    + solve(3, "4", "FCF", 3))
    c = compile_spec(path)
    plan = lower(c, 1)
    d = c.bound.data
    idx = d.batch_indices(0)[0]
    plan.step(0, d.train_x[idx].double(), d.train_y[idx])
    record = plan.technique_metrics()["mgrit"]["stack"]
    assert len(record["forward"]) == 3 and len(record["adjoint"]) == 3
    assert record["forward"][2] < record["forward"][0]
    ref, _ = one_step(tmp_path, "", 64, "dense")
    got = plan.ctx.replicas.gradients()
    assert max((got[n] - ref[n]).abs().max().item() for n in ref) > 1e-8


def test_one_shot_training_on_levelsets_learns(tmp_path: Path) -> None:
    path = tmp_path / "ls.mrs"
    path.write_text("model ode_resnet(width=8, depth=32, h=0.1)\ndata levelsets(batch=64)\n"
                    "optimizer adam(lr=0.01)\ntrain(epochs=3, seed=0)\n"
                    'mgrit "stack" { levels = 3; coarsening = 4; forward_iters = 2; backward_iters = 1 }\n')
    result = train(path, save=False)
    assert result.summary["val_acc"] > 0.45  # 5 classes: chance is 0.2
    rows = [r for r in result.metrics if "mgrit" in r]
    assert rows and len(rows[-1]["mgrit"]["stack"]["forward"]) == 2


NET = '''
import torch
from torch import nn


class Branch(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.lin = nn.Linear(w, w)

    def forward(self, y):
        return torch.sin(self.lin(y))


class Stack(nn.Module):  # the protocol: `layers` and a float `h`, y <- y + h*F_n(y) in order
    def __init__(self, w, n, h):
        super().__init__()
        self.layers = nn.ModuleList(Branch(w) for _ in range(n))
        self.h = h

    def forward(self, y):
        for f in self.layers:
            y = y + self.h * f(y)
        return y


def build(in_shape, classes, depth=12):
    return nn.Sequential(nn.Linear(in_shape[0], 6), nn.Tanh(), Stack(6, depth, 0.1), nn.Linear(6, classes))
'''


def test_a_user_stack_of_the_protocol_converges_to_autograd(tmp_path: Path) -> None:
    """A stack of the user's own blocks (no built-in step: the generic propagator, one module
    call and one vjp per interval) gives autograd's gradients at convergence."""
    (tmp_path / "net.py").write_text(NET)
    spec = ('model "net.py:build"(depth=13)\ndata levelsets(batch=8)\noptimizer sgd(lr=0.1)\n'
            'train(steps=1, seed=0, dtype=float64, kernels="torch.optim")\n')
    grads = []
    for extra in ("", 'mgrit "2" { levels = 2; coarsening = 3; forward_iters = 20; backward_iters = 20 }\n'):
        path = tmp_path / "u.mrs"
        path.write_text(spec + extra)
        c = compile_spec(path)
        plan = lower(c, 1)
        d = c.bound.data
        idx = d.batch_indices(0)[0]
        plan.step(0, d.train_x[idx].double(), d.train_y[idx])
        grads.append({n: g.clone() for n, g in plan.ctx.replicas.gradients().items()})
        if extra:
            assert c.graph.table(STACKS)["2"].kind == "generic"
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, rtol=0, atol=1e-10), name
