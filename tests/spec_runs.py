"""What the tests that take every spec in specs/ through the compiler or a run share.

Two kinds of spec need more than the spec itself:
- a spec whose data lie on disk (`fashion_mnist`, `cifar10`, …) can only compile where the files
  are: `data_missing` gives the reason to skip it elsewhere (CI installs Fashion-MNIST; CIFAR-10
  is never downloaded, so `specs/cifar10_wrn.mrs` runs where a user has it);
- a fine-tuning spec loads `../runs/NAME/latest/final.pt`: `pretraining` names the spec
  (`specs/NAME.mrs`) whose run makes that file (a test writes that run to `runs/NAME/latest`).
"""

from __future__ import annotations

import re
from pathlib import Path

from mrc.api import check_spec
from mrc.data.disk import FINDERS, find
from mrc.data.files import DataError

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.mrs"))

_INIT = re.compile(r'^init\s+"\.\./runs/(\w+)/latest/final\.pt"', re.MULTILINE)


def data_missing(spec: Path) -> str | None:
    """Why `spec` cannot load its data on this machine (None: it can)."""
    data = check_spec(spec).data
    if data.user or data.name not in FINDERS:
        return None
    try:
        find(data.name, data.kwargs.get("root"))
    except DataError as err:
        return f"{spec.name}: {err.message.split(';')[0]}"
    return None


def pretraining(spec: Path) -> Path | None:
    """The spec whose run writes the weights a fine-tuning spec starts from (None: none)."""
    m = _INIT.search(spec.read_text())
    return ROOT / "specs" / f"{m.group(1)}.mrs" if m else None
