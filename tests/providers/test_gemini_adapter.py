"""The native Gemini and Vertex AI adapters: golden translations of the shared codec, and calls
against the fake Google server (``tests.support.fake_gemini``), Vertex with google-auth's real
service-account flow against the fake's token endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from providers.contract import ProviderCall
from providers.errors import ContentPolicyError, ContextWindowExceededError, ProviderError
from providers.formats import openai_chat
from providers.gemini import GeminiProvider
from providers.http import build_client
from providers.http11_transport import HTTP11Transport
from providers.schema import (
    EmbeddingRequest,
    Finish,
    ReasoningDelta,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)
from providers.usage import Usage
from providers.vertex_ai import VertexAIProvider
from tests.support.fake_gemini import CONTEXT_WINDOW_MESSAGE, Behavior, FakeGemini, fake_embedding
from tests.support.gateway_process import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "AIza-adapter-test-key-0123456789"
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
HI = [{"role": "user", "content": "hi"}]


# ---- against the fake ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=KEY) as s:
        yield s


@pytest.fixture
def fake(server: FakeGemini) -> FakeGemini:
    server.reset()
    return server


@pytest.fixture
async def provider() -> AsyncIterator[GeminiProvider]:
    client = build_client(HTTP11Transport())
    yield GeminiProvider(client)
    await client.aclose()


def call(fake: FakeGemini, body: dict[str, Any] | None = None, **kw: Any) -> ProviderCall:
    args: dict[str, Any] = {
        "upstream_model": "gemini-2.0-flash",
        "body": {"model": "pub", "messages": HI, **(body or {})},
        "api_base": fake.base_url,
        "api_key": KEY,
    }
    args.update(kw)
    return ProviderCall(**args)


async def test_chat_answers_in_openai_format_with_gemini_usage(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    fake.set_behavior(Behavior(cached_tokens=4, thoughts_tokens=3))
    resp = await provider.chat(call(fake, {"temperature": 0.5}))
    answer = orjson.loads(resp.body)
    assert answer["choices"][0]["message"]["content"] == Behavior().text
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["prompt_tokens"] == 21 and answer["usage"]["completion_tokens"] == 12
    assert resp.usage == Usage(21, 12, cache_read_tokens=4)
    sent = fake.last()
    assert sent.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY and "key=" not in sent.query
    assert sent.body == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {"temperature": 0.5},
    }


async def test_stream_events_in_order_with_whole_tool_calls(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    fake.set_behavior(
        Behavior(
            text="Checking the sky",
            fragment=5,
            thought="hmm",
            tool_calls=[("get_weather", {"city": "Paris"})],
        )
    )
    request = openai_chat.parse_request({"model": "p", "messages": HI, "tools": [WEATHER_TOOL]})
    events = [e async for e in provider.generate_stream(request, call(fake))]
    assert isinstance(events[0], StreamStart)
    assert [e.text for e in events if isinstance(e, ReasoningDelta)] == ["hmm"]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Checking the sky"
    (tool,) = [e for e in events if isinstance(e, ToolCallDelta)]
    assert (tool.index, tool.name, orjson.loads(tool.arguments)) == (0, "get_weather", {"city": "Paris"})
    assert tool.id and tool.id.startswith("call_")
    assert events[-2:] == [Finish("tool_calls"), UsageReport(Usage(21, 9))]
    assert fake.last().path.endswith(":streamGenerateContent") and fake.last().query == "alt=sse"


async def test_tool_result_turn_names_the_function_and_signature_goes_back(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    fake.set_behavior(
        Behavior(text="", tool_calls=[("get_weather", {"city": "Paris"})], thought_signature="c2ln")
    )
    first = orjson.loads((await provider.chat(call(fake, {"tools": [WEATHER_TOOL]}))).body)
    tool_call = first["choices"][0]["message"]["tool_calls"][0]
    fake.set_behavior(Behavior(text="Sunny."))
    follow_up = [
        *HI,
        first["choices"][0]["message"],
        {"role": "tool", "tool_call_id": tool_call["id"], "content": "sunny"},
    ]
    answer = orjson.loads(
        (await provider.chat(call(fake, {"messages": follow_up, "tools": [WEATHER_TOOL]}))).body
    )
    assert answer["choices"][0]["message"]["content"] == "Sunny."
    contents = fake.last().body["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"}
        ],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}}],
    }


async def test_requests_gemini_cannot_take_are_400s_before_any_call(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    orphan = [*HI, {"role": "tool", "tool_call_id": "nope", "content": "x"}]
    url_image = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
    ]
    for body, param in (
        ({"messages": orphan}, "messages.1.tool_call_id"),
        ({"messages": url_image}, "messages.0.content.0.image_url.url"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"tools": [WEATHER_TOOL], "parallel_tool_calls": False}, "parallel_tool_calls"),
    ):
        with pytest.raises(ProviderError) as exc:
            await provider.chat(call(fake, body))
        assert (exc.value.status_code, exc.value.param) == (400, param)
        if param.endswith("image_url.url"):
            assert "does not fetch image URLs" in exc.value.message
    assert fake.requests == []


async def test_errors_from_google_keep_status_and_message(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.enqueue(
        Behavior(status=429, message="Resource has been exhausted (e.g. check quota).", retry_delay="9s")
    )
    with pytest.raises(ProviderError) as limited:
        await provider.chat(call(fake))
    assert (limited.value.status_code, limited.value.retry_after) == (429, 9.0)
    assert limited.value.message == "Resource has been exhausted (e.g. check quota)."
    fake.enqueue(Behavior(status=400, message=CONTEXT_WINDOW_MESSAGE))
    with pytest.raises(ContextWindowExceededError):
        await provider.chat(call(fake))
    with pytest.raises(ProviderError) as missing:
        await provider.chat(call(fake, api_key=None))
    assert (missing.value.status_code, missing.value.type) == (403, "permission_error")
    with pytest.raises(ProviderError) as wrong:
        await provider.chat(call(fake, api_key="AIza-wrong-key-000000"))
    assert (wrong.value.status_code, wrong.value.type) == (401, "authentication_error")
    with pytest.raises(ProviderError) as unknown:
        await provider.chat(call(fake, upstream_model="gemini-9"))
    assert unknown.value.status_code == 404 and "models/gemini-9 is not found" in unknown.value.message


async def test_an_echoed_key_is_scrubbed(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.enqueue(Behavior(status=500, message=f"internal error for key {KEY}"))
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake))
    assert KEY not in exc.value.message and exc.value.retryable


async def test_a_blocked_prompt_is_a_content_policy_error(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.enqueue(Behavior(block_reason="SAFETY"), Behavior(block_reason="PROHIBITED_CONTENT"))
    with pytest.raises(ContentPolicyError) as plain:
        await provider.chat(call(fake))
    assert plain.value.status_code == 400 and "SAFETY" in plain.value.message
    request = openai_chat.parse_request({"model": "p", "messages": HI})
    with pytest.raises(ContentPolicyError):
        async for _ in provider.generate_stream(request, call(fake)):
            pass


async def test_a_stream_without_finish_reason_is_truncated(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    fake.enqueue(Behavior(end_before_finish=True))
    with pytest.raises(ProviderError) as exc:
        async for _ in provider.chat_stream(call(fake)):
            pass
    assert (exc.value.status_code, exc.value.code) == (502, "stream_truncated")


async def test_closing_the_stream_cancels_upstream(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.set_behavior(Behavior(text="x" * 600, fragment=3, chunk_delay_s=0.05))
    stream = provider.chat_stream(call(fake))
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    assert await asyncio.to_thread(fake.wait_for_cancel, 10.0)


async def test_unreachable_is_retryable(provider: GeminiProvider, fake: FakeGemini) -> None:
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake, api_base=f"http://127.0.0.1:{free_port()}"))
    assert exc.value.status_code == 502 and exc.value.retryable


async def test_embeddings_batch_by_100(provider: GeminiProvider, fake: FakeGemini) -> None:
    texts = [f"text {i}" for i in range(150)]
    resp = await provider.embed(
        EmbeddingRequest("p", texts, dimensions=4), call(fake, upstream_model="text-embedding-004")
    )
    assert resp.vectors == [fake_embedding(t, 4) for t in texts]
    assert [len(r.body["requests"]) for r in fake.requests] == [100, 50]
    assert fake.requests[0].path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    # usageMetadata.promptTokenCount of both batches: the fake counts a token a word.
    assert resp.usage.prompt_tokens == 2 * 150
    with pytest.raises(ProviderError) as exc:
        await provider.embed(EmbeddingRequest("p", [[1, 2]]), call(fake, upstream_model="text-embedding-004"))
    assert (exc.value.status_code, exc.value.param) == (400, "input")


async def test_embeddings_without_usage_metadata_are_charged_by_the_estimate(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    fake.embed_usage = False  # an answer without usageMetadata, as older models give
    texts = ["a" * 9, "b", "c" * 400]
    resp = await provider.embed(EmbeddingRequest("p", texts), call(fake, upstream_model="text-embedding-004"))
    # Four characters a token, rounded up, at least one a text: 3 + 1 + 100.
    assert resp.usage.prompt_tokens == 104


# ---- Vertex AI -----------------------------------------------------------------------------------


@pytest.fixture
async def vertex() -> AsyncIterator[VertexAIProvider]:
    client = build_client(HTTP11Transport())
    yield VertexAIProvider(client)
    await client.aclose()


def vertex_call(fake: FakeGemini, credentials: Any, **kw: Any) -> ProviderCall:
    params = {"vertex_credentials": credentials, "vertex_location": "europe-west4", **kw.pop("params", {})}
    args: dict[str, Any] = {
        "upstream_model": "gemini-2.5-flash",
        "body": {"model": "pub", "messages": HI},
        "api_base": fake.base_url,
        "params": params,
    }
    args.update(kw)
    return ProviderCall(**args)


async def test_vertex_signs_with_a_service_account_file_and_caches_the_token(
    vertex: VertexAIProvider, fake: FakeGemini, tmp_path: Path
) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(fake.service_account(project="sa-project")))
    for _ in range(2):
        answer = orjson.loads((await vertex.chat(vertex_call(fake, str(key_file)))).body)
        assert answer["choices"][0]["message"]["content"] == Behavior().text
    assert len(fake.token_requests) == 1  # the token is reused while valid
    claims = fake.token_requests[0]
    assert claims["iss"].startswith("gateway-") and claims["aud"] == "https://oauth2.googleapis.com/token"
    assert fake.last().path == (
        "/v1/projects/sa-project/locations/europe-west4/publishers/google/models/gemini-2.5-flash:generateContent"
    )
    assert fake.last().headers["authorization"].startswith("Bearer ya29.fake-")


async def test_vertex_refreshes_a_token_near_expiry_and_takes_json_text(
    vertex: VertexAIProvider, fake: FakeGemini
) -> None:
    fake.token_ttl_s = 60  # inside google-auth's refresh margin: stale as soon as it is issued
    try:
        info = json.dumps(fake.service_account())
        request = openai_chat.parse_request({"model": "p", "messages": HI})
        for _ in range(2):
            events = [
                e
                async for e in vertex.generate_stream(
                    request, vertex_call(fake, info, params={"vertex_project": "explicit"})
                )
            ]
            assert isinstance(events[-1], UsageReport)
        assert len(fake.token_requests) == 2
        assert "/projects/explicit/locations/europe-west4/" in fake.last().path
    finally:
        fake.token_ttl_s = 3600


async def test_vertex_refused_credentials_are_a_401(vertex: VertexAIProvider, fake: FakeGemini) -> None:
    info = fake.service_account()
    other = fake.service_account()
    info["private_key"] = other["private_key"]  # signed by a key that is not this account's
    with pytest.raises(ProviderError) as exc:
        await vertex.chat(vertex_call(fake, info))
    assert (exc.value.status_code, exc.value.type) == (401, "authentication_error")
    assert "BEGIN PRIVATE KEY" not in exc.value.message
    with pytest.raises(ProviderError) as missing:
        await vertex.chat(vertex_call(fake, "/nonexistent/key.json"))
    assert missing.value.status_code == 401 and "could not be loaded" in missing.value.message


async def test_vertex_embeddings_use_predict_with_token_counts(
    vertex: VertexAIProvider, fake: FakeGemini
) -> None:
    info = fake.service_account()
    texts = ["the sky is blue", "grass"]
    resp = await vertex.embed(
        EmbeddingRequest("p", texts), vertex_call(fake, info, upstream_model="text-embedding-005")
    )
    assert resp.vectors == [fake_embedding(t, 8) for t in texts]
    assert resp.usage == Usage(5)
    assert fake.last().path.endswith("/models/text-embedding-005:predict")
    assert fake.last().body == {"instances": [{"content": "the sky is blue"}, {"content": "grass"}]}
    single = await vertex.embed(
        EmbeddingRequest("p", texts), vertex_call(fake, info, upstream_model="gemini-embedding-001")
    )
    assert len(single.vectors) == 2 and len(fake.requests) == 3  # one instance per request


async def test_vertex_without_credentials_uses_application_default_credentials(
    vertex: VertexAIProvider, fake: FakeGemini, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "adc.json"
    key_file.write_text(json.dumps(fake.service_account(project="adc-project")))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    answer = orjson.loads((await vertex.chat(vertex_call(fake, None))).body)
    assert answer["choices"][0]["message"]["content"] == Behavior().text
    assert "/projects/adc-project/locations/europe-west4/" in fake.last().path
    assert len(fake.token_requests) == 1


async def test_vertex_needs_a_project(
    vertex: VertexAIProvider, fake: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("VERTEXAI_PROJECT", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    info = fake.service_account()
    del info["project_id"]
    with pytest.raises(ProviderError) as exc:
        await vertex.chat(vertex_call(fake, info))
    assert (exc.value.status_code, exc.value.param) == (400, "vertex_project")
    assert fake.requests == []
