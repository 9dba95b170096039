"""Switchyard's local inference engine: paged KV cache, continuous batching, a real model."""

import os

# Spinning OpenMP workers make every torch op 10-20x slower on a CPU shared with other busy processes
# (measured: 7 vs 133 tok/s). libgomp reads this when torch loads, so it only takes effect when this
# package is imported before torch; export it yourself otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from local_engine.config import EngineConfig
from local_engine.engine.async_engine import AsyncEngine
from local_engine.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from local_engine.llm import LLM
from local_engine.sampling_params import SamplingParams

__all__ = [
    "LLM",
    "AsyncEngine",
    "CompletionOutput",
    "EngineConfig",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
]
