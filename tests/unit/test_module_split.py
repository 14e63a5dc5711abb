"""Module-wise training's graph cuts (mrc.techniques.modules.fxsplit) and auxiliary heads.

The split modules, chained, must compute exactly the traced model (bit-equal in float64), and
their taps must be the residual branches r_m (checked against hooks on ResNet's `branch`
modules and against h·F_n(y) for the ODE-ResNet).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import fx, nn

from mrc.models import build_model, trace_model
from mrc.techniques.modules.fxsplit import (
    Cut,
    balanced_split,
    blocks,
    chain_cuts,
    cut_at,
    equal_split,
    module_bytes,
    node_bytes,
    residuals,
    residuals_by_block,
    split_modules,
)
from mrc.techniques.modules.heads import build_head

DT = torch.float64


def traced(name: str, in_shape: tuple[int, ...], kwargs: dict, batch: int = 3,
           classes: int = 5) -> tuple[nn.Module, fx.GraphModule, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(name, in_shape, classes, kwargs).to(DT).eval()
    x = torch.randn(batch, *in_shape, dtype=DT)
    return model, trace_model(model, x), x


def chained(mods: list[fx.GraphModule], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    taps: list[torch.Tensor] = []
    for mod in mods:
        x, t = mod(x)
        taps.extend(t)
    return x, taps


class Unmarked(nn.Module):
    """A user block x + f(x) without `is_residual_block`."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class InPlace(nn.Module):
    """A torchvision-style block: `out = f(x); out += x; relu_(out)` overwrites the branch."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.f = nn.Linear(width, width)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.f(x)
        out += x
        return self.act(out)


class UserNet(nn.Module):
    """stem → unmarked residual blocks → head; the blocks read a shared bias parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.blocks = nn.ModuleList([Unmarked(8), Unmarked(8), InPlace(8)])
        self.bias = nn.Parameter(torch.randn(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = block(x) * 0.5 + self.bias
        return self.head(x)


def user_model() -> tuple[nn.Module, fx.GraphModule, torch.Tensor]:
    torch.manual_seed(0)
    model = UserNet().to(DT).eval()
    x = torch.randn(4, 6, dtype=DT)
    return model, trace_model(model, x), x


CASES = {
    "resnet": ("resnet", (3, 8, 8), {"depth": 20}),
    "ode_dense": ("ode_resnet", (6,), {"depth": 12}),
    "ode_conv": ("ode_resnet", (2, 5, 5), {"depth": 6, "variant": "conv", "width": 4}),
    "mlp": ("mlp", (7,), {"hidden": [16, 16, 8]}),
    "transformer": ("transformer", (16,), {"depth": 3, "dim": 8, "heads": 2}),
}


@pytest.mark.parametrize("case", [*CASES, "user"])
@pytest.mark.parametrize("how", ["every", "equal"])
def test_chained_modules_reproduce_the_model_bit_for_bit(case: str, how: str) -> None:
    _, gm, x = user_model() if case == "user" else traced(*CASES[case])
    cuts = chain_cuts(gm) if how == "every" else equal_split(gm, min(3, len(blocks(gm))))
    assert isinstance(cuts, list) and cuts
    mods = split_modules(gm, cuts)
    assert len(mods) == len(cuts) + 1
    with torch.no_grad():
        out, taps = chained(mods, x)
        assert torch.equal(out, gm(x))
    assert len(taps) == len(residuals(gm))
    for mod in mods:
        mod.graph.lint()
        assert len([n for n in mod.graph.nodes if n.op == "placeholder"]) == 1


def test_resnet_residual_branches_are_the_last_batchnorms_and_taps_match_hooks() -> None:
    model, gm, x = traced(*CASES["resnet"])
    res = residuals(gm)
    assert len(res) == 9
    assert [r.block for r in res] == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    targets = {n.name: str(n.target) for n in gm.graph.nodes}
    assert all(targets[r.branch] == f"{r.block}.branch.4" for r in res)  # projection too
    seen: list[torch.Tensor] = []
    hooks = [model.get_submodule(f"{r.block}.branch").register_forward_hook(
        lambda _m, _i, out: seen.append(out.detach().clone())) for r in res]
    try:
        with torch.no_grad():
            model(x)
            _, taps = chained(split_modules(gm, equal_split(gm, 4)), x)
    finally:
        for h in hooks:
            h.remove()
    assert len(taps) == len(seen) == 9
    assert all(torch.equal(a, b) for a, b in zip(taps, seen, strict=True))


@pytest.mark.parametrize("variant", ["ode_dense", "ode_conv"])
def test_ode_taps_are_h_times_f_n(variant: str) -> None:
    model, gm, x = traced(*CASES[variant])
    res = residuals(gm)
    assert [r.block for r in res] == [f"stack.layers.{n}" for n in range(len(model.stack))]
    nodes = {n.name: n for n in gm.graph.nodes}
    assert all(nodes[r.branch].target.__name__ == "mul" for r in res)
    with torch.no_grad():
        _, taps = chained(split_modules(gm, equal_split(gm, 3)), x)
        y = model.stem(torch.flatten(x, 1) if variant == "ode_dense" else x)
        for n, layer in enumerate(model.stack.layers):
            r = model.stack.h * layer(y)
            assert torch.equal(taps[n], r)
            y = y + r


@pytest.mark.parametrize("case", ["resnet", "transformer"])
def test_chained_modules_give_the_model_gradients(case: str) -> None:
    _, gm, x = traced(*CASES[case])
    gm.train()
    gm(x).square().sum().backward()
    full = {name: p.grad.clone() for name, p in gm.named_parameters()}
    gm.zero_grad()
    out, _ = chained(split_modules(gm, equal_split(gm, 3)), x)
    out.square().sum().backward()
    assert all(torch.equal(p.grad, full[name]) for name, p in gm.named_parameters())


def test_taps_off_and_non_residual_adds() -> None:
    _, gm, x = traced(*CASES["transformer"])
    res = residuals(gm)
    assert [r.block for r in res] == [f"blocks.{i}" for i in range(3) for _ in range(2)]
    assert "add" not in {r.add for r in res}  # embed(x) + pos adds a parameter
    by_block = residuals_by_block(gm)
    assert list(by_block) == ["blocks.0", "blocks.1", "blocks.2"]
    mods = split_modules(gm, equal_split(gm, 3), taps=False)
    with torch.no_grad():
        h = x
        for mod in mods:
            h, t = mod(h)
            assert t == ()
    model, ugm, ux = user_model()
    ures = residuals(ugm)
    assert [r.block for r in ures] == ["blocks.0", "blocks.1", "blocks.2"]  # not `* 0.5 + bias`
    targets = {n.name: str(n.target) for n in ugm.graph.nodes}
    assert [targets[r.branch] for r in ures] == ["blocks.0.f.2", "blocks.1.f.2", "blocks.2.f"]
    with torch.no_grad():
        _, taps = chained(split_modules(ugm, equal_split(ugm, 3)), ux)
        y = torch.relu(model.stem(ux))
        for i in range(2):
            y = (y + model.blocks[i].f(y)) * 0.5 + model.bias
        assert torch.equal(taps[2], model.blocks[2].f(y))  # cloned before `+=` overwrote it
    assert residuals(traced(*CASES["mlp"])[1]) == []


def test_blocks_and_cut_names() -> None:
    _, gm, _ = traced(*CASES["resnet"])
    bl = blocks(gm)
    blocks_named = [next(p for p in b.paths if p.count(".") == 1) for b in bl]
    assert blocks_named == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert bl[3].path == "layer2" and "layer2.0" in bl[3].paths
    assert [c.path for c in blocks(traced(*CASES["ode_dense"])[1])][:3] == \
        ["stack", "stack.layers.1", "stack.layers.2"]
    assert [c.path for c in blocks(traced(*CASES["mlp"])[1])] == \
        ["layers", "layers.1", "layers.2", "head"]
    assert [c.path for c in blocks(user_model()[1])] == ["blocks", "blocks.1", "blocks.2"]
    cut = cut_at(gm, "layer2.0")
    assert isinstance(cut, Cut) and cut == bl[3]
    assert cut_at(gm, "layer2") == cut


def test_cut_at_reasons() -> None:
    _, gm, _ = traced(*CASES["resnet"])
    reason = cut_at(gm, "layer1.0.branch")
    assert isinstance(reason, str) and "not on the main chain: 2 values cross" in reason
    assert "\n" not in reason
    missing = cut_at(gm, "layer1.0.brnch")
    assert isinstance(missing, str) and missing.startswith("no module `layer1.0.brnch`")
    assert "did you mean `layer1.0.branch`" in missing
    with pytest.raises(ValueError, match="not on the main chain"):
        node = next(n for n in gm.graph.nodes if n.name == "layer1_0_branch_0")
        idx = list(gm.graph.nodes).index(node)
        split_modules(gm, [Cut(idx, node.name, "layer1.0.branch")])


def test_equal_split_counts_blocks() -> None:
    _, gm, _ = traced(*CASES["resnet"])
    cuts = equal_split(gm, 4)
    assert isinstance(cuts, list)
    bl = blocks(gm)
    starts = [0, *(bl.index(c) for c in cuts), len(bl)]
    assert [b - a for a, b in itertools.pairwise(starts)] == [3, 2, 2, 2]
    assert equal_split(gm, 1) == []
    too_many = equal_split(gm, 10)
    assert isinstance(too_many, str) and "9 block" in too_many


def test_bytes_and_balanced_split() -> None:
    _, gm, x = traced(*CASES["resnet"])
    small, big = node_bytes(gm, x.shape[0]), node_bytes(gm, 10 * x.shape[0])
    assert len(small) == len(gm.graph.nodes)
    assert small[0] == x.numel() * 8 and big[0] == 10 * small[0]
    equal = equal_split(gm, 4)
    balanced = balanced_split(gm, 4, 64)
    assert isinstance(equal, list) and isinstance(balanced, list) and len(balanced) == 3
    eq_bytes, bal_bytes = module_bytes(gm, equal, 64), module_bytes(gm, balanced, 64)
    assert sum(eq_bytes) == sum(bal_bytes) == sum(node_bytes(gm, 64))
    assert max(bal_bytes) <= max(eq_bytes)
    assert set(balanced) <= set(blocks(gm)[1:])
    assert len(balanced_split(gm, 9, 64)) == 8  # every block its own module
    assert isinstance(balanced_split(gm, 10, 64), str)
    with torch.no_grad():
        assert torch.equal(chained(split_modules(gm, balanced), x)[0], gm(x))


def test_deep_ode_resnet_is_linear() -> None:
    _, gm, _ = traced("ode_resnet", (4,), {"depth": 1024, "width": 4}, batch=2)
    assert len(residuals(gm)) == 1024
    assert len(blocks(gm)) == 1024
    assert len(chain_cuts(gm)) > 1024


@pytest.mark.parametrize("kind", ["linear", "mlp", "conv"])
@pytest.mark.parametrize("shape", [(4, 6, 6), (10,), (3, 8)])
def test_heads(kind: str, shape: tuple[int, ...]) -> None:
    if kind == "conv" and len(shape) != 3:
        with pytest.raises(ValueError, match="needs image features"):
            build_head(kind, {}, shape, 7)
        return
    head = build_head(kind, {"hidden": 16} if kind == "mlp" else {}, shape, 7)
    x = torch.randn(5, *shape, requires_grad=True)
    out = head(x)
    assert out.shape == (5, 7)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())
    traced_head = fx.symbolic_trace(head)
    assert torch.equal(traced_head(x), out)


def test_head_errors() -> None:
    with pytest.raises(ValueError, match="did you mean `linear`"):
        build_head("linaer", {}, (4,), 2)
    with pytest.raises(ValueError, match="no parameter `widht`"):
        build_head("conv", {"widht": 3}, (3, 4, 4), 2)
    conv = build_head("conv", {"width": 8}, (3, 4, 4), 2)
    assert conv[0].out_channels == 8 and conv[-1].in_features == 32
