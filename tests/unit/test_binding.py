"""Binding: selectors resolved to exact parameter names on the built-in models, `rest`, user
model factories, and initial weights loaded from a state_dict file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import fx, nn

from mrc.api import bind_spec
from mrc.binding import Bound, layer_order
from mrc.diagnostics import CompileError, Diagnostic

MLP = "model mlp(hidden=[16, 8])\ndata digits(limit=64)\noptimizer sgd(lr=0.1)\n"
RESNET = ("model resnet(depth=8, width=4)\ndata digits(limit=64, shape=image)\n"
          "optimizer sgd(lr=0.1)\n")

MLP_PARAMS = ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
              "head.weight", "head.bias"]


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.weight", f"{prefix}.bias"]


RESNET_PARAMS = [
    "stem.0.weight", *_bn("stem.1"),
    "layer1.0.branch.0.weight", *_bn("layer1.0.branch.1"),
    "layer1.0.branch.3.weight", *_bn("layer1.0.branch.4"),
    "layer2.0.branch.0.weight", *_bn("layer2.0.branch.1"),
    "layer2.0.branch.3.weight", *_bn("layer2.0.branch.4"),
    "layer2.0.shortcut.0.weight", *_bn("layer2.0.shortcut.1"),
    "layer3.0.branch.0.weight", *_bn("layer3.0.branch.1"),
    "layer3.0.branch.3.weight", *_bn("layer3.0.branch.4"),
    "layer3.0.shortcut.0.weight", *_bn("layer3.0.shortcut.1"),
    "head.weight", "head.bias",
]


def bind(tmp_path: Path, text: str, name: str = "spec.mrs") -> Bound:
    path = tmp_path / name
    path.write_text(text)
    return bind_spec(path)


def bind_errors(tmp_path: Path, text: str) -> list[Diagnostic]:
    with pytest.raises(CompileError) as info:
        bind(tmp_path, text)
    return list(info.value.diagnostics)


def select(tmp_path: Path, base: str, selector: str) -> tuple[str, ...]:
    """The parameters `selector` picks, as the partition `p` beside `partition other = rest`."""
    bound = bind(tmp_path, base + f"partition p = {selector}\npartition other = rest\n")
    parts = {p.name: p for p in bound.partitions}
    assert set(parts) <= {"p", "other"}
    names = [n for n, _ in bound.model.named_parameters()]
    other = parts["other"].params if "other" in parts else ()
    assert sorted(parts["p"].params + other) == sorted(names)  # disjoint and complete
    return parts["p"].params


def test_model_structure_is_what_the_tests_assume(tmp_path: Path) -> None:
    mlp = bind(tmp_path, MLP)
    assert [n for n, _ in mlp.model.named_parameters()] == MLP_PARAMS
    assert mlp.layers == ("layers.0", "layers.1", "head")
    resnet = bind(tmp_path, RESNET)
    assert [n for n, _ in resnet.model.named_parameters()] == RESNET_PARAMS
    assert resnet.layers[:2] == ("stem.0", "stem.1") and resnet.layers[-1] == "head"
    assert len(resnet.layers) == 19


def test_no_partitions_means_one_partition_of_everything(tmp_path: Path) -> None:
    bound = bind(tmp_path, MLP)
    (part,) = bound.partitions
    assert part.name == "all" and part.params == tuple(MLP_PARAMS)
    assert part.numel == sum(p.numel() for p in bound.model.parameters())
    assert part.numel == 64 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10
    assert bound.partition_of() == {n: "all" for n in MLP_PARAMS}


@pytest.mark.parametrize(("selector", "expected"), [
    ('module("layers")', MLP_PARAMS[:4]),
    ('module("layers.1")', ["layers.1.weight", "layers.1.bias"]),
    ('module("head")', ["head.weight", "head.bias"]),
    ('module("layers.*")', MLP_PARAMS[:4]),
    ('params("layers.*.weight")', ["layers.0.weight", "layers.1.weight"]),
    ('params("*.bias")', ["layers.0.bias", "layers.1.bias", "head.bias"]),
    ("bias", ["layers.0.bias", "layers.1.bias", "head.bias"]),
    ("weight", ["layers.0.weight", "layers.1.weight", "head.weight"]),
    ('weight - module("head")', ["layers.0.weight", "layers.1.weight"]),
    ('bias | module("head")', ["layers.0.bias", "layers.1.bias", "head.weight", "head.bias"]),
    ('weight & module("layers")', ["layers.0.weight", "layers.1.weight"]),
    ('type("Linear")', MLP_PARAMS),
    ("depth(0, 2)", MLP_PARAMS[:4]),
    ("depth(1)", MLP_PARAMS[2:]),
    ("depth(-1)", ["head.weight", "head.bias"]),
    ("depth(0, -1)", MLP_PARAMS[:4]),
    ("depth(1, 2) | depth(-1)", MLP_PARAMS[2:]),
])
def test_mlp_selectors(tmp_path: Path, selector: str, expected: list[str]) -> None:
    assert select(tmp_path, MLP, selector) == tuple(expected)


@pytest.mark.parametrize(("selector", "expected"), [
    ('module("layer1")', [n for n in RESNET_PARAMS if n.startswith("layer1.")]),
    ('type("Conv2d")', ["stem.0.weight", "layer1.0.branch.0.weight", "layer1.0.branch.3.weight",
                        "layer2.0.branch.0.weight", "layer2.0.branch.3.weight",
                        "layer2.0.shortcut.0.weight", "layer3.0.branch.0.weight",
                        "layer3.0.branch.3.weight", "layer3.0.shortcut.0.weight"]),
    ('type("BatchNorm2d")', [n for n in RESNET_PARAMS
                             if n.rpartition(".")[0].endswith((".1", ".4"))]),
    ("bias", [n for n in RESNET_PARAMS if n.endswith(".bias")]),
    ('weight - module("head")', [n for n in RESNET_PARAMS
                                 if n.endswith(".weight") and n != "head.weight"]),
    ("depth(0, 2)", ["stem.0.weight", "stem.1.weight", "stem.1.bias"]),
    ("depth(-1)", ["head.weight", "head.bias"]),
    ('module("layer*.0.shortcut")', ["layer2.0.shortcut.0.weight", *_bn("layer2.0.shortcut.1"),
                                     "layer3.0.shortcut.0.weight", *_bn("layer3.0.shortcut.1")]),
    ('params("layer3.*") & bias', [n for n in RESNET_PARAMS
                                   if n.startswith("layer3.") and n.endswith(".bias")]),
    ('type("Linear") | module("stem")', ["stem.0.weight", *_bn("stem.1"), "head.weight",
                                         "head.bias"]),
])
def test_resnet_selectors(tmp_path: Path, selector: str, expected: list[str]) -> None:
    assert select(tmp_path, RESNET, selector) == tuple(expected)


def test_resnet_depth_follows_the_traced_order(tmp_path: Path) -> None:
    # in a downsampling block the shortcut runs before the branch: depth counts in that order
    bound = bind(tmp_path, RESNET)
    i = bound.layers.index("layer2.0.shortcut.0")
    assert bound.layers[i:i + 3] == ("layer2.0.shortcut.0", "layer2.0.shortcut.1",
                                     "layer2.0.branch.0")
    assert select(tmp_path, RESNET, f"depth({i}, {i + 2})") == (
        "layer2.0.shortcut.0.weight", *_bn("layer2.0.shortcut.1"))


def test_partition_names_as_selectors_and_rest(tmp_path: Path) -> None:
    bound = bind(tmp_path, MLP + 'partition head = module("head")\n'
                 "partition biases = bias - head\npartition body = rest\n")
    parts = {p.name: p.params for p in bound.partitions}
    assert parts == {"head": ("head.weight", "head.bias"),
                     "biases": ("layers.0.bias", "layers.1.bias"),
                     "body": ("layers.0.weight", "layers.1.weight")}
    assert [p.name for p in bound.partitions] == ["head", "biases", "body"]
    assert bound.partitions[2].numel == 64 * 16 + 16 * 8


def test_rest_first_in_the_file_still_collects_the_remainder(tmp_path: Path) -> None:
    bound = bind(tmp_path, MLP + "partition others = rest\npartition w = weight\n")
    parts = {p.name: p.params for p in bound.partitions}
    assert parts["others"] == ("layers.0.bias", "layers.1.bias", "head.bias")
    assert parts["w"] == ("layers.0.weight", "layers.1.weight", "head.weight")


def test_binding_errors(tmp_path: Path) -> None:
    (d,) = bind_errors(tmp_path, RESNET + 'partition p = type("Conv")\npartition o = rest\n')
    assert d.message == 'partition `p` selects no parameter: `type("Conv")` matches nothing'
    assert d.hint == 'did you mean `type("Conv2d")`?'
    assert d.span is not None and (d.span.line, d.span.col) == (4, 15)
    # `type` selects the parameters a module holds itself: a ResidualBlock holds none
    (d,) = bind_errors(tmp_path, RESNET + 'partition p = type("ResidualBlock")\n'
                       "partition o = rest\n")
    assert d.message.endswith('`type("ResidualBlock")` matches nothing')
    (d,) = bind_errors(tmp_path, MLP + "partition p = depth(5)\npartition o = rest\n")
    assert d.hint == "the model has 3 parameterised layers (0…2)"
    (d,) = bind_errors(tmp_path, MLP + 'partition p = weight - module("layers") - module("head")\n'
                       "partition o = rest\n")
    assert "matches nothing" in d.message
    (d,) = bind_errors(tmp_path, MLP + "partition w = weight\npartition l = depth(0, 1)\n"
                       "partition o = rest\n")
    assert d.message == "partitions `w` and `l` both claim `layers.0.weight`"
    assert d.notes[0].message == "`w` is defined here"
    (d,) = bind_errors(tmp_path, MLP + "partition w = weight\n")
    assert d.message == ("3 parameters are in no partition: `layers.0.bias`, `layers.1.bias`, "
                         "`head.bias`")


# ---- user model factories -------------------------------------------------------------------

FACTORY = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, in_shape, classes, width):
        super().__init__()
        self.seen = (tuple(in_shape), classes, width)
        self.body = nn.Linear(in_shape[0], width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def build(in_shape, classes, width=4):
    return Net(in_shape, classes, width)


def build_kwargs(classes, width=3, **rest):  # **rest gets the spec's other arguments only
    assert "in_shape" not in rest, rest
    return Net((64,), classes, width)


def build_fixed(width=5):
    return Net((64,), 10, width)
'''


def test_user_factory_receives_in_shape_and_classes(tmp_path: Path) -> None:
    (tmp_path / "nets.py").write_text(FACTORY)
    bound = bind(tmp_path, 'model "nets.py:build"(width=6)\ndata digits(limit=64)\n'
                 "optimizer sgd(lr=0.1)\n")
    assert bound.model.seen == ((64,), 10, 6)
    assert [n for n, _ in bound.model.named_parameters()] == ["body.weight", "body.bias",
                                                              "head.weight", "head.bias"]
    assert bound.layers == ("body", "head")
    # `keep` relabels the classes: the factory sees 3 of them; `**rest` is given no in_shape
    bound = bind(tmp_path, 'model "nets.py:build_kwargs"\ndata digits(limit=64, keep=[3, 1, 4])\n'
                 "optimizer sgd(lr=0.1)\n")
    assert bound.model.seen == ((64,), 3, 3)
    bound = bind(tmp_path, 'model "nets.py:build_fixed"(width=2)\ndata digits(limit=64)\n'
                 'optimizer sgd(lr=0.1)\npartition h = module("head")\npartition b = rest\n')
    assert bound.model.seen == ((64,), 10, 2)
    assert {p.name: p.params for p in bound.partitions}["h"] == ("head.weight", "head.bias")


def test_user_factory_in_a_sub_folder_relative_to_the_spec(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "nets.py").write_text(FACTORY)
    sub = tmp_path / "specs"
    sub.mkdir()
    bound = bind(sub, 'model "../code/nets.py:build"\ndata digits(limit=64)\n'
                 "optimizer sgd(lr=0.1)\n")
    assert bound.model.seen == ((64,), 10, 4)


# ---- initial weights ------------------------------------------------------------------------


def test_init_loads_matching_tensors_and_skips_excluded(tmp_path: Path) -> None:
    fresh = bind(tmp_path, MLP).model.state_dict()
    gen = torch.Generator().manual_seed(123)
    saved = {k: torch.randn(v.shape, generator=gen) for k, v in fresh.items()}
    saved["extra.weight"] = torch.ones(3)  # not in the model: skipped
    torch.save(saved, tmp_path / "w.pt")
    loaded = bind(tmp_path, MLP + 'init "w.pt"(exclude=["head.*"])\n').model.state_dict()
    for name in ("layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"):
        assert torch.equal(loaded[name], saved[name]), name
        assert not torch.equal(loaded[name], fresh[name])
    for name in ("head.weight", "head.bias"):  # excluded: the seed's initialisation
        assert torch.equal(loaded[name], fresh[name]), name
        assert not torch.equal(loaded[name], saved[name])


def test_init_skips_reshaped_tensors_unless_strict(tmp_path: Path) -> None:
    fresh = bind(tmp_path, MLP).model.state_dict()
    saved = {k: torch.full(v.shape, 0.5) for k, v in fresh.items()}
    saved["head.weight"] = torch.zeros(3, 8)  # a head for 3 classes, the model has 10
    saved["head.bias"] = torch.zeros(3)
    torch.save(saved, tmp_path / "w.pt")
    loaded = bind(tmp_path, MLP + 'init "w.pt"\n').model.state_dict()
    assert torch.equal(loaded["layers.1.weight"], torch.full((8, 16), 0.5))
    assert torch.equal(loaded["head.weight"], fresh["head.weight"])
    diags = bind_errors(tmp_path, MLP + 'init "w.pt"(strict=true)\n')
    assert diags[0].message == ("initial weight `head.weight` has shape (3, 8), the model's "
                                "(10, 8)")
    assert diags[0].span is not None and diags[0].span.line == 4


@pytest.mark.parametrize(("content", "kind"), [
    (b"PK\x03\x04 not really a zip", "RuntimeError"),
    (b"model mlp()\n", "UnpicklingError"),
])
def test_unreadable_init_file_is_a_one_line_error(tmp_path: Path, content: bytes,
                                                  kind: str) -> None:
    (tmp_path / "w.pt").write_bytes(content)
    (d,) = bind_errors(tmp_path, MLP + 'init "w.pt"\n')
    assert d.message.startswith(f"cannot read initial weights from {tmp_path / 'w.pt'}: {kind}: ")
    assert "\n" not in d.message and "weights_only" not in d.message
    assert d.span is not None and (d.span.line, d.span.col) == (4, 6)


def _layer_order_by_definition(gm: fx.GraphModule, model: nn.Module) -> tuple[str, ...]:
    """layer_order as its docstring defines it, scanning every owner for every node."""
    owners = {name.rpartition(".")[0] for name, _ in model.named_parameters()}
    order: list[str] = []
    for node in gm.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            target = str(node.target)
            path = target if node.op == "call_module" else target.rpartition(".")[0]
            for owner in sorted(owners):
                if (owner == path or owner.startswith(path + ".")) and owner not in order:
                    order.append(owner)
    return tuple(order + [o for o in sorted(owners) if o not in order])


class _Tangle(nn.Module):
    """Owners used out of name order: a leaf block with nested owners called twice, a root
    parameter, a module whose name extends another's (`b` / `bb`) and one never used."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.z = nn.Linear(4, 4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4)))
        self.bb = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bb(self.z(x) * self.scale)
        return self.b(self.block(self.block(x)))


@pytest.mark.parametrize(("name", "in_shape", "kwargs", "leaves"), [
    ("tangle", (4,), {}, {"block"}),
    ("tangle", (4,), {}, set()),
    ("resnet", (3, 8, 8), {"depth": 14}, set()),
    ("ode_resnet", (6,), {"depth": 12}, set()),
    ("ode_resnet", (2, 6, 6), {"depth": 3, "variant": "conv"}, set()),
    ("transformer", (2, 6), {"depth": 2}, set()),
])
def test_layer_order_is_the_order_of_first_use(name: str, in_shape: tuple[int, ...],
                                               kwargs: dict, leaves: set[str]) -> None:
    from mrc.models import build_model, trace_model

    torch.manual_seed(0)
    model = _Tangle() if name == "tangle" else build_model(name, in_shape, 5, kwargs)
    gm = trace_model(model, torch.randn(2, *in_shape), leaf_modules=leaves)
    assert layer_order(gm, model) == _layer_order_by_definition(gm, model)
    if name == "tangle":
        assert layer_order(gm, model)[:3] == ("z", "", "bb")
        assert layer_order(gm, model)[-1] == "unused"


ODE = "model ode_resnet(depth=12, width=3)\ndata levelsets(samples=40, batch=10)\noptimizer sgd(lr=0.1)\n"


def _ode_layers(*ns: int) -> list[str]:
    return [f"stack.layers.{n}.{w}" for n in ns for w in ("weight", "bias")]


@pytest.mark.parametrize(("selector", "expected"), [
    ('module("stack.layers.1*")', _ode_layers(1, 10, 11)),
    ('module("stack")', _ode_layers(*range(12))),
    ('type("DenseStep")', _ode_layers(*range(12))),
    ('type("Linear") - module("stack")', ["stem.0.weight", "stem.0.bias", "head.weight",
                                          "head.bias"]),
    ("depth(3, 5)", _ode_layers(2, 3)),
    ("depth(-1) | depth(0, 1)", ["stem.0.weight", "stem.0.bias", "head.weight", "head.bias"]),
])
def test_ode_resnet_selectors(tmp_path: Path, selector: str, expected: list[str]) -> None:
    assert select(tmp_path, ODE, selector) == tuple(expected)
