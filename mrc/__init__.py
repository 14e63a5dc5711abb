"""mrc — a declarative training-graph compiler for PyTorch.

A `.mrs` spec is parsed (grammar/), checked into a Program, bound to a torch.fx-traced model,
turned into a schedule graph over one period of training, rewritten by passes (passes/), lowered
to a Plan and run (mrc.runtime, kernels/). The public API lives in `mrc.api`.
"""

from __future__ import annotations

__version__ = "0.1.0"
