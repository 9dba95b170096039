"""The typed path (``generate``) for any adapter whose raw path speaks OpenAI Chat.

The request is built with ``providers.formats.openai_chat`` and sent through the adapter's own
raw ``chat``/``chat_stream``; the answer is parsed back with the same codec. So the OpenAI-format
upstreams and the local engine serve Anthropic Messages and Responses clients with one
translation each way, and no second HTTP client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from providers.contract import ChatProvider, ProviderCall
from providers.errors import ProviderError
from providers.formats import openai_chat
from providers.formats.errors import FormatError, StreamError
from providers.schema import GenerationRequest, GenerationResponse, StreamEvent


def openai_call(request: GenerationRequest, call: ProviderCall, *, stream: bool) -> ProviderCall:
    """``call`` carrying the OpenAI Chat body built from ``request`` (the adapter sets ``model``)."""
    body = openai_chat.build_request(request)
    body["stream"] = stream
    return ProviderCall(
        upstream_model=call.upstream_model,
        body=body,
        api_base=call.api_base,
        api_key=call.api_key,
        timeout=call.timeout,
        stream_timeout=call.stream_timeout,
        request_id=call.request_id,
        extra_headers=call.extra_headers,
        params=call.params,
        on_phase=call.on_phase,
    )


async def generate_via_chat(
    provider: ChatProvider, request: GenerationRequest, call: ProviderCall
) -> GenerationResponse:
    response = await provider.chat(openai_call(request, call, stream=False))
    try:
        parsed = openai_chat.parse_response(orjson.loads(response.body))
    except (FormatError, orjson.JSONDecodeError) as exc:
        raise _malformed(f"upstream answer does not parse: {exc}") from None
    if parsed.usage is None:
        parsed.usage = response.usage
    return parsed


async def generate_stream_via_chat(
    provider: ChatProvider, request: GenerationRequest, call: ProviderCall
) -> AsyncIterator[StreamEvent]:
    parser = openai_chat.StreamParser()
    events = provider.chat_stream(openai_call(request, call, stream=True))
    try:
        async for event in events:
            # One complete ``data: {...}`` event each (comments and [DONE] are never yielded).
            data = event[event.find(b"{") : event.rfind(b"}") + 1]
            try:
                parsed = parser.feed_data(data)
            except StreamError as exc:
                raise ProviderError(502, exc.message, exc.type or "api_error", exc.code) from None
            except FormatError as exc:
                raise _malformed(f"upstream stream does not parse: {exc}") from None
            for item in parsed:
                yield item
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()


def _malformed(message: str) -> ProviderError:
    return ProviderError(502, message, "api_error", "upstream_malformed_response")
