"""Whether a layer should hand a tensor to the Triton kernels: on CUDA, with triton importable,
unless ``SWITCHYARD_TRITON_OPS=0`` (to compare against the torch path). Host-side only, so it is
safe to call while a CUDA graph is captured."""

from __future__ import annotations

import functools
import logging
import os

import torch

logger = logging.getLogger(__name__)


@functools.cache
def _kernels_usable() -> bool:
    if os.environ.get("SWITCHYARD_TRITON_OPS", "1") == "0":
        return False
    try:
        import local_engine.kernels.activation
        import local_engine.kernels.rmsnorm
        import local_engine.kernels.rotary  # noqa: F401
    except Exception as exc:  # no triton on this CUDA node, or a kernel module that fails to import
        logger.warning("Triton norm/rope/activation kernels unavailable (%s); using torch ops", exc)
        return False
    return True


def use_triton(x: torch.Tensor) -> bool:
    """True when ``x`` should go through the Triton kernels (a CUDA tensor and usable kernels)."""
    return x.is_cuda and _kernels_usable()
