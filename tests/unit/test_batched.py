"""BrainStack: stacked brains give each brain's own outputs, gradients and BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch

from mrc.models import build_model, trace_model
from mrc.techniques.brains.stack import BrainStack, NotBatchable, StackedSGD

CASES = [("mlp", (64,), {"hidden": [32, 16]}), ("resnet", (1, 8, 8), {"depth": 8, "width": 4})]


def brains(name: str, shape: tuple[int, ...], kw: dict, count: int = 3) -> list[torch.nn.Module]:
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        models.append(build_model(name, shape, 5, kw).double())
    return models


@pytest.mark.parametrize(("name", "shape", "kw"), CASES, ids=[c[0] for c in CASES])
def test_stack_matches_separate_models(name: str, shape: tuple[int, ...], kw: dict) -> None:
    models = brains(name, shape, kw)
    gm = trace_model(models[0], torch.randn(2, *shape, dtype=torch.float64))
    stack = BrainStack(gm, [m.state_dict() for m in models])
    torch.manual_seed(9)
    x = torch.randn(3, 6, *shape, dtype=torch.float64)
    out = stack(x)
    ref = torch.stack([m(x[i]) for i, m in enumerate(models)])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    out.square().sum().backward()
    ref.square().sum().backward()
    for key, _ in models[0].named_parameters():
        for i, m in enumerate(models):
            torch.testing.assert_close(stack.stacked(key).grad[i], dict(m.named_parameters())[key].grad,
                                       rtol=0, atol=1e-10)
    for key in stack.keys:  # BatchNorm running statistics, per brain
        for i, m in enumerate(models):
            torch.testing.assert_close(stack.stacked(key)[i].to(m.state_dict()[key].dtype),
                                       m.state_dict()[key], rtol=0, atol=1e-10)
    sel = torch.tensor([0, 2])
    sub = stack(x[[0, 2]], sel)
    want = torch.stack([models[i](x[i]) for i in (0, 2)])
    torch.testing.assert_close(sub, want, rtol=0, atol=1e-10)
    stack.eval()
    for m in models:
        m.eval()
    torch.testing.assert_close(stack(x), torch.stack([m(x[i]) for i, m in enumerate(models)]),
                               rtol=0, atol=1e-10)


def test_brain_state_round_trip() -> None:
    models = brains("mlp", (4,), {"hidden": [3]})
    gm = trace_model(models[0], torch.randn(2, 4, dtype=torch.float64))
    stack = BrainStack(gm, [m.state_dict() for m in models])
    state = stack.brain_state_dict(1)
    assert all(torch.equal(state[k], v) for k, v in models[1].state_dict().items())
    stack.load_brain_state_dict(0, state)
    assert torch.equal(stack.stacked("head.weight")[0], stack.stacked("head.weight")[1])


def test_unsupported_parameterised_module_is_named() -> None:
    class WithGRU(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.GRUCell(4, 4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x))

    model = WithGRU()
    gm = trace_model(model, torch.randn(2, 4))
    with pytest.raises(NotBatchable, match="`rnn` \\(GRUCell\\)"):
        BrainStack(gm, [model.state_dict()])


def test_stacked_sgd_matches_torch_sgd_per_brain() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 5, dtype=torch.float64))
    refs = [torch.nn.Parameter(w[i].detach().clone()) for i in range(3)]
    lrs = [0.1, 0.2, 0.4]
    opts = [torch.optim.SGD([r], lr=lr, momentum=0.9, weight_decay=0.01, nesterov=True)
            for r, lr in zip(refs, lrs, strict=True)]
    sgd = StackedSGD([w], 3, momentum=0.9, weight_decay=0.01, nesterov=True)
    for t in range(6):
        stepping = [i for i in range(3) if t % (i + 1) == 0]
        g = torch.randn(3, 5, dtype=torch.float64)
        w.grad = g.clone()
        sgd.step(torch.tensor(stepping), torch.tensor([lrs[i] for i in stepping], dtype=torch.float64),
                 len(stepping) == 3)
        for i in stepping:
            refs[i].grad = g[i].clone()
            opts[i].step()
    for i in range(3):
        torch.testing.assert_close(w[i].detach(), refs[i].detach(), rtol=0, atol=1e-12)
