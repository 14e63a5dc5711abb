"""Reading back what mrc wrote, safely: no file mrc reads may run code.

`plain` makes a state hold only tensors and plain data before it is saved, and `read_weights`
reads a torch file with `torch.load(weights_only=True)`, which rebuilds exactly those and refuses
any other Python global before anything in the file runs. The compiler (an `init` file) and the
runtime (checkpoints, brains, auxiliary heads) both read through here, so this module belongs to
neither.
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch


class WeightsError(Exception):
    """A torch file that cannot be read weights-only; the message is one line naming it."""


_PLAIN_SCALARS = (str, bytes, int, float, bool, complex, type(None))
_TORCH_LEAVES = (torch.Tensor, torch.dtype, torch.device, torch.Size)
"""What torch.load(weights_only=True) rebuilds as it was saved, besides the containers (the
scalars by exact type: an enum or other subclass would be pickled as its class)."""


def plain(obj: Any, where: str = "") -> Any:
    """`obj` as tensors and plain data only, so that torch.load(weights_only=True) reads it back.

    Containers (dict, OrderedDict with its attributes, as a state_dict's `_metadata`, list, tuple,
    set) are rebuilt with plain contents; numpy scalars become Python numbers and numpy arrays
    tensors. Anything else (a dataclass, an
    arbitrary object) raises TypeError naming its place, `where` (a key path).
    """
    if type(obj) in _PLAIN_SCALARS or isinstance(obj, _TORCH_LEAVES):  # Size before tuple
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if type(obj) is dict:
        return {k: plain(v, f"{where}/{k}") for k, v in obj.items()}
    if type(obj) is OrderedDict:  # a state_dict: its `_metadata` (module versions) goes along
        out = OrderedDict((k, plain(v, f"{where}/{k}")) for k, v in obj.items())
        out.__dict__.update(plain(vars(obj), f"{where}/"))
        return out
    if type(obj) in (list, tuple, set):
        return type(obj)(plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"cannot save {where or 'the state'}: a {type(obj).__module__}."
                    f"{type(obj).__qualname__} is not tensors or plain data, so a weights-only "
                    f"load could not read it back")


def read_weights(path: Path) -> Any:
    """What a torch file holds, read with weights_only=True: tensors and plain data only.

    A file that would load anything else is refused before any of it runs; every failure is a
    WeightsError of one line that names the file (torch's own messages run to many lines).
    """
    try:
        with warnings.catch_warnings():  # e.g. a note on the pickle protocol of a foreign file
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means a damaged or foreign file
        raise WeightsError(f"{path}: {_load_failure(err)}") from None


def _load_failure(err: Exception) -> str:
    """One line for a failed weights-only load: which global it refused, or what broke."""
    text = str(err)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (f"refused: it would load the Python global `{refused.group(1)}`, but a file "
                f"mrc reads back may hold only tensors and plain data (nothing in it was run)")
    opcode = re.search(r"Unsupported operand (\d+)", text)
    if opcode:
        return (f"{type(err).__name__}: not a torch file of tensors and plain data (pickle "
                f"opcode {opcode.group(1)} is not read)")
    first = (text.strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
