"""Switchyard's local inference engine: paged KV cache, continuous batching, a real model."""

# First: it sets how OpenMP workers wait, which libgomp reads when torch loads.
from local_engine._openmp import DEFAULT_GOMP_SPINCOUNT
from local_engine.config import EngineConfig
from local_engine.engine.async_engine import AsyncEngine
from local_engine.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from local_engine.llm import LLM
from local_engine.sampling_params import SamplingParams

__all__ = [
    "DEFAULT_GOMP_SPINCOUNT",
    "LLM",
    "AsyncEngine",
    "CompletionOutput",
    "EngineConfig",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
]
