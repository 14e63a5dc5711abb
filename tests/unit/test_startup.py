"""Start-up: checking a spec reads the registries' tables only, so `mrc check` of a spec with
errors imports no torch; the digits load without importing sklearn.datasets and equal its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

BAD = {
    "parse": "model mlp(hidden=[32]\n",
    "range": "model mlp\ndata digits\noptimizer sgd(lr = -1)\ntrain(epochs=1)\n",
    "unknown model": "model resnett\ndata digits\noptimizer sgd(lr = 0.1)\ntrain(epochs=1)\n",
    "bad augment": "model mlp\ndata fashion_mnist(augment = flip)\noptimizer adam\ntrain(epochs=1)\n",
    "bad loss": "model mlp\ndata digits\nloss mse(beta=1)\noptimizer adam\ntrain(epochs=1)\n",
    "bad schedule": "model mlp\ndata digits\noptimizer adam\nschedule cosine(warmup=-1)\ntrain(epochs=1)\n",
}

PROBE = """
import json, sys
from mrc.cli import main
status = main(["check", *sys.argv[1:]])
print(json.dumps({"status": status, "loaded": sorted(m for m in ("torch", "sklearn.datasets")
                                                      if m in sys.modules)}))
"""


def probe(*specs: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *map(str, specs)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"stderr": done.stderr}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_spec_with_errors_is_reported_without_importing_torch(case: str, tmp_path: Path) -> None:
    spec = tmp_path / "bad.mrs"
    spec.write_text(BAD[case])
    got = probe(spec)
    assert got["status"] != 0 and "error" in got["stderr"], got  # the error is found…
    assert got["loaded"] == [], f"{case}: {got['loaded']} imported to report {got['stderr']!r}"  # …without torch


def test_every_spec_is_checked_without_importing_torch() -> None:
    """The checker alone (no binding) over every spec in specs/, in one process."""
    code = ("import sys; from pathlib import Path; from mrc.api import check_spec\n"
            "specs = sorted(Path('specs').rglob('*.mrs'))\n"
            "for s in specs: check_spec(s)\n"
            "print(len(specs), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    count, loaded = done.stdout.split()
    assert done.returncode == 0, done.stderr
    assert int(count) > 30 and loaded == "False"


def test_a_lazy_builder_resolves_and_shows_its_signature() -> None:
    import inspect

    from mrc.lazy import Lazy
    from mrc.models import MODELS

    build = MODELS.get("mlp").build
    assert isinstance(build, Lazy)
    assert list(inspect.signature(build).parameters)[:2] == ["in_shape", "classes"]
    model = build((8,), 3, hidden=[4])
    assert model.head.out_features == 3
    with pytest.raises(ValueError, match=r"package\.module:function"):
        Lazy("no_colon")


def test_digits_are_sklearns_digits() -> None:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from mrc.data.builtin import digits

    ours, theirs = digits(0, shape="image"), sklearn_datasets.load_digits()
    assert ours["x"].dtype == np.float32 and ours["y"].dtype == np.int64
    assert np.array_equal(ours["x"].reshape(len(ours["x"]), -1), np.asarray(theirs.data, np.float32) / 16.0)
    assert np.array_equal(ours["y"], theirs.target)
