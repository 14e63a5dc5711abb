"""Built-in models: shapes, naming, tracing, numerics of the residual stack, parameter checks."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import fx, nn

from mrc.models import MODELS, ForwardError, TraceFailure, build_model, trace_model
from mrc.models.ode_resnet import ResidualStack
from mrc.models.resnet import ResidualBlock
from mrc.models.transformer import auto_tokens

CASES = [
    ("mlp", (64,), {}),
    ("mlp", (1, 8, 8), {"hidden": [16, 8], "activation": "tanh"}),
    ("mlp", (2,), {"hidden": 5, "activation": "gelu"}),
    ("mlp", (40,), {"hidden": [], "activation": "sigmoid"}),
    ("resnet", (1, 8, 8), {"width": 4}),
    ("resnet", (3, 12, 10), {"depth": 14, "width": 2}),
    ("wide_resnet", (1, 8, 8), {"depth": 10, "widen": 1}),
    ("wide_resnet", (3, 12, 10), {"depth": 16, "widen": 2, "dropout": 0.3}),
    ("ode_resnet", (64,), {}),
    ("ode_resnet", (2,), {"depth": 3, "activation": "relu"}),
    ("ode_resnet", (40,), {"width": 5}),
    ("ode_resnet", (1, 8, 8), {"variant": "conv", "width": 3, "depth": 4}),
    ("transformer", (64,), {}),
    ("transformer", (1, 8, 8), {"dim": 8, "heads": 2, "depth": 1}),
    ("transformer", (2,), {"dim": 12, "heads": 3, "mlp_ratio": 1.5}),
    ("transformer", (40,), {"tokens": 4}),
]


def _build(name: str, in_shape: tuple[int, ...], kwargs: dict, classes: int = 7,
           seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, in_shape, classes, kwargs)


@pytest.mark.parametrize(("name", "in_shape", "kwargs"), CASES)
def test_builds_gives_logits_and_traces_identically(name, in_shape, kwargs):
    model = _build(name, in_shape, kwargs).eval()
    x = torch.randn(5, *in_shape)
    out = model(x)
    assert out.shape == (5, 7)
    assert torch.isfinite(out).all()
    assert out.std() > 0  # not a constant map

    gm = fx.symbolic_trace(model)
    torch.testing.assert_close(gm(x), out, rtol=0, atol=0)

    traced = trace_model(model, x)
    assert isinstance(traced, fx.GraphModule)
    torch.testing.assert_close(traced(x), out, rtol=0, atol=0)
    out_node = next(n for n in traced.graph.nodes if n.op == "output")
    assert out_node.args[0].meta["tensor_meta"].shape == (5, 7)
    assert all("mrc" in n.meta for n in traced.graph.nodes)


@pytest.mark.parametrize(("name", "in_shape", "kwargs"), CASES)
def test_deterministic_given_seed(name, in_shape, kwargs):
    a = _build(name, in_shape, kwargs, seed=3).state_dict()
    b = _build(name, in_shape, kwargs, seed=3).state_dict()
    c = _build(name, in_shape, kwargs, seed=4).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point()
               and a[k].numel() > 1 and a[k].std() > 0)


def test_every_builtin_declares_every_keyword_and_dropout():
    assert set(MODELS.names()) >= {"mlp", "resnet", "ode_resnet", "transformer"}
    for entry in MODELS:
        sig = inspect.signature(entry.build)
        keywords = [p for p in sig.parameters if p not in ("in_shape", "classes")]
        assert sorted(keywords) == sorted(p.name for p in entry.params), entry.name
        assert entry.param("dropout").default == 0.0
        assert entry.doc
        for p in entry.params:
            assert p.doc, (entry.name, p.name)
            _, err = p.validate(p.default)
            assert err is None, (entry.name, p.name, err)


def test_mlp_names_and_default_width():
    model = _build("mlp", (64,), {})
    names = dict(model.named_parameters())
    assert names["layers.0.weight"].shape == (128, 64)
    assert names["head.weight"].shape == (7, 128)
    model = _build("mlp", (2,), {"hidden": [16, 8]})
    assert [k for k, _ in model.named_parameters()] == [
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
        "head.weight", "head.bias"]


def test_mlp_dropout_acts_in_training_only():
    model = _build("mlp", (64,), {"dropout": 0.5})
    x = torch.randn(4, 64)
    torch.manual_seed(1)
    train_out = model.train()(x)
    eval_out = model.eval()(x)
    assert not torch.allclose(train_out, eval_out)
    torch.testing.assert_close(model(x), eval_out, rtol=0, atol=0)


def test_resnet_structure_and_names():
    model = _build("resnet", (1, 8, 8), {"depth": 14, "width": 4})
    names = dict(model.named_parameters())
    assert names["stem.0.weight"].shape == (4, 1, 3, 3)
    assert names["layer1.1.branch.0.weight"].shape == (4, 4, 3, 3)
    assert names["layer2.0.branch.0.weight"].shape == (8, 4, 3, 3)
    assert names["layer2.0.shortcut.0.weight"].shape == (8, 4, 1, 1)
    assert names["layer3.1.branch.3.weight"].shape == (16, 16, 3, 3)
    assert names["head.weight"].shape == (7, 16)
    blocks = [m for m in model.modules() if getattr(m, "is_residual_block", False)]
    assert len(blocks) == 6 and all(isinstance(b, ResidualBlock) for b in blocks)


def test_residual_block_is_relu_of_shortcut_plus_branch():
    torch.manual_seed(0)
    block = ResidualBlock(3, 6, stride=2).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = torch.relu(block.shortcut(x) + block.branch(x))
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)
    assert block(x).shape == (2, 6, 4, 4)
    same = ResidualBlock(4, 4).eval()
    y = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(same(y), torch.relu(y + same.branch(y)), rtol=0, atol=0)


def test_resnet_rejects_bad_depth_and_flat_inputs():
    with pytest.raises(ValueError, match="6n"):
        build_model("resnet", (1, 8, 8), 10, {"depth": 10})
    with pytest.raises(ValueError, match=r"image inputs of shape \(C, H, W\)"):
        build_model("resnet", (64,), 10, {})
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("ode_resnet", (64,), 10, {"variant": "conv"})


def test_ode_resnet_names_and_stack():
    model = _build("ode_resnet", (64,), {"width": 6, "depth": 5, "h": 0.25})
    names = dict(model.named_parameters())
    assert names["stem.0.weight"].shape == (6, 64)
    assert names["stack.layers.3.weight"].shape == (6, 6)
    assert names["stack.layers.4.bias"].shape == (6,)
    assert "stack.layers.5.weight" not in names
    assert names["head.weight"].shape == (7, 6)
    assert isinstance(model.stack, ResidualStack) and model.stack.is_residual_stack
    assert model.stack.h == 0.25 and len(model.stack) == 5


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_residual_stack_is_forward_euler(activation):
    """y_{n+1} = y_n + h σ(W_n y_n + b_n), written out from the layer-parallel seed."""
    model = _build("ode_resnet", (3,), {"width": 4, "depth": 6, "h": 0.3,
                                        "activation": activation})
    stack = model.stack
    y0 = torch.randn(5, 4, dtype=torch.float64)
    stack.double()
    sigma = torch.tanh if activation == "tanh" else torch.relu
    y = y0
    for n in range(6):
        layer = stack.layers[n]
        y = y + 0.3 * sigma(y @ layer.weight.T + layer.bias)
    torch.testing.assert_close(stack(y0), y, rtol=1e-12, atol=1e-12)
    z = y0
    for n in range(6):
        z = stack.step(n, z)
    torch.testing.assert_close(z, stack(y0), rtol=0, atol=0)
    # a coarse step with h = 2·0.3 differs from the fine one
    coarse = stack.step(0, y0, h=0.6)
    torch.testing.assert_close(coarse - y0, 2 * (stack.step(0, y0) - y0))


def test_conv_stack_step_composes():
    model = _build("ode_resnet", (2, 6, 6), {"variant": "conv", "width": 3, "depth": 4})
    y0 = torch.randn(2, 3, 6, 6)
    z = y0
    for n in range(4):
        z = model.stack.step(n, z)
    torch.testing.assert_close(z, model.stack(y0), rtol=0, atol=0)
    assert dict(model.named_parameters())["stack.layers.3.weight"].shape == (3, 3, 3, 3)


def test_transformer_names_tokens_and_validation():
    model = _build("transformer", (64,), {"dim": 16, "heads": 4, "depth": 3})
    names = dict(model.named_parameters())
    assert model.tokens == 8
    assert names["embed.weight"].shape == (16, 8)
    assert names["pos"].shape == (1, 8, 16)
    assert names["blocks.2.attn.q.weight"].shape == (16, 16)
    assert names["blocks.0.mlp.fc1.weight"].shape == (32, 16)
    assert "blocks.3.attn.q.weight" not in names
    assert names["head.weight"].shape == (7, 16)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert auto_tokens(64) == 8 and auto_tokens(40) == 5 and auto_tokens(7) == 1
    with pytest.raises(ValueError, match="divisible by heads"):
        build_model("transformer", (64,), 10, {"dim": 10, "heads": 4})
    with pytest.raises(ValueError, match="must divide"):
        build_model("transformer", (64,), 10, {"tokens": 7})


def test_transformer_attention_mixes_tokens():
    """Changing one token changes every token's representation (attention is not a no-op)."""
    model = _build("transformer", (16,), {"dim": 8, "heads": 2, "tokens": 4}).eval()
    x = torch.randn(1, 16)
    y = x.clone()
    y[0, :4] += 1.0
    emb = model.embed(torch.cat([x, y]).reshape(2, 4, 4)) + model.pos
    out = model.blocks[0](emb)
    assert (out[0, 1:] - out[1, 1:]).abs().min() > 0
    # the position embedding breaks the permutation invariance of attention + mean-pooling
    swapped = x.reshape(1, 4, 4)[:, [1, 0, 2, 3]].reshape(1, 16)
    assert (model(swapped) - model(x)).abs().max() > 1e-4


def test_param_ranges_reject_bad_values():
    def err(model: str, param: str, value):
        return MODELS.get(model).param(param).validate(value)[1]

    assert err("mlp", "dropout", 1.0) is not None
    assert err("mlp", "dropout", -0.1) is not None
    assert err("mlp", "dropout", 0.0) is None
    assert err("mlp", "hidden", [16, 0]) is not None
    assert err("mlp", "hidden", [16, 8]) is None
    assert err("mlp", "activation", "swish") is not None
    assert err("ode_resnet", "h", 0.0) is not None
    assert err("ode_resnet", "h", 1e-3) is None
    assert err("ode_resnet", "depth", 0) is not None
    assert err("ode_resnet", "variant", "sparse") is not None
    assert err("resnet", "depth", 2) is not None
    assert err("resnet", "width", 0) is not None
    assert err("transformer", "mlp_ratio", 0) is not None
    assert err("transformer", "tokens", -1) is not None
    assert err("transformer", "heads", 2.5) is not None


def test_build_model_checks_names_and_keywords():
    with pytest.raises(ValueError, match="did you mean `mlp`"):
        build_model("mpl", (4,), 2, {})
    with pytest.raises(ValueError, match="did you mean `hidden`"):
        build_model("mlp", (4,), 2, {"hiden": [3]})
    with pytest.raises(ValueError, match="out of range"):
        build_model("mlp", (4,), 2, {"dropout": 1.5})
    with pytest.raises(ValueError, match="classes"):
        build_model("mlp", (4,), 0, {})
    # ints are coerced where floats are expected
    model = build_model("ode_resnet", (4,), 2, {"h": 1})
    assert isinstance(model.stack.h, float) and model.stack.h == 1.0


def test_trace_model_annotates_scopes_and_leaves_state_alone():
    model = _build("resnet", (1, 8, 8), {"width": 2})
    x = torch.randn(4, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    gm = trace_model(model, x)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    blocks = {n.meta["mrc"]["residual_block"] for n in gm.graph.nodes} - {None}
    assert blocks == {"layer1.0", "layer2.0", "layer3.0"}
    node = next(n for n in gm.graph.nodes if n.target == "layer2.0.branch.0")
    assert node.meta["mrc"]["scope"] == "layer2.0.branch.0"
    assert node.meta["mrc"]["module_type"] == "Conv2d"

    ode = _build("ode_resnet", (4,), {"depth": 3})
    gm = trace_model(ode, torch.randn(2, 4))
    layers = [n.meta["mrc"]["layer"] for n in gm.graph.nodes
              if n.meta["mrc"]["residual_stack"] == "stack"]
    assert layers == sorted(layers) and set(layers) == {0, 1, 2}


class _Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return -x


class _LeafGate(_Gate):
    mrc_leaf = True


class _Gated(nn.Module):
    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 3), gate)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_trace_failure_names_module_and_leaf_fixes_it():
    torch.manual_seed(0)
    model = _Gated(_Gate())
    x = torch.randn(4, 3)
    with pytest.raises(TraceFailure) as info:
        trace_model(model, x)
    failure = info.value
    assert "`body.1`" in failure.message and "_Gate" in failure.message
    assert "control flow" in failure.message
    assert failure.module == "body.1"
    assert "mrc_leaf = True" in failure.hint and "leaf_modules" in failure.hint

    for gm in (trace_model(model, x, leaf_modules={"body.1"}),
               trace_model(model, x, leaf_modules={"_Gate"})):
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(gm(-x), model(-x), rtol=0, atol=0)
    leaf_model = _Gated(_LeafGate())
    gm = trace_model(leaf_model, x)
    assert any(n.op == "call_module" and n.target == "body.1" for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), leaf_model(x), rtol=0, atol=0)


def test_trace_failure_in_root_forward_and_on_wrong_example():
    with pytest.raises(TraceFailure, match="_Gate") as info:
        trace_model(_Gate(), torch.randn(2, 3))
    assert info.value.module == ""
    assert "torch.where" in info.value.hint
    with pytest.raises(ForwardError, match=r"RuntimeError: mat1 and mat2") as error:
        trace_model(_build("mlp", (64,), {}), torch.randn(2, 10))
    # a built-in model: no user frame, the first layer rejects the examples' shape (10,)
    assert error.value.message.startswith("the model's forward raised RuntimeError")
    assert "first layer `layers.0` (Linear)" in error.value.hint and "(10,)" in error.value.hint


def _parameters_scanned(model: nn.Module, example: torch.Tensor,
                        monkeypatch: pytest.MonkeyPatch) -> int:
    """How many (name, parameter) pairs `named_parameters()` yields while tracing `model`."""
    count = 0
    original = nn.Module.named_parameters

    def counting(self: nn.Module, *args: object, **kwargs: object):
        nonlocal count
        for item in original(self, *args, **kwargs):
            count += 1
            yield item

    monkeypatch.setattr(nn.Module, "named_parameters", counting)
    trace_model(model, example)
    monkeypatch.undo()
    return count


def test_tracing_scans_the_parameters_a_number_of_times_linear_in_depth(monkeypatch):
    # torch.fx's own Tracer.getattr scans root.named_parameters() on every parameter read, so
    # an ODE-ResNet (whose steps read their weights) cost O(depth²): 64 → 128 layers scanned
    # about 4× as many pairs. Linear tracing scans about 2× (here: once per trace).
    counts = [_parameters_scanned(_build("ode_resnet", (4,), {"depth": d}), torch.randn(2, 4),
                                  monkeypatch) for d in (64, 128)]
    params = [2 * d + 4 for d in (64, 128)]
    assert counts[1] <= 2.2 * counts[0]
    assert counts[1] <= 3 * params[1]


class _Shared(nn.Module):
    """Two steps that share one weight, read inside non-leaf forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Module()
        self.a.w = nn.Parameter(torch.randn(3, 3))
        self.b = nn.Module()
        self.b.w = self.a.w
        self.b.v = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.a.w @ self.b.w + self.b.v


def test_trace_names_a_shared_parameter_once_by_its_first_name():
    torch.manual_seed(0)
    model = _Shared()
    x = torch.randn(2, 3)
    gm = trace_model(model, x)
    assert [n.target for n in gm.graph.nodes if n.op == "get_attr"] == ["a.w", "b.v"]
    plain = fx.symbolic_trace(model)
    assert [n.target for n in plain.graph.nodes if n.op == "get_attr"] == ["a.w", "b.v"]
    assert torch.equal(gm(x), model(x))


def _wrn_reference_count(depth: int, k: int, in_ch: int, classes: int) -> int:
    """Parameters of WRN-depth-k written from the paper's table 1: a 3×3 conv of 16 channels,
    three groups of n = (depth − 4)/6 pre-activation blocks (BN, 3×3 conv, BN, 3×3 conv; a 1×1
    conv shortcut where the width or stride changes), BN, the linear classifier. Convs have no
    bias; a BN has 2 parameters per channel."""
    n = (depth - 4) // 6
    total = 9 * in_ch * 16
    c = 16
    for w in (16 * k, 32 * k, 64 * k):
        for j in range(n):
            cin = c if j == 0 else w
            stride = 2 if j == 0 and w != 16 * k else 1  # groups 2 and 3 start with stride 2
            total += 2 * cin + 9 * cin * w + 2 * w + 9 * w * w
            if cin != w or stride != 1:
                total += cin * w
        c = w
    return total + 2 * c + c * classes + classes


def test_wide_resnet_16_4_has_the_papers_parameter_count():
    model = _build("wide_resnet", (3, 32, 32), {}, classes=10)  # defaults: WRN-16-4
    count = sum(p.numel() for p in model.parameters())
    assert count == _wrn_reference_count(16, 4, 3, 10) == 2_748_890  # "2.7M" in the paper
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    small = _build("wide_resnet", (1, 8, 8), {"depth": 10, "widen": 2})
    assert sum(p.numel() for p in small.parameters()) == _wrn_reference_count(10, 2, 1, 7)


def test_wide_resnet_structure_names_and_block():
    from mrc.models.wide_resnet import WideBlock

    model = _build("wide_resnet", (3, 8, 8), {"depth": 16, "widen": 2, "dropout": 0.2})
    names = dict(model.named_parameters())
    assert names["stem.weight"].shape == (16, 3, 3, 3)
    assert names["layer1.0.pre.0.weight"].shape == (16,)
    assert names["layer1.0.shortcut.weight"].shape == (32, 16, 1, 1)  # 16 → 32 channels
    assert "layer1.1.shortcut.weight" not in names
    assert names["layer2.0.branch.0.weight"].shape == (64, 32, 3, 3)
    assert names["layer3.1.branch.4.weight"].shape == (128, 128, 3, 3)  # conv-drop-BN-ReLU-conv
    assert names["norm.0.weight"].shape == (128,) and names["head.weight"].shape == (7, 128)
    blocks = [m for m in model.modules() if getattr(m, "is_residual_block", False)]
    assert len(blocks) == 6 and all(isinstance(b, WideBlock) for b in blocks)
    assert model.layer2[0].branch[0].stride == (2, 2) and model.layer1[0].branch[0].stride == (1, 1)
    torch.manual_seed(0)
    block = WideBlock(3, 6, 2, 0.0).eval()
    x = torch.randn(2, 3, 8, 8)
    o = torch.relu(block.pre[0](x))
    torch.testing.assert_close(block(x), block.shortcut(o) + block.branch(o), rtol=0, atol=0)
    same = WideBlock(4, 4, 1, 0.0).eval()
    y = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(same(y), y + same.branch(torch.relu(same.pre[0](y))), rtol=0, atol=0)
    with pytest.raises(ValueError, match="6n"):
        build_model("wide_resnet", (3, 8, 8), 10, {"depth": 14})
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("wide_resnet", (64,), 10, {})


def test_wide_resnet_residual_branches_are_found():
    from mrc.techniques.modules.fxsplit import residuals_by_block

    model = _build("wide_resnet", (1, 8, 8), {"depth": 10, "widen": 1}).eval()
    gm = trace_model(model, torch.randn(2, 1, 8, 8))
    found = residuals_by_block(gm)
    assert list(found) == ["layer1.0", "layer2.0", "layer3.0"]
    nodes = {n.name: n for n in gm.graph.nodes}
    for block, [res] in found.items():  # the branch operand is the block's last branch conv
        assert nodes[res.branch].target == f"{block}.branch.3"


class _TwoLayers(nn.Module):
    def __init__(self, inner: int) -> None:
        super().__init__()
        self.first = nn.Linear(4, 5)
        self.second = nn.Linear(inner, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        return self.second(h)  # the line a shape bug is reported at


def test_forward_error_names_the_users_line_and_blames_the_data_only_at_the_first_layer():
    line = inspect.getsourcelines(_TwoLayers.forward)[1] + 2
    with pytest.raises(ForwardError) as inner:  # the model disagrees with itself
        trace_model(_TwoLayers(6), torch.randn(2, 4))
    assert inner.value.message.endswith(
        f"test_models.py:{line}: RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x5 and 6x3)")
    assert "`second` (Linear) was given an input of shape (2, 5)" in inner.value.hint
    assert "data" not in inner.value.hint and "in_shape" not in inner.value.hint
    with pytest.raises(ForwardError) as first:  # the data's examples do not fit
        trace_model(_TwoLayers(5), torch.randn(2, 7))
    assert f"test_models.py:{line - 1}: RuntimeError" in first.value.message
    assert "first layer `first` (Linear)" in first.value.hint and "(7,)" in first.value.hint
    assert "in_shape" in first.value.hint


class _Pairs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = x.reshape(-1, 2, 4)  # an odd batch cannot be paired
        return self.head((pairs + pairs.flip(1)).reshape(x.shape))


def test_an_error_while_the_traced_graph_runs_is_told_at_the_users_line(capfd):
    from mrc.usercode import describe_user_error

    gm = trace_model(_Pairs(), torch.randn(2, 4))
    line = inspect.getsourcelines(_Pairs.forward)[1] + 1
    assert next(n.meta["mrc"]["source"][1] for n in gm.graph.nodes if n.op == "call_method") == line
    with pytest.raises(RuntimeError) as info:
        gm(torch.randn(3, 4))
    assert describe_user_error(info.value).endswith(
        f"test_models.py:{line}: RuntimeError: shape '[-1, 2, 4]' is invalid for input of size 12")
    assert capfd.readouterr().err == ""  # torch.fx prints no generated code


def test_wide_resnet_is_split_module_wise_at_a_block(tmp_path):
    import re

    from mrc.api import bind_spec

    spec = tmp_path / "wrn.mrs"
    spec.write_text("model wide_resnet(depth=10, widen=1)\ndata digits(shape=image, limit=128)\n"
                    "optimizer sgd(lr=0.05)\nmodules { split = equal(2) }\n")
    bound = bind_spec(spec)
    mods = bound.parts["modules"]
    assert mods.names == ("m0", "m1")
    m0, m1 = (mods.infos[n] for n in mods.names)
    assert m0.layers[0] == "stem" and m1.layers[-1] == "head"
    assert re.fullmatch(r"layer[23]\.0\.pre\.0", m1.layers[0]), m1.layers  # a block starts m1
    assert m0.residuals + m1.residuals == 3  # each WideBlock's branch r_m, once
    model_params = sum(p.numel() for n, p in bound.model.named_parameters() if not n.startswith("aux."))
    assert model_params == _wrn_reference_count(10, 1, 1, 10)


class _Typo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fcc(x)  # a typo, not a shape: no hint about the data


def test_a_forward_error_that_is_no_shape_error_gets_no_hint_about_the_data():
    from mrc.models import check_forward

    with pytest.raises(TraceFailure):  # torch.fx fails first; binding then runs the model itself
        trace_model(_Typo(), torch.randn(2, 4))
    with pytest.raises(ForwardError) as info:
        check_forward(_Typo(), torch.randn(2, 4))
    line = inspect.getsourcelines(_Typo.forward)[1] + 1
    assert info.value.message.endswith(f"test_models.py:{line}: AttributeError: '_Typo' object has no "
                                       "attribute 'fcc'")
    assert info.value.hint == ""
