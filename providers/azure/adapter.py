"""Azure OpenAI: OpenAI's wire format at per-deployment URLs, bytes passed through untouched.

Reference: https://learn.microsoft.com/en-us/azure/ai-services/openai/reference.
``POST {api_base}/openai/deployments/{deployment}/chat/completions?api-version={api_version}``
(and ``/completions``, ``/embeddings``), with the OpenAI request and response bodies. ``model``
is ``azure/<deployment name>`` (LiteLLM's convention); ``api_base`` is the resource endpoint
(``https://<resource>.openai.azure.com``, a trailing ``/openai`` accepted), else
``AZURE_API_BASE``. ``api_version`` in the deployment's params (LiteLLM's name), else
``AZURE_API_VERSION``, else ``DEFAULT_API_VERSION``: 2024-10-21, the latest GA data-plane version
(it takes ``stream_options.include_usage``, which the gateway always sends on streams).
Credentials (key, Entra ID token, service principal): ``providers.azure.auth``; errors
(content filter included): ``providers.azure.errors``.

Everything else is ``OpenAICompatProvider``'s: only the URL, the headers and the error reading
differ.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import orjson

from providers.azure import auth
from providers.azure.auth import AzureAuthProvider
from providers.contract import Operation, ProviderCall
from providers.openai_compat.adapter import CAPABILITIES
from providers.openai_compat.typed import generate_stream_via_chat
from providers.schema import GenerationRequest, StreamEvent

DEFAULT_API_VERSION = "2024-10-21"
KEY_ENV = "AZURE_API_KEY"
BASE_ENV = "AZURE_API_BASE"
VERSION_ENV = "AZURE_API_VERSION"
_PATHS: dict[Operation, str] = {
    "chat": "chat/completions",
    "completions": "completions",
    "embeddings": "embeddings",
}


class AzureOpenAIProvider(AzureAuthProvider):
    """``Provider`` for Azure OpenAI deployments (chat, completions, embeddings)."""

    capabilities = CAPABILITIES
    key_env = KEY_ENV

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(client)
        self._azure_urls: dict[tuple[str, str, str, Operation], httpx.URL] = {}

    def _url(self, call: ProviderCall, operation: Operation = "chat") -> httpx.URL:
        base = auth.api_base(call, BASE_ENV, "azure")
        version = call.params.get("api_version") or os.environ.get(VERSION_ENV) or DEFAULT_API_VERSION
        key = (base, call.upstream_model, str(version), operation)
        url = self._azure_urls.get(key)
        if url is None:
            # Parsed once per deployment and version: URL parsing is a visible cost per request.
            root = base.removesuffix("/openai")
            deployment = quote(call.upstream_model, safe="")
            url = httpx.URL(
                f"{root}/openai/deployments/{deployment}/{_PATHS[operation]}"
                f"?api-version={quote(str(version), safe='')}"
            )
            self._azure_urls[key] = url
        return url

    def generate_stream(self, request: GenerationRequest, call: ProviderCall) -> AsyncIterator[StreamEvent]:
        return generate_stream_via_chat(_AnswerChunks(self), request, call)


class _AnswerChunks:
    """The raw stream as the typed path reads it: without Azure's opening chunk.

    Azure opens a stream with a chunk that has no choices, an empty ``id`` and ``model``, and only
    the prompt's filter results. The raw path passes it on (it is Azure's answer, byte for byte);
    the typed path would name the answer after it (an empty id), so it starts at the next chunk.
    """

    def __init__(self, provider: AzureOpenAIProvider) -> None:
        self._provider = provider

    async def chat_stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        events = self._provider.chat_stream(call)
        try:
            async for event in events:
                if b"prompt_filter_results" in event and _prompt_filter_only(event):
                    continue
                yield event
        finally:
            await events.aclose()


def _prompt_filter_only(event: bytes) -> bool:
    try:
        chunk = orjson.loads(event[event.find(b"{") : event.rfind(b"}") + 1])
    except orjson.JSONDecodeError:
        return False
    return isinstance(chunk, dict) and not chunk.get("choices") and not chunk.get("usage")
