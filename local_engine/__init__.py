"""Switchyard's local inference engine: paged KV cache, continuous batching, a real model."""

# First: it sets how OpenMP workers wait, which libgomp reads when torch loads.
from local_engine._openmp import OMP_WAIT_POLICY
from local_engine.config import EngineConfig
from local_engine.engine.async_engine import AsyncEngine
from local_engine.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from local_engine.llm import LLM
from local_engine.sampling_params import SamplingParams

__all__ = [
    "LLM",
    "OMP_WAIT_POLICY",
    "AsyncEngine",
    "CompletionOutput",
    "EngineConfig",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
]
