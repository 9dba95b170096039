"""The raw OpenAI path for adapters whose upstream speaks its own format (Anthropic, Gemini, ...).

The chat and embeddings doors send an OpenAI body (``ProviderCall.body``) and expect OpenAI
bytes back. A native adapter only translates between ``providers.schema`` and its provider's
wire format (``generate``/``generate_stream``, ``embed``); ``NativeProvider`` supplies
``chat``/``chat_stream`` and ``embeddings`` on top: the body is read with
``providers.formats.openai_chat`` (or ``openai_embeddings``) and the answer written with the same
codec. The inverse of ``providers.openai_compat.typed`` (the typed path over a raw adapter).

Parameters: an OpenAI field with no slot in ``GenerationRequest`` lands in ``extra``. An adapter
names the ones it translates in ``accepted_extra``; any other is refused with a 400 naming it,
as OpenAI refuses an unknown parameter, or dropped when the deployment sets ``drop_params``
(LiteLLM's setting). Fields every adapter can honour without sending them (``n`` of 1,
``stream_options``, which the gateway handles itself) are always accepted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from providers.contract import Operation, ProviderCall, ProviderResponse
from providers.errors import ProviderError
from providers.formats import openai_chat, openai_embeddings
from providers.formats.errors import FormatError
from providers.schema import (
    EmbeddingRequest,
    EmbeddingResponse,
    GenerationRequest,
    GenerationResponse,
    StreamEvent,
)

# Handled by the gateway or meaningless to forward: never an error for any adapter.
_ALWAYS_ACCEPTED = frozenset({"stream_options", "n", "metadata", "store"})


class NativeProvider:
    """Base of an adapter with its own wire format: subclasses implement the typed methods."""

    capabilities: frozenset[Operation] = frozenset({"chat"})
    # OpenAI Chat fields (beyond GenerationRequest's slots) this adapter translates from ``extra``.
    accepted_extra: frozenset[str] = frozenset()

    async def generate(self, request: GenerationRequest, call: ProviderCall) -> GenerationResponse:
        raise NotImplementedError

    def generate_stream(self, request: GenerationRequest, call: ProviderCall) -> AsyncIterator[StreamEvent]:
        raise NotImplementedError

    async def embed(self, request: EmbeddingRequest, call: ProviderCall) -> EmbeddingResponse:
        """Embeddings in the provider's format (adapters with "embeddings" in ``capabilities``)."""
        raise NotImplementedError

    async def embeddings(self, call: ProviderCall) -> ProviderResponse:
        try:
            request = openai_embeddings.parse_request(call.body)
        except FormatError as exc:
            raise ProviderError(400, exc.message, "invalid_request_error", param=exc.param) from None
        response = await self.embed(request, call)
        body = orjson.dumps(openai_embeddings.build_response(response, request.encoding_format))
        return ProviderResponse(200, body, response.usage)

    async def chat(self, call: ProviderCall) -> ProviderResponse:
        request = self.read_openai_body(call)
        response = await self.generate(request, call)
        body = orjson.dumps(openai_chat.build_response(response))
        return ProviderResponse(200, body, response.usage)

    async def chat_stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        request = self.read_openai_body(call)
        # Usage is always written: the gateway accounts from it and strips it if not asked for.
        writer = openai_chat.StreamWriter(include_usage=True)
        events = self.generate_stream(request, call)
        try:
            async for event in events:
                data = writer.write(event)
                if data:
                    yield data
        finally:
            closer = getattr(events, "aclose", None)
            if closer is not None:
                await closer()

    def read_openai_body(self, call: ProviderCall) -> GenerationRequest:
        """The chat door's OpenAI body as a ``GenerationRequest``; a 400 if it cannot be sent."""
        try:
            request = openai_chat.parse_request(call.body)
        except FormatError as exc:
            raise ProviderError(400, exc.message, "invalid_request_error", param=exc.param) from None
        n = call.body.get("n")
        if n is not None and n != 1:
            raise unsupported_parameter("n", "only n=1")
        self.check_params(request, call)
        return request

    def check_params(self, request: GenerationRequest, call: ProviderCall) -> None:
        """Refuse (or with ``drop_params`` drop) the ``extra`` fields this adapter cannot send.

        Only fields that came from an OpenAI Chat body are checked: ``extra`` from another
        format (Anthropic Messages, Responses) is that format's business, never sent here.
        """
        if request.source_format != openai_chat.FORMAT or not request.extra:
            return
        unknown = [k for k in request.extra if k not in self.accepted_extra and k not in _ALWAYS_ACCEPTED]
        if not unknown:
            return
        if call.params.get("drop_params"):
            for key in unknown:
                del request.extra[key]
            return
        raise unsupported_parameter(unknown[0], "this provider has no such parameter")


def unsupported_parameter(param: str, why: str) -> ProviderError:
    return ProviderError(
        400,
        f"Unsupported parameter '{param}' for this model's provider ({why}); "
        "remove it, or set drop_params: true to drop it",
        "invalid_request_error",
        "unsupported_parameter",
        param,
    )
