"""The sampling a request gets for the fields it leaves unset: the model's own defaults, as vLLM does.

A HF model directory's ``generation_config.json`` (``temperature``, ``top_p``, ``top_k``, ``min_p``,
``repetition_penalty``, ``max_new_tokens``) or a GGUF file's ``general.sampling.*`` metadata (for
the bundled SmolLM2, its model card's recommendation) give them; a field neither gives keeps
OpenAI's neutral value. A request without ``max_tokens`` gets the model's ``max_new_tokens``, else
the engine's ``default_max_tokens``, never more than its prompt leaves of the context (the whole
context at temperature 1 is minutes of rambling on a CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from local_engine.models.default import DEFAULT_GGUF_FILENAME

logger = logging.getLogger(__name__)

# What each field is when neither the request nor the model sets it (OpenAI / vLLM semantics).
NEUTRAL: dict[str, float | int] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
}

# llama.cpp's GGUF sampling keys -> the generation_config names.
GGUF_SAMPLING_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.top_k": "top_k",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_repeat": "repetition_penalty",
}


def _valid(name: str, value: Any) -> bool:
    """Whether a model-supplied value is one ``SamplingParams`` accepts (a bad file must not break every
    request: its value is skipped with a warning instead)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if name == "top_k":
        return float(value).is_integer() and value >= -1
    if name == "top_p":
        return 0.0 < value <= 1.0
    if name == "min_p":
        return 0.0 <= value <= 1.0
    if name == "repetition_penalty":
        return value > 0
    return value >= 0  # temperature


# The bundled default model's card recommends this sampling (HuggingFaceTB/SmolLM2-135M-Instruct:
# ``temperature=0.2, top_p=0.9``); its GGUF file carries no sampling keys. At temperature 1 the
# 135M model rambles to the token limit on the README's first question.
_MODEL_CARD_SAMPLING = {DEFAULT_GGUF_FILENAME: {"temperature": 0.2, "top_p": 0.9}}


def gguf_sampling(path: Path, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The generation_config-style sampling a GGUF file recommends: its ``general.sampling.*`` keys,
    over its model card's where we know it (the bundled default)."""
    card = dict(_MODEL_CARD_SAMPLING.get(path.name, {}))
    return card | {name: metadata[key] for key, name in GGUF_SAMPLING_KEYS.items() if key in metadata}


class _Request(Protocol):
    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    repetition_penalty: float | None


@dataclass(frozen=True, slots=True)
class GenerationDefaults:
    """``sampling``: the fields the model sets; ``max_tokens``: the completion budget when a request
    names none (``None``: up to the context length)."""

    sampling: dict[str, float | int] = field(default_factory=dict)
    max_tokens: int | None = None

    @classmethod
    def from_generation_config(
        cls, generation_config: Mapping[str, Any], default_max_tokens: int | None
    ) -> GenerationDefaults:
        sampling: dict[str, float | int] = {}
        for name in NEUTRAL:
            value = generation_config.get(name)
            if value is None:
                continue
            if not _valid(name, value):
                logger.warning("ignoring the model's default %s=%r: not a valid value", name, value)
                continue
            sampling[name] = int(value) if name == "top_k" else float(value)
        max_new = generation_config.get("max_new_tokens")
        max_tokens = default_max_tokens
        if isinstance(max_new, int) and not isinstance(max_new, bool) and max_new > 0:
            max_tokens = max_new
        return cls(sampling, max_tokens)

    def sampling_for(self, req: _Request) -> dict[str, float | int]:
        """Each sampling field: the request's value, else the model's default, else the neutral one."""
        resolved: dict[str, float | int] = {}
        for name, neutral in NEUTRAL.items():
            value = getattr(req, name)
            resolved[name] = value if value is not None else self.sampling.get(name, neutral)
        return resolved

    def max_tokens_for(self, prompt_len: int, max_model_len: int) -> int | None:
        """The completion budget of a request that names none (at least 1: a prompt that fills the
        context is then refused by the length check, not by this)."""
        if self.max_tokens is None:
            return None
        return max(1, min(self.max_tokens, max_model_len - prompt_len))
