"""The provider registry: prefixes map to adapters; heavy adapters stay unimported until used."""

from __future__ import annotations

import pytest

from providers.errors import ProviderError
from providers.registry import ProviderRegistry, split_provider


def test_registry_maps_prefixes_to_one_adapter() -> None:
    registry = ProviderRegistry.default()
    assert {"openai", "hosted_vllm", "groq", "together_ai", "mistral", "deepseek", "local"} <= set(
        registry.names()
    )
    assert registry.get("openai") is registry.get("groq")
    with pytest.raises(KeyError):
        registry.get("nope")


def test_split_provider_and_retryable_flags() -> None:
    assert split_provider("groq/llama-3.1-8b") == ("groq", "llama-3.1-8b")
    assert split_provider("together_ai/meta/llama") == ("together_ai", "meta/llama")
    assert split_provider("gpt-4o") == ("openai", "gpt-4o")
    assert ProviderError(429, "x").retryable and ProviderError(500, "x").retryable
    assert not ProviderError(400, "x").retryable and not ProviderError(401, "x").retryable
