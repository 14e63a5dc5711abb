"""Brains (multirate across networks) against an independent reference written from the seed.

seeds/multirate-training.md: train independent copies (brains) of one network with step sizes
h_i = k_i·h; merge their parameters whenever two or more reach the same time threshold. The
reference: plain PyTorch copies of the model, each its own hand-written SGD-momentum, brain i
stepping on global steps t with t % k_i == 0 (reaching time t + k_i), and the brains whose time
is t + 1 after step t merged by the rule.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mrc.api import compile_spec, train

SPEC = """
model mlp(hidden=[12], activation=tanh)
data spirals(samples=300, batch=10)
optimizer sgd(lr={lr}, momentum={mu})
{brains}
{merge}
train(steps={steps}, seed=4, dtype=float64, log_every=1000)
"""


def write(tmp_path: Path, brains: str, merge: str, *, lr: float = 0.04, mu: float = 0.9,
          steps: int = 26) -> Path:
    path = tmp_path / "brains.mrs"
    path.write_text(SPEC.format(brains=brains, merge=merge, lr=lr, mu=mu, steps=steps))
    return path


def reference(path: Path, ks: list[int], rule: str, *, lr: float, mu: float, steps: int,
              weights: list[float] | None = None, momentum: str = "keep",
              decay: float = 0.9) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    compiled = compile_spec(path)
    data = compiled.bound.data
    models = [copy.deepcopy(compiled.bound.model) for _ in ks]
    bufs: list[dict[str, torch.Tensor]] = [{} for _ in ks]
    ema = None

    def combine(group: list[int]) -> dict[str, torch.Tensor]:
        nonlocal ema
        states = [models[i].state_dict() for i in group]
        w = [weights[i] for i in group] if weights else [1.0] * len(group)
        total = sum(w)
        mean = {k: sum(wi / total * s[k] for wi, s in zip(w, states, strict=True)) for k in states[0]}
        if rule == "ema":
            ema = mean if ema is None else {k: decay * ema[k] + (1 - decay) * v for k, v in mean.items()}
            return dict(ema)
        return mean

    t, epoch = 0, 0
    while t < steps:
        for idx in data.batch_indices(epoch):
            if t == steps:
                break
            x, y = data.train_x[idx].double(), data.train_y[idx]
            for i, k in enumerate(ks):
                if t % k:
                    continue
                model = models[i]
                loss = F.cross_entropy(model(x), y)
                grads = torch.autograd.grad(loss, list(model.parameters()))
                with torch.no_grad():
                    for (name, p), g in zip(model.named_parameters(), grads, strict=True):
                        b = bufs[i].get(name)
                        bufs[i][name] = g.clone() if b is None else mu * b + g
                        p -= k * lr * bufs[i][name]
            arrived = [i for i, k in enumerate(ks) if (t + 1) % k == 0]
            if len(arrived) >= 2:
                state = combine(arrived)
                for i in arrived:
                    models[i].load_state_dict(state)
                if momentum == "reset":
                    for i in arrived:
                        bufs[i] = {}
                elif momentum == "average":
                    for name in bufs[arrived[0]]:
                        mean = sum(bufs[i][name] for i in arrived) / len(arrived)
                        for i in arrived:
                            bufs[i][name] = mean.clone()
            t += 1
        epoch += 1
    final = combine(list(range(len(ks))))
    return final, [m.state_dict() for m in models]


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-12) -> None:
    """float64 against the reference: the measured differences are ≈ 4e-16 (summation order)."""
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=tol, msg=key)


@pytest.mark.parametrize(("ks", "merge", "rule", "extra"), [
    ([1, 3], "merge mean", "mean", {}),
    ([1, 2, 6], "merge weighted(weights=[0.5, 0.3, 0.2])", "weighted", {"weights": [0.5, 0.3, 0.2]}),
    ([2, 3], "merge mean(momentum=reset)", "mean", {"momentum": "reset"}),
    ([1, 4], "merge mean(momentum=average)", "mean", {"momentum": "average"}),
    ([1, 2], "merge ema(decay=0.7)", "ema", {"decay": 0.7}),
])
def test_trajectories_and_merges_match_the_reference(tmp_path: Path, ks: list[int], merge: str,
                                                     rule: str, extra: dict) -> None:
    brains = "\n".join(f"brain b{i} {{ every = {k} }}" for i, k in enumerate(ks))
    path = write(tmp_path, brains, merge)
    result = train(path, out=tmp_path / "run")
    final, each = reference(path, ks, rule, lr=0.04, mu=0.9, steps=26, **extra)
    close(result.model.state_dict(), final)
    for i in range(len(ks)):
        close(torch.load(tmp_path / "run" / "brains" / f"b{i}.pt", weights_only=True), each[i])


def test_best_copies_the_brain_with_the_lowest_validation_loss(tmp_path: Path) -> None:
    path = write(tmp_path, "brain a { every = 1 }\nbrain b { every = 2; lr = 0.5 }",
                 "merge best(metric=val_loss)", steps=2)
    compiled = compile_spec(path)
    from mrc.api import lower
    from mrc.runtime.evaluation import evaluate

    plan = lower(compiled, 2)
    reps = plan.ctx.replicas
    data = compiled.bound.data
    vx, vy = data.val_x.double(), data.val_y
    plan.attach(data.train_x.double(), data.train_y, vx, vy)
    x, y = data.batch(0, 0)
    plan.step(0, x.double(), y)
    before = {n: evaluate(reps.brain_module(n), vx, vy)["loss"] for n in ("a", "b")}
    best = min(before, key=before.get)
    want = copy.deepcopy(reps.state_of(best))
    x, y = data.batch(0, 1)
    plan.step(1, x.double(), y)  # a steps again, then a and b merge (time 2)
    after_a = reps.state_of("a")
    assert all(torch.equal(after_a[k], reps.state_of("b")[k]) for k in after_a)
    assert before["a"] != before["b"]
    if best == "b":  # b did not move on step 1, so the merged point is b's
        close(after_a, want, 0)


def test_own_data_orders_differ_and_are_deterministic(tmp_path: Path) -> None:
    own = write(tmp_path, "brain a { every = 1 }\nbrain b { every = 1; data = own }", "merge mean",
                steps=5)
    one = train(own, out=tmp_path / "one").model.state_dict()
    two = train(own, out=tmp_path / "two").model.state_dict()
    for key, value in one.items():
        assert torch.equal(value, two[key])
    shared = write(tmp_path, "brain a { every = 1 }\nbrain b { every = 1 }", "merge mean", steps=5)
    same = train(shared, save=False).model.state_dict()
    assert not torch.equal(one["head.weight"], same["head.weight"])


def test_resume_with_brains_is_bit_identical(tmp_path: Path) -> None:
    path = write(tmp_path, "brain a { every = 1 }\nbrain b { every = 3 }", "merge ema(decay=0.5)",
                 steps=20)
    whole = train(path, out=tmp_path / "whole").model.state_dict()
    train(path, out=tmp_path / "split", stop_at=7)
    resumed = train(path, resume=tmp_path / "split").model.state_dict()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_batched_equals_sequential_execution(tmp_path: Path) -> None:
    path = write(tmp_path, "brain a { every = 1 }\nbrain b { every = 2 }\nbrain c { every = 4 }",
                 "merge weighted(weights=[1, 2, 3], momentum=average)", steps=19)
    batched = compile_spec(path)
    assert any(op.kernel == "stacked" for op in batched.graph.ops() if op.kind == "update_group")
    assert any(len(op.scope.replica) > 1 for op in batched.graph.ops() if op.kind == "forward")
    sequential = compile_spec(path, pipeline=["prune-gradients", "group-updates"])
    assert all(len(op.scope.replica) == 1 for op in sequential.graph.ops() if op.kind == "forward")
    a = train(batched, out=tmp_path / "batched").model.state_dict()
    b = train(sequential, out=tmp_path / "sequential").model.state_dict()
    close(a, b, 1e-10)
    for name in "abc":
        close(torch.load(tmp_path / "batched" / "brains" / f"{name}.pt", weights_only=True),
              torch.load(tmp_path / "sequential" / "brains" / f"{name}.pt", weights_only=True), 1e-10)


def test_models_without_a_batched_form_run_one_after_another(tmp_path: Path) -> None:
    (tmp_path / "direct.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Direct(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.w = nn.Parameter(torch.randn(2, 5) * 0.1)\n"
        "    def forward(self, x):\n"
        "        return x @ self.w\n\n"
        "def make():\n    return Direct()\n")
    path = tmp_path / "direct.mrs"
    path.write_text('model "direct.py:make"\ndata levelsets(samples=200, batch=10)\n'
                    "optimizer sgd(lr=0.05)\nbrain a { every = 1 }\nbrain b { every = 2 }\nmerge mean\n"
                    "train(steps=6)\n")
    compiled = compile_spec(path)
    text = compiled.graph.to_text()
    assert "note: brains run one after another: `w` is used directly as a tensor" in text
    assert train(compiled, save=False).summary["status"] == "completed"


@pytest.mark.parametrize("variant", ["dense", "conv"])
def test_ode_resnet_brains_run_stacked_and_equal_sequential(tmp_path: Path, variant: str) -> None:
    """The ODE-ResNet's residual steps (leaf layers σ(W y + b)) have a stacked form: batched
    brains equal brains run one after another."""
    data = "levelsets(samples=200, batch=10)" if variant == "dense" else \
        "synthetic(shape=[2, 4, 4], classes=3, samples=60, batch=6)"
    path = tmp_path / "ode.mrs"
    path.write_text(f"model ode_resnet(width=4, depth=3, variant={variant})\ndata {data}\n"
                    "optimizer sgd(lr=0.05, momentum=0.9)\nbrain a { every = 1 }\nbrain b { every = 2 }\n"
                    "merge mean\ntrain(steps=7, dtype=float64, log_every=1000)\n")
    batched = compile_spec(path)
    assert any(op.kernel == "stacked" for op in batched.graph.ops() if op.kind == "update_group")
    sequential = compile_spec(path, pipeline=["prune-gradients", "group-updates"])
    close(train(batched, save=False).model.state_dict(), train(sequential, save=False).model.state_dict(), 1e-10)


def test_brains_with_partitions_match_the_reference(tmp_path: Path) -> None:
    """Each brain trains its own copy by the partition schedule on its own steps: head every
    step (step k_i·h), body every 2nd of the brain's steps (2·k_i·h); merges reset momentum."""
    path = tmp_path / "bp.mrs"
    path.write_text("model mlp(hidden=[12], activation=tanh)\ndata spirals(samples=300, batch=10)\n"
                    "optimizer sgd(lr=0.03, momentum=0.9)\npartition head = module(\"head\")\n"
                    "partition body = rest { every = 2 }\nbrain a { every = 1 }\nbrain b { every = 3 }\n"
                    "merge mean(momentum=reset)\ntrain(steps=20, seed=4, dtype=float64, log_every=1000)\n")
    result = train(path, out=tmp_path / "run")
    compiled = compile_spec(path)
    text = compiled.graph.to_text()  # the brains' partition schedules are in the graph, in full
    assert "partition body: tensors=2 numel=36 every=2" in text
    assert "update_group head+body {head, body} sgd(momentum=0.9) lr=[0.09, 0.18] kernel=torch.optim @[brain=b]" in text
    data = compiled.bound.data
    ks = [1, 3]
    models = [copy.deepcopy(compiled.bound.model) for _ in ks]
    bufs: list[dict[str, torch.Tensor]] = [{} for _ in ks]
    t, epoch = 0, 0
    while t < 20:
        for idx in data.batch_indices(epoch):
            if t == 20:
                break
            x, y = data.train_x[idx].double(), data.train_y[idx]
            for i, k in enumerate(ks):
                if t % k:
                    continue
                n = t // k  # the brain's own step
                model = models[i]
                grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
                with torch.no_grad():
                    for (name, p), g in zip(model.named_parameters(), grads, strict=True):
                        rate = 1 if name.startswith("head.") else 2
                        if n % rate:
                            continue
                        b = bufs[i].get(name)
                        bufs[i][name] = g.clone() if b is None else 0.9 * b + g
                        p -= k * rate * 0.03 * bufs[i][name]
            if all((t + 1) % k == 0 for k in ks):
                mean = {key: (models[0].state_dict()[key] + models[1].state_dict()[key]) / 2
                        for key in models[0].state_dict()}
                for i in range(2):
                    models[i].load_state_dict(mean)
                    bufs[i] = {}
            t += 1
        epoch += 1
    for i, name in enumerate("ab"):
        close(torch.load(tmp_path / "run" / "brains" / f"{name}.pt", weights_only=True), models[i].state_dict())
    close(result.model.state_dict(), {k: (models[0].state_dict()[k] + models[1].state_dict()[k]) / 2
                                      for k in models[0].state_dict()})


def test_own_data_with_a_short_last_batch_runs_one_after_another(tmp_path: Path) -> None:
    """240 training examples in batches of 32 end each epoch with 16: a brain with its own order
    reaches its short batch on a step where the other brain has a full one, so the two cannot be
    stacked (torch.stack refused the ragged batches with a traceback); with drop_last they can."""
    spec = ("model mlp(hidden=[12], activation=tanh)\ndata spirals(samples=300, batch=32{extra})\n"
            "optimizer sgd(lr=0.05, momentum=0.9)\nbrain a {{ every = 1 }}\n"
            "brain b {{ every = 2; data = own }}\nmerge mean\ntrain(steps=20, seed=4)\n")
    path = tmp_path / "own.mrs"
    path.write_text(spec.format(extra=""))
    compiled = compile_spec(path)
    assert "note: brains run one after another: brains with their own batch order" in compiled.graph.to_text()
    assert train(compiled, save=False).summary["status"] == "completed"
    path.write_text(spec.format(extra="").replace("every = 2; data = own", "every = 1; data = own"))
    compiled = compile_spec(path)  # both read their batch t: the same place in their epochs
    assert any(op.kernel == "stacked" for op in compiled.graph.ops() if op.kind == "update_group")
    assert train(compiled, save=False).summary["status"] == "completed"
    path.write_text(spec.format(extra=", drop_last=true"))
    compiled = compile_spec(path)
    assert any(op.kernel == "stacked" for op in compiled.graph.ops() if op.kind == "update_group")
    assert train(compiled, save=False).summary["status"] == "completed"
