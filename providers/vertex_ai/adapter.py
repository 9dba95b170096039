"""Models on Vertex AI: Google's (the Gemini API's body at Vertex URLs, with OAuth), Anthropic's
Claude (``claude-*``: the Messages API body, ``providers.vertex_ai.claude``), and open models behind
Vertex's OpenAI-compatible endpoint (``<publisher>/<model>``: ``providers.vertex_ai.openai_compat``).

``POST https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/
publishers/google/models/{model}:generateContent`` (``:streamGenerateContent?alt=sse``; the
``global`` location is served by ``aiplatform.googleapis.com``), and ``:predict`` for the text
embedding models. The request and answer translation is the Gemini adapter's
(``providers.gemini``); only the URL, the auth and the embeddings API differ.

Params (LiteLLM's names): ``vertex_project`` (else the credentials' own project, else
``VERTEXAI_PROJECT`` / ``GOOGLE_CLOUD_PROJECT``), ``vertex_location`` (else ``VERTEXAI_LOCATION``,
else us-central1), ``vertex_credentials`` (a service-account key: path, JSON text or mapping; else
application default credentials; see ``providers.vertex_ai.auth``). ``api_base`` replaces
``https://{location}-aiplatform.googleapis.com`` (a private endpoint, or a test server).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import orjson

from providers.contract import ProviderCall, ProviderResponse
from providers.errors import ProviderError
from providers.formats.errors import FormatError
from providers.gemini.adapter import Endpoint, GoogleGenAIProvider, gather_limited, model_name
from providers.gemini.errors import malformed
from providers.redaction import call_scrubber
from providers.schema import (
    EmbeddingRequest,
    EmbeddingResponse,
    GenerationRequest,
    GenerationResponse,
    StreamEvent,
)
from providers.usage import Usage
from providers.vertex_ai import embed
from providers.vertex_ai.auth import Token, TokenCache
from providers.vertex_ai.claude import VertexClaude, is_claude
from providers.vertex_ai.openai_compat import VertexOpenAI, is_openai_compatible

DEFAULT_LOCATION = "us-central1"
PROJECT_ENVS = ("VERTEXAI_PROJECT", "GOOGLE_CLOUD_PROJECT")
# A location names a host: only what a region id can hold (us-central1, europe-west4, global).
_LOCATION = re.compile(r"[a-z0-9-]+")


class VertexAIProvider(GoogleGenAIProvider):
    """``Provider`` for models on Vertex AI (Google's, Claude, open models by publisher);
    ``client`` defaults to the shared pool."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(client)
        self._tokens = TokenCache()
        self._claude = VertexClaude(client, self.endpoint)
        self._openai = VertexOpenAI(client, self.site)

    # ---- the model's family picks the API: Claude's, OpenAI's, else Gemini's

    def check_params(self, request: GenerationRequest, call: ProviderCall) -> None:
        if is_claude(call.upstream_model):
            self._claude.check_params(request, call)  # Anthropic's parameters, not Gemini's
        else:
            super().check_params(request, call)

    async def chat(self, call: ProviderCall) -> ProviderResponse:
        if is_openai_compatible(call.upstream_model):
            return await self._openai.chat(call)  # the caller's bytes, passed through
        return await super().chat(call)

    def chat_stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        if is_openai_compatible(call.upstream_model):
            return self._openai.chat_stream(call)
        return super().chat_stream(call)

    async def generate(self, request: GenerationRequest, call: ProviderCall) -> GenerationResponse:
        if is_claude(call.upstream_model):
            return await self._claude.generate(request, call)
        if is_openai_compatible(call.upstream_model):
            return await self._openai.generate(request, call)
        return await super().generate(request, call)

    def generate_stream(self, request: GenerationRequest, call: ProviderCall) -> AsyncIterator[StreamEvent]:
        if is_claude(call.upstream_model):
            return self._claude.generate_stream(request, call)
        if is_openai_compatible(call.upstream_model):
            return self._openai.generate_stream(request, call)
        return super().generate_stream(request, call)

    async def endpoint(self, call: ProviderCall, method: str, publisher: str = "google") -> Endpoint:
        """``method`` on the call's model from ``publisher`` (``google``, or ``anthropic`` for
        Claude), with this deployment's project, location and bearer token."""
        site, token = await self.site(call)
        # "@" stays as it is: partner models are versioned as claude-sonnet-4@20250514.
        model = quote(model_name(call.upstream_model), safe="@")
        url = f"{site}/publishers/{publisher}/models/{model}:{method}"
        return Endpoint(url, {"authorization": f"Bearer {token.value}"}, token.value)

    async def site(self, call: ProviderCall) -> tuple[str, Token]:
        """``{base}/v1/projects/{project}/locations/{location}`` for this deployment, and its token."""
        params = call.params
        clean = call_scrubber(None, params, call.extra_headers)
        token = await self._tokens.token(params.get("vertex_credentials"), clean)
        project = (
            params.get("vertex_project")
            or token.project
            or next((os.environ[n] for n in PROJECT_ENVS if os.environ.get(n)), None)
        )
        if not project:
            raise ProviderError(
                400,
                "Vertex AI needs a project: set vertex_project on the deployment (or VERTEXAI_PROJECT)",
                "invalid_request_error",
                "vertex_project_missing",
                "vertex_project",
            )
        location = str(
            params.get("vertex_location") or os.environ.get("VERTEXAI_LOCATION") or DEFAULT_LOCATION
        )
        if not _LOCATION.fullmatch(location):
            raise ProviderError(
                400,
                f"vertex_location {location!r} is not a location id",
                "invalid_request_error",
                "invalid_location",
                "vertex_location",
            )
        host = (
            "aiplatform.googleapis.com" if location == "global" else f"{location}-aiplatform.googleapis.com"
        )
        base = (call.api_base or f"https://{host}").rstrip("/")
        return f"{base}/v1/projects/{quote(str(project), safe='')}/locations/{location}", token

    async def embed(self, request: EmbeddingRequest, call: ProviderCall) -> EmbeddingResponse:
        try:
            batches = embed.build_batches(request, model_name(call.upstream_model))
        except FormatError as exc:
            raise ProviderError(400, exc.message, "invalid_request_error", param=exc.param) from None

        async def one(body: dict) -> tuple[list[list[float]], int]:
            answer = await self.post(call, await self.upstream_request(call, "predict", orjson.dumps(body)))
            try:
                return embed.parse_batch(answer, len(body["instances"]))
            except FormatError as exc:
                raise malformed(f"upstream answer does not parse: {exc.message}") from None

        results = await gather_limited([one(b) for b in batches])
        vectors = [v for batch, _ in results for v in batch]
        return EmbeddingResponse(call.upstream_model, vectors, Usage(sum(t for _, t in results)))
