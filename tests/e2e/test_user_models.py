"""User models end to end: torchvision-shaped factories, packages beside the spec, models torch.fx
cannot trace, and errors in the user's forward told at the user's file:line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mrc.cli import main

ZOO = '''
import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, widths, num_classes=1000, in_channels=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.layers = nn.Sequential(*[BasicBlock(a, b, 1 if a == b else 2)
                                      for a, b in zip(widths, widths[1:])])
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = self.layers(self.conv1(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet18(*, weights=None, progress=True, num_classes=1000, **kwargs):
    """torchvision's shape: every other keyword goes to the model's constructor."""
    assert weights is None
    return ResNet([4, 4, 8], num_classes=num_classes, **kwargs)
'''

BRANCHY = '''
import torch
from torch import nn


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return x * 2
        return x


class Branchy(nn.Module):
    def __init__(self, in_shape, classes):
        super().__init__()
        self.body = nn.Linear(in_shape[0], 16)
        self.gate = Gate()
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.gate(torch.relu(self.body(x))))
'''

BUGGY = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, in_shape, classes):
        super().__init__()
        self.body = nn.Linear(in_shape[0], 32)
        self.head = nn.Linear(512, classes)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.head(h)
'''

HEAD = "data digits(batch=32, limit=300{data})\noptimizer sgd(lr=0.05, momentum=0.9)\n"


def _spec(folder: Path, model: str, extra: str = "", data: str = "") -> Path:
    path = folder / "run.mrs"
    path.write_text(f"{model}\n" + HEAD.format(data=data) + extra)
    return path


def _train(spec: Path, out: Path, capsys: pytest.CaptureFixture[str], steps: int = 6) -> tuple[int, str]:
    status = main(["train", str(spec), "--steps", str(steps), "--out", str(out), "--no-progress"])
    return status, capsys.readouterr().err


def test_torchvision_shaped_factory_trains_with_its_own_keywords(tmp_path, capsys):
    (tmp_path / "zoo.py").write_text(ZOO)
    spec = _spec(tmp_path, 'model "zoo.py:resnet18"(num_classes=10)', data=', shape="image"')
    status, err = _train(spec, tmp_path / "out", capsys)
    assert status == 0, err
    state = torch.load(tmp_path / "out" / "final.pt", weights_only=True)
    assert state["fc.weight"].shape == (10, 8)  # num_classes reached the model; in_shape did not
    assert state["conv1.weight"].shape == (4, 1, 3, 3)


def test_dotted_reference_finds_a_package_beside_the_spec(tmp_path, capsys, monkeypatch):
    (tmp_path / "spec" / "nets_mrc_e2e").mkdir(parents=True)
    (tmp_path / "spec" / "nets_mrc_e2e" / "zoo.py").write_text(ZOO)  # a namespace package
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    spec = _spec(tmp_path / "spec", 'model "nets_mrc_e2e.zoo:resnet18"(num_classes=10)',
                 data=', shape="image"')
    try:
        status, err = _train(spec, tmp_path / "out", capsys)
    finally:
        for name in [n for n in sys.modules if n.startswith("nets_mrc_e2e")]:
            del sys.modules[name]
    assert status == 0, err
    assert str(tmp_path / "spec") not in sys.path


@pytest.mark.parametrize("extra", [
    "",
    'brain a { every = 1 }\nbrain b { every = 2 }\nmerge mean(momentum=keep)\n',
    'partition fast = module("head") { every = 1 }\npartition slow = rest { every = 3 }\n',
], ids=["plain", "brains", "partitions"])
def test_a_model_fx_cannot_trace_trains_where_nothing_cuts_it(tmp_path, capsys, extra):
    from mrc.api import bind_spec

    (tmp_path / "branchy.py").write_text(BRANCHY)
    spec = _spec(tmp_path, 'model "branchy.py:Branchy"()', extra)
    bound = bind_spec(spec)
    assert bound.graph_module is None and bound.runnable is bound.model and bound.layers == ()
    initial = {k: v.clone() for k, v in bound.model.state_dict().items()}  # the run's own seed
    status, err = _train(spec, tmp_path / "out", capsys, steps=9)
    assert status == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 9 and summary["status"] == "completed"
    final = torch.load(tmp_path / "out" / "final.pt", weights_only=True)
    for name in ("body.weight", "head.weight"):  # every partition (every brain) trained
        assert not torch.equal(final[name], initial[name]), name


@pytest.mark.parametrize(("extra", "where", "what"), [
    ("modules { split = equal(2) }\n", "4:1", "module-wise training (`modules`) cuts the model"),
    ('mgrit "gate" { levels = 2 }\n', "4:1", '`mgrit "gate"` finds its stack\'s layers'),
    ("partition a = depth(0, 1)\npartition b = rest\n", "4:15", "`depth(0, 1)` counts layers"),
], ids=["modules", "mgrit", "depth"])
def test_a_cut_of_an_untraceable_model_is_refused_naming_the_module(tmp_path, capsys, extra, where,
                                                                    what):
    (tmp_path / "branchy.py").write_text(BRANCHY)
    spec = _spec(tmp_path, 'model "branchy.py:Branchy"()', extra)
    status = main(["check", str(spec)])
    err = capsys.readouterr().err
    assert status == 2
    assert f"run.mrs:{where}: error: {what}" in err
    assert "cannot be traced by torch.fx: cannot trace module `gate` (Gate)" in err
    assert "control flow" in err and "Traceback" not in err
    assert err.count("error:") == 1


@pytest.mark.slow  # a fresh interpreter: the real command's stderr and exit status
def test_a_shape_bug_in_the_users_forward_is_one_diagnostic_at_its_line(tmp_path):
    (tmp_path / "mymodel.py").write_text(BUGGY)
    spec = _spec(tmp_path, 'model "mymodel.py:Net"()')
    run = subprocess.run([sys.executable, "-m", "mrc.cli", "train", "run.mrs", "--steps", "2",
                          "--out", "out"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    line = BUGGY.splitlines().index("        return self.head(h)") + 1
    assert (f"run.mrs:1:7: error: mymodel.py:{line}: RuntimeError: mat1 and mat2 shapes cannot be "
            f"multiplied (2x32 and 512x10)") in run.stderr
    assert "`head` (Linear) was given an input of shape (2, 32)" in run.stderr
    assert "in_shape" not in run.stderr  # the data is not to blame
    assert "Traceback" not in run.stderr and "ShapeProp" not in run.stderr
    assert not spec.with_name("out").exists()


ODD = '''
from torch import nn


class Pairs(nn.Module):
    def __init__(self, in_shape, classes):
        super().__init__()
        self.body = nn.Linear(in_shape[0], 16)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.body(x)
        pairs = x.reshape(-1, 2, x.shape[1])  # a batch of odd size has no pairs
        return self.head((pairs + pairs.flip(1)).reshape(x.shape))
'''


@pytest.mark.parametrize("extra", [
    "",  # the traced model runs whole
    'partition body = module("body") { every = 4 }\npartition head = module("head")\n',  # cut
    'brain a { every = 1 }\nbrain b { every = 2 }\nmerge mean(momentum=keep)\n',  # copies
], ids=["whole", "segments", "brains"])
def test_an_error_in_the_users_forward_mid_run_ends_it_in_one_line(tmp_path, capsys, extra):
    (tmp_path / "odd.py").write_text(ODD)
    spec = tmp_path / "run.mrs"  # 99 examples in batches of 32: the 4th batch holds 3
    spec.write_text('model "odd.py:Pairs"()\ndata digits(batch=32, limit=99, val=0.0)\n'
                    f'optimizer sgd(lr=0.1)\ntrain(log_every=1)\n{extra}')
    status, err = _train(spec, tmp_path / "out", capsys)
    assert status == 1
    line = ODD.splitlines().index("        pairs = x.reshape(-1, 2, x.shape[1])  # a batch of odd size "
                                  "has no pairs") + 1
    lines = [x for x in err.splitlines() if x.startswith("mrc train")]
    assert lines == [f"mrc train: error: training stopped by an error in user code: "
                     f"{_shown(tmp_path)}odd.py:{line}: RuntimeError: shape '[-1, 2, 16]' is invalid "
                     f"for input of size 48"], err
    assert "Traceback" not in err and "generated forward" not in err
    metrics = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m][-1] == 3  # the steps before it


def _shown(folder: Path) -> str:
    from mrc.usercode import shown_path

    return shown_path(str(folder.resolve() / "odd.py")).removesuffix("odd.py")
