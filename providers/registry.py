"""Which adapter serves a deployment: the ``<provider>/`` prefix of its ``model`` -> an adapter.

Adapters that pull heavy dependencies (the local engine needs torch) are registered lazily by
import path, so a gateway that only proxies hosted providers never imports them. Each name also
says which operations its adapter serves (known without importing it), so the router can send an
operation only to deployments that serve it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

from providers.contract import DEFAULT_CAPABILITIES, ChatProvider, Operation, capabilities_of

# Every provider that speaks the OpenAI chat-completions wire format uses one adapter.
OPENAI_COMPATIBLE_PROVIDERS = (
    "openai",
    "openai_compatible",
    "hosted_vllm",
    "vllm",
    "groq",
    "together_ai",
    "mistral",
    "deepseek",
    "fireworks_ai",
    "deepinfra",
    "perplexity",
    "openrouter",
    "xai",
    "cerebras",
    "anyscale",
    "lm_studio",
    "nvidia_nim",
    "sambanova",
)

# Default API bases for providers whose config may omit ``api_base``.
DEFAULT_API_BASES: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "groq": "https://api.groq.com/openai/v1",
    "together_ai": "https://api.together.xyz/v1",
    "mistral": "https://api.mistral.ai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "fireworks_ai": "https://api.fireworks.ai/inference/v1",
    "deepinfra": "https://api.deepinfra.com/v1/openai",
    "perplexity": "https://api.perplexity.ai",
    "openrouter": "https://openrouter.ai/api/v1",
    "xai": "https://api.x.ai/v1",
    "cerebras": "https://api.cerebras.ai/v1",
    "sambanova": "https://api.sambanova.ai/v1",
    "anthropic": "https://api.anthropic.com",
}


ProviderFactory = Callable[[], ChatProvider]
ProviderWrapper = Callable[[str, ChatProvider], ChatProvider]


class ProviderRegistry:
    """Maps a provider prefix ("openai", "groq", "local", ...) to its adapter instance.

    Factories run once, on first use. ``register_lazy`` takes ``"package.module:attribute"``
    (a class or zero-argument factory) so heavy adapters are imported only when configured.
    """

    def __init__(self) -> None:
        self._factories: dict[str, ProviderFactory] = {}
        self._instances: dict[str, ChatProvider] = {}
        self._capabilities: dict[str, frozenset[Operation]] = {}
        self._wrap: ProviderWrapper | None = None

    def wrap_with(self, wrapper: ProviderWrapper) -> None:
        """Hand out ``wrapper(name, adapter)`` instead of each adapter from now on (the gateway's
        tracing; a seam so that this package never imports the gateway)."""
        self._wrap = wrapper
        self._instances = {name: wrapper(name, p) for name, p in self._instances.items()}

    def register(
        self, name: str, factory: ProviderFactory, capabilities: Iterable[Operation] = DEFAULT_CAPABILITIES
    ) -> None:
        self._factories[name] = factory
        self._capabilities[name] = frozenset(capabilities)
        self._instances.pop(name, None)

    def register_instance(self, name: str, provider: ChatProvider) -> None:
        self._factories[name] = lambda: provider
        self._capabilities[name] = capabilities_of(provider)
        self._instances[name] = self._wrap(name, provider) if self._wrap is not None else provider

    def register_lazy(
        self, name: str, target: str, capabilities: Iterable[Operation] = DEFAULT_CAPABILITIES
    ) -> None:
        def factory() -> ChatProvider:
            module_name, _, attr = target.partition(":")
            module = importlib.import_module(module_name)
            return getattr(module, attr)()

        self.register(name, factory, capabilities)

    def capabilities(self, name: str) -> frozenset[Operation]:
        """The operations ``name``'s adapter serves (known without building it); none if unknown."""
        return self._capabilities.get(name, frozenset())

    def names(self) -> list[str]:
        return sorted(self._factories)

    def has(self, name: str) -> bool:
        return name in self._factories

    def get(self, name: str) -> ChatProvider:
        """The adapter for ``name``; raises ``KeyError`` for an unknown provider."""
        provider = self._instances.get(name)
        if provider is None:
            provider = self._factories[name]()
            if self._wrap is not None:
                provider = self._wrap(name, provider)
            self._instances[name] = provider
        return provider

    def built(self, name: str) -> ChatProvider | None:
        """``name``'s adapter if something has asked for it already (never builds one)."""
        return self._instances.get(name)

    async def aclose(self) -> None:
        """Close adapters that hold resources (those with an ``aclose`` method)."""
        for provider in list(self._instances.values()):
            closer = getattr(provider, "aclose", None)
            if closer is not None:
                await closer()
        self._instances.clear()

    @classmethod
    def default(cls) -> ProviderRegistry:
        """Every built-in provider: the OpenAI-compatible family, and ``local`` (lazy, needs torch)."""
        registry = cls()
        shared: list[ChatProvider] = []

        def openai_compat() -> ChatProvider:
            # One adapter instance serves every OpenAI-compatible prefix.
            if not shared:
                from providers.openai_compat import OpenAICompatProvider

                shared.append(OpenAICompatProvider())
            return shared[0]

        from providers.openai_compat.adapter import CAPABILITIES as OPENAI_CAPABILITIES

        for name in OPENAI_COMPATIBLE_PROVIDERS:
            registry.register(name, openai_compat, OPENAI_CAPABILITIES)
        # The engine team's in-process adapter; imported only when a `local/` model is configured
        # (its capabilities are spelled here so that listing them does not import torch).
        registry.register_lazy("local", "providers.local:LocalProvider", ("chat", "completions"))
        registry.register_lazy("anthropic", "providers.anthropic:AnthropicProvider", ("chat",))
        registry.register_lazy("bedrock", "providers.bedrock:BedrockProvider", ("chat", "embeddings"))
        registry.register_lazy("cohere", "providers.cohere:CohereProvider", ("chat", "embeddings"))
        registry.register_lazy("cohere_chat", "providers.cohere:CohereProvider", ("chat", "embeddings"))
        registry.register_lazy("azure", "providers.azure:AzureOpenAIProvider", OPENAI_CAPABILITIES)
        registry.register_lazy("azure_ai", "providers.azure_ai:AzureAIProvider", ("chat", "embeddings"))
        registry.register_lazy("ollama", "providers.ollama:OllamaProvider", ("chat", "embeddings"))
        registry.register_lazy("ollama_chat", "providers.ollama:OllamaProvider", ("chat", "embeddings"))
        registry.register_lazy("gemini", "providers.gemini:GeminiProvider", ("chat", "embeddings"))
        registry.register_lazy("vertex_ai", "providers.vertex_ai:VertexAIProvider", ("chat", "embeddings"))
        return registry


def split_provider(model: str) -> tuple[str, str]:
    """``"groq/llama-3.1-8b"`` -> ``("groq", "llama-3.1-8b")``; no prefix means ``openai``."""
    provider, sep, upstream = model.partition("/")
    if not sep:
        return "openai", model
    return provider, upstream
