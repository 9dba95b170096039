"""Switchyard's local inference engine: paged KV cache, continuous batching, a real model.

The public names load on first use (PEP 562), so a process that needs only the torch-free parts
(the gateway reading prefix-cache summaries: ``local_engine.prefix_summary``, ``tokenizer``) does
not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# First: it sets how OpenMP workers wait, which libgomp reads when torch loads.
from local_engine._openmp import OMP_WAIT_POLICY

_HOMES = {
    "AsyncEngine": "local_engine.engine.async_engine",
    "CompletionOutput": "local_engine.engine.outputs",
    "EngineConfig": "local_engine.config",
    "LLM": "local_engine.llm",
    "RequestOutput": "local_engine.engine.outputs",
    "SamplingParams": "local_engine.sampling_params",
    "TokenLogprob": "local_engine.engine.outputs",
}

__all__ = ["OMP_WAIT_POLICY", *sorted(_HOMES)]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'local_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value
