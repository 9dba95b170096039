"""``NativeProvider``: the raw OpenAI chat and embeddings paths over an adapter's typed methods.

The adapter here is a minimal subclass answering from fixed events (a stand-in upstream), so what
is checked is the base class: OpenAI bodies read, answers and streams written in OpenAI's format,
parameters it cannot send refused with a 400 naming them (or dropped with ``drop_params``).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator

import orjson
import pytest

from providers.contract import ProviderCall
from providers.errors import ProviderError
from providers.native import NativeProvider, unsupported_parameter
from providers.schema import (
    EmbeddingRequest,
    EmbeddingResponse,
    Finish,
    GenerationRequest,
    GenerationResponse,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    UsageReport,
)
from providers.usage import Usage


class EchoProvider(NativeProvider):
    capabilities = frozenset({"chat", "embeddings"})
    accepted_extra = frozenset({"top_k"})

    def __init__(self) -> None:
        self.seen: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest, call: ProviderCall) -> GenerationResponse:
        self.seen.append(request)
        return GenerationResponse(
            id="r1",
            model=call.upstream_model,
            created=7,
            text=request.messages[-1].text(),
            tool_calls=[ToolCall("call_1", "lookup", '{"q": 1}')],
            finish_reason="tool_calls",
            usage=Usage(3, 4),
        )

    async def generate_stream(
        self, request: GenerationRequest, call: ProviderCall
    ) -> AsyncIterator[StreamEvent]:
        self.seen.append(request)
        for event in (
            StreamStart("r2", call.upstream_model, 8),
            TextDelta("hi"),
            ToolCallDelta(0, '{"q"', id="call_1", name="lookup"),
            ToolCallDelta(0, ": 1}"),
            Finish("tool_calls"),
            UsageReport(Usage(5, 6)),
        ):
            yield event

    async def embed(self, request: EmbeddingRequest, call: ProviderCall) -> EmbeddingResponse:
        return EmbeddingResponse(
            model=call.upstream_model, vectors=[[0.5, -1.0]] * len(request.inputs), usage=Usage(2)
        )


def _call(body: dict, **params: object) -> ProviderCall:
    return ProviderCall(upstream_model="up-model", body=body, params=params)


async def test_chat_answer_is_openai_json_with_usage() -> None:
    provider = EchoProvider()
    body = {"model": "m", "messages": [{"role": "user", "content": "ping"}], "top_k": 3}
    response = await provider.chat(_call(body))
    answer = orjson.loads(response.body)
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "ping"
    assert answer["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "lookup",
        "arguments": '{"q": 1}',
    }
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert answer["usage"]["prompt_tokens"] == 3 and answer["usage"]["completion_tokens"] == 4
    assert response.usage == Usage(3, 4)
    assert provider.seen[0].extra == {"top_k": 3}


async def test_stream_is_openai_chunks_with_usage_and_no_done() -> None:
    provider = EchoProvider()
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    events = [e async for e in provider.chat_stream(_call(body))]
    assert all(e.startswith(b"data: {") and e.endswith(b"\n\n") for e in events)
    chunks = [orjson.loads(e[6:]) for e in events]
    assert chunks[0]["id"] == "r2" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    args = "".join(
        tc["function"]["arguments"]
        for c in chunks
        for choice in c["choices"]
        for tc in choice["delta"].get("tool_calls", [])
    )
    assert args == '{"q": 1}'
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize("field", ["logit_bias", "n"])
async def test_parameter_the_provider_lacks_is_a_400_naming_it(field: str) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        field: {"1": 2} if field != "n" else 2,
    }
    with pytest.raises(ProviderError) as info:
        await EchoProvider().chat(_call(body))
    assert info.value.status_code == 400
    assert info.value.param == field and field in info.value.message


def test_adapters_refuse_a_parameter_with_one_error() -> None:
    # The public helper every native adapter raises for a parameter its provider cannot take.
    err = unsupported_parameter("seed", "Bedrock Converse has no seed")
    assert (err.status_code, err.code, err.param) == (400, "unsupported_parameter", "seed")
    assert "Bedrock Converse has no seed" in err.message and "drop_params: true" in err.message


async def test_drop_params_drops_what_the_provider_lacks() -> None:
    provider = EchoProvider()
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 2}, "top_k": 1}
    await provider.chat(_call(body, drop_params=True))
    assert provider.seen[0].extra == {"top_k": 1}


async def test_malformed_body_is_a_400() -> None:
    with pytest.raises(ProviderError) as info:
        await EchoProvider().chat(_call({"model": "m", "messages": [{"role": "user", "content": 5}]}))
    assert info.value.status_code == 400


async def test_embeddings_float_and_base64() -> None:
    provider = EchoProvider()
    plain = orjson.loads((await provider.embeddings(_call({"model": "m", "input": ["a", "b"]}))).body)
    assert [d["embedding"] for d in plain["data"]] == [[0.5, -1.0], [0.5, -1.0]]
    assert plain["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    packed = orjson.loads(
        (await provider.embeddings(_call({"model": "m", "input": "a", "encoding_format": "base64"}))).body
    )
    assert struct.unpack("<2f", base64.b64decode(packed["data"][0]["embedding"])) == (0.5, -1.0)
