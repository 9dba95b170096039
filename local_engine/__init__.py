"""Switchyard's local inference engine: paged KV cache, continuous batching, a real model."""

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
