"""The provider adapter interface: what the router calls to reach an upstream model.

An adapter turns one ``ProviderCall`` (an OpenAI-format chat request plus the deployment's
connection settings) into either a complete ``ProviderResponse`` or a stream of OpenAI-format
SSE events. Every failure is raised as a ``ProviderError`` whose flags tell the router what to
do next (retry, fall back to a bigger context window, fall back on a content-policy refusal).

``ProviderRegistry`` maps the ``<provider>/`` prefix of a deployment's ``model`` to an adapter.
Adapters that pull heavy dependencies (the local engine needs torch) are registered lazily by
import path, so a gateway that only proxies hosted providers never imports them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from providers.contract import ChatProvider, ProviderCall, ProviderResponse
from providers.usage import Usage

__all__ = [
    "ChatProvider",
    "ContentPolicyError",
    "ContextWindowExceededError",
    "ProviderCall",
    "ProviderError",
    "ProviderRegistry",
    "ProviderResponse",
    "ProviderTimeoutError",
    "ProviderUnreachableError",
    "UsageTap",
    "parse_usage",
]


# How much of an upstream's error text is passed on. Scrubbing looks at a much larger window
# first, so cutting the scrubbed text cannot leave the start of a secret at its end.
_MAX_MESSAGE_CHARS = 2000
_MAX_TEXT_BODY_CHARS = 500
_MAX_FIELD_CHARS = 200
_SCRUB_WINDOW = 1 << 16

_CONTEXT_WINDOW_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "context length",
    "too many tokens",
    "prompt is too long",
    "input is too long",
)
_CONTENT_POLICY_MARKERS = (
    "content_filter",
    "content_policy",
    "content management policy",
    "safety system",
    "flagged",
)


class ProviderError(Exception):
    """An upstream call failed; the fields become the client's OpenAI-shaped error.

    ``retryable`` is true for rate limits (429), upstream 5xx, timeouts and connection errors:
    the router may try the same or another deployment. ``context_window_exceeded`` and
    ``content_policy_violation`` drive ``context_window_fallbacks`` / ``content_policy_fallbacks``.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        type: str = "api_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status_code in (408, 429) or self.status_code >= 500

    @property
    def context_window_exceeded(self) -> bool:
        if self.status_code != 400:
            return False
        text = f"{self.code or ''} {self.message}".lower()
        return any(m in text for m in _CONTEXT_WINDOW_MARKERS)

    @property
    def content_policy_violation(self) -> bool:
        if self.status_code != 400:
            return False
        text = f"{self.code or ''} {self.type} {self.message}".lower()
        return any(m in text for m in _CONTENT_POLICY_MARKERS)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status_code}, {self.message!r}, code={self.code!r})"

    @classmethod
    def from_upstream(
        cls,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        clean: Callable[[str], str] | None = None,
    ) -> ProviderError:
        """Build the error from an upstream error response, keeping its status and message.

        ``clean`` scrubs each text field (an upstream may echo the credentials it was sent); it
        runs before the fields are cut to length, so a cut never leaves part of a secret behind.
        """
        message, type_, code, param = f"upstream returned HTTP {status}", "api_error", None, None
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        err = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            type_ = str(err.get("type") or type_)
            code = None if err.get("code") is None else str(err.get("code"))
            param = None if err.get("param") is None else str(err.get("param"))
        elif isinstance(err, str):
            message = err
        elif isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            message = parsed["message"]
        elif body and parsed is None:
            message = body[:_SCRUB_WINDOW].decode("utf-8", "replace")
        message = _bounded(message, clean, _MAX_MESSAGE_CHARS if parsed is not None else _MAX_TEXT_BODY_CHARS)
        type_ = _bounded(type_, clean, _MAX_FIELD_CHARS)
        code = None if code is None else _bounded(code, clean, _MAX_FIELD_CHARS)
        param = None if param is None else _bounded(param, clean, _MAX_FIELD_CHARS)
        retry_after = _retry_after(headers)
        klass: type[ProviderError] = cls
        probe = ProviderError(status, message, type_, code, param)
        if probe.context_window_exceeded:
            klass = ContextWindowExceededError
        elif probe.content_policy_violation:
            klass = ContentPolicyError
        return klass(status, message, type_, code, param, retry_after)


def _bounded(text: str, clean: Callable[[str], str] | None, limit: int) -> str:
    """``text`` scrubbed, then cut to ``limit`` characters (an upstream's text is not unbounded)."""
    if clean is not None:
        text = clean(text[:_SCRUB_WINDOW])
    return text[:limit]


class ProviderTimeoutError(ProviderError):
    """The upstream did not answer in time (408 by default, 504 for a gateway-level timeout)."""

    def __init__(self, message: str = "upstream request timed out", status_code: int = 408) -> None:
        super().__init__(status_code, message, "timeout", "timeout")

    @property
    def retryable(self) -> bool:
        return True


class ProviderUnreachableError(ProviderError):
    """The upstream could not be connected to (502)."""

    def __init__(self, message: str = "upstream unreachable") -> None:
        super().__init__(502, message, "api_connection_error", "upstream_unreachable")

    @property
    def retryable(self) -> bool:
        return True


class ContextWindowExceededError(ProviderError):
    """The prompt did not fit the upstream model's context window."""

    @property
    def context_window_exceeded(self) -> bool:
        return True


class ContentPolicyError(ProviderError):
    """The upstream refused the request on content-policy grounds."""

    @property
    def content_policy_violation(self) -> bool:
        return True


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    for name in ("retry-after-ms", "retry-after"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        return seconds / 1000.0 if name == "retry-after-ms" else seconds
    return None


def parse_usage(obj: Any) -> Usage | None:
    """``Usage`` from an OpenAI ``usage`` object (or ``None`` when absent/malformed)."""
    if not isinstance(obj, dict):
        return None
    prompt = obj.get("prompt_tokens") or 0
    completion = obj.get("completion_tokens") or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


class UsageTap:
    """Watches SSE events go by and keeps the last usage seen, without parsing every chunk.

    Only events that contain a non-null ``"usage"`` object are parsed.
    """

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: Usage | None = None

    def inspect(self, event: bytes) -> bool:
        """Record usage carried by ``event``; return True if it is a usage-only chunk (no choices)."""
        if b'"usage":{' not in event and b'"usage": {' not in event:
            return False
        payload = event[event.find(b"{") : event.rfind(b"}") + 1]
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(obj, dict):
            return False
        usage = parse_usage(obj.get("usage"))
        if usage is not None:
            self.usage = usage
        return usage is not None and not obj.get("choices")


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
    "ollama_chat",
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
}


ProviderFactory = Callable[[], ChatProvider]


class ProviderRegistry:
    """Maps a provider prefix ("openai", "groq", "local", ...) to its adapter instance.

    Factories run once, on first use. ``register_lazy`` takes ``"package.module:attribute"``
    (a class or zero-argument factory) so heavy adapters are imported only when configured.
    """

    def __init__(self) -> None:
        self._factories: dict[str, ProviderFactory] = {}
        self._instances: dict[str, ChatProvider] = {}

    def register(self, name: str, factory: ProviderFactory) -> None:
        self._factories[name] = factory
        self._instances.pop(name, None)

    def register_instance(self, name: str, provider: ChatProvider) -> None:
        self._factories[name] = lambda: provider
        self._instances[name] = provider

    def register_lazy(self, name: str, target: str) -> None:
        def factory() -> ChatProvider:
            module_name, _, attr = target.partition(":")
            module = importlib.import_module(module_name)
            return getattr(module, attr)()

        self.register(name, factory)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def has(self, name: str) -> bool:
        return name in self._factories

    def get(self, name: str) -> ChatProvider:
        """The adapter for ``name``; raises ``KeyError`` for an unknown provider."""
        provider = self._instances.get(name)
        if provider is None:
            provider = self._factories[name]()
            self._instances[name] = provider
        return provider

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

        for name in OPENAI_COMPATIBLE_PROVIDERS:
            registry.register(name, openai_compat)
        # The engine team's in-process adapter; imported only when a `local/` model is configured.
        registry.register_lazy("local", "providers.local:LocalProvider")
        return registry


def split_provider(model: str) -> tuple[str, str]:
    """``"groq/llama-3.1-8b"`` -> ``("groq", "llama-3.1-8b")``; no prefix means ``openai``."""
    provider, sep, upstream = model.partition("/")
    if not sep:
        return "openai", model
    return provider, upstream
