"""Kernel tests run on CUDA when there is a GPU, else on CPU tensors under Triton's interpreter.

``TRITON_INTERPRET`` is read when a ``@triton.jit`` function is defined, so it is set here, at
import time, before any test module imports triton or a kernel module. One mode per process: the
device parameter is "cuda" (compiled kernels) or "cpu" (interpreter), never both.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

_ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not _ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = "cuda" if _ON_GPU else "cpu"
# A kernel module imported before this conftest (without the interpreter, on a machine without a GPU)
# holds compiled-mode kernels that cannot run on CPU tensors.
_KERNEL_MODULES = ("activation", "kv_cache_write", "paged_attention", "rmsnorm", "rotary")
_STALE = not _ON_GPU and any(f"local_engine.kernels.{name}" in sys.modules for name in _KERNEL_MODULES)


@pytest.fixture(params=[DEVICE])
def device(request: pytest.FixtureRequest) -> str:
    """The device the kernels run on in this process."""
    if _STALE:
        pytest.skip("kernel modules were imported before TRITON_INTERPRET was set; run tests/kernels alone")
    return request.param


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
