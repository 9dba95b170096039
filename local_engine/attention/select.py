"""Picks the attention backend for a device: Triton kernels on CUDA when available, torch otherwise.

``SWITCHYARD_ATTENTION_BACKEND=torch`` forces the torch path everywhere (useful to compare).
"""

from __future__ import annotations

import logging
import os

import torch

from local_engine.attention.metadata import AttentionBackend
from local_engine.attention.torch_backend import TorchAttentionBackend

logger = logging.getLogger(__name__)

_backends: dict[str, AttentionBackend] = {}


def _triton_backend() -> AttentionBackend | None:
    try:
        from local_engine.attention import triton_backend
    except Exception as exc:  # no triton, or a kernel module that fails to import
        logger.warning("Triton attention backend unavailable (%s); using the torch backend", exc)
        return None
    factory = getattr(triton_backend, "get_backend", None) or getattr(
        triton_backend, "TritonAttentionBackend", None
    )
    if factory is None:
        logger.warning("local_engine.attention.triton_backend exposes no backend; using the torch backend")
        return None
    return factory()


def get_backend(device: torch.device | str) -> AttentionBackend:
    """The (cached) attention backend for ``device``."""
    kind = torch.device(device).type
    backend = _backends.get(kind)
    if backend is None:
        forced = os.environ.get("SWITCHYARD_ATTENTION_BACKEND", "").lower()
        if kind == "cuda" and forced != "torch":
            backend = _triton_backend()
        if backend is None:
            backend = TorchAttentionBackend()
        _backends[kind] = backend
    return backend
