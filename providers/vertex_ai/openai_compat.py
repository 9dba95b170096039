"""Open and partner models that Vertex AI serves through its OpenAI-compatible Chat Completions
endpoint (Model as a Service: Llama, DeepSeek, Qwen, ...; ``vertex_ai/meta/llama-...`` deployments).

Reference: https://cloud.google.com/vertex-ai/generative-ai/docs/maas/call-open-model-apis and
https://cloud.google.com/vertex-ai/generative-ai/docs/partner-models/llama/use-llama:
``POST https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/
endpoints/openapi/chat/completions`` with OpenAI's Chat Completions body, ``model`` being the
publisher-qualified id (``meta/llama-3.3-70b-instruct-maas``), and Vertex's OAuth bearer token;
answers and SSE streams are OpenAI's. A deployment's model names its publisher (``vertex_ai/
<publisher>/<model>``, LiteLLM's spelling), which is how these are told from Google's own models
and Claude (``publishers/google`` and ``publishers/anthropic`` URLs).

The bytes pass through ``OpenAICompatProvider`` unchanged; the only differences are the URL and
the token, resolved (awaited: the token may need a refresh) before each request, and errors,
which come from Vertex's front in Google's shape (``providers.gemini.errors``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import httpx

from providers.contract import Operation, ProviderCall, ProviderResponse
from providers.errors import ProviderError
from providers.gemini import errors as google_errors
from providers.gemini.adapter import model_name
from providers.openai_compat.adapter import OpenAICompatProvider
from providers.redaction import call_scrubber
from providers.vertex_ai.auth import Token

# call -> (``{base}/v1/projects/{project}/locations/{location}``, the deployment's token)
SiteOf = Callable[[ProviderCall], Awaitable[tuple[str, Token]]]


def is_openai_compatible(upstream_model: str) -> bool:
    """Whether a ``vertex_ai/`` deployment's model is publisher-qualified (``meta/llama-...``)."""
    return "/" in model_name(upstream_model)


class VertexOpenAI(OpenAICompatProvider):
    """The OpenAI-format pass-through at Vertex's ``endpoints/openapi``, with Vertex's token."""

    capabilities: frozenset[Operation] = frozenset({"chat"})

    def __init__(self, client: httpx.AsyncClient | None, site: SiteOf) -> None:
        super().__init__(client)
        self._site = site

    async def _post(self, call: ProviderCall, operation: Operation, payload: bytes) -> ProviderResponse:
        return await super()._post(await self._resolved(call), operation, payload)

    async def _stream(self, call: ProviderCall, operation: Operation) -> AsyncIterator[bytes]:
        events = super()._stream(await self._resolved(call), operation)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # drops the upstream connection when our consumer stops early

    async def _resolved(self, call: ProviderCall) -> ProviderCall:
        site, token = await self._site(call)
        # As an OpenAI-compatible deployment would be configured: the base, and the bearer token.
        return dataclasses.replace(call, api_base=f"{site}/endpoints/openapi", api_key=token.value)

    def _error(
        self, call: ProviderCall, status: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> ProviderError:
        clean = call_scrubber(call.api_key, call.params, call.extra_headers)
        return google_errors.upstream_error(status, body, headers, clean)
