"""Triton kernels for the GPU path of the local engine.

Each kernel module exposes a Python wrapper next to the ``@triton.jit`` function and a torch
reference (``*_ref``) that the tests compare it against. Import the modules lazily: triton is only
required where these kernels run (``triton_available()`` says whether it is importable).
"""

from __future__ import annotations

import importlib.util
import os


def triton_available() -> bool:
    """Whether ``import triton`` can work here (no import is attempted)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
