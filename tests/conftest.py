"""Test-wide set-up that must happen before any test module is imported.

Triton reads TRITON_INTERPRET once, when it is first imported. Without CUDA the kernel tests run
the Triton kernels under the CPU interpreter, so the variable is set here, before any test module
(tests/numerics imports mrc.kernels too) can import Triton first. With CUDA it is left alone and
the kernels are compiled for the device.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
