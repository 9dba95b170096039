"""The native Ollama adapter: golden translations of its codec, and calls against a fake Ollama."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest

from providers.contract import ProviderCall
from providers.errors import ContextWindowExceededError, ProviderError, ProviderTimeoutError
from providers.formats import openai_chat
from providers.http import build_client
from providers.http11_transport import HTTP11Transport
from providers.ollama import OllamaProvider
from providers.schema import Finish, StreamStart, TextDelta, ToolCallDelta, UsageReport
from providers.usage import Usage
from tests.support.fake_ollama import Behavior, FakeOllama, fake_embedding
from tests.support.gateway_process import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


# ---- against the fake ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ollama_server() -> Iterator[FakeOllama]:
    with FakeOllama(
        models={"llama3.2": {"tools", "vision"}, "tiny": set(), "all-minilm": {"embedding"}}
    ) as s:
        yield s


@pytest.fixture
def fake(ollama_server: FakeOllama) -> FakeOllama:
    ollama_server.reset()
    return ollama_server


@pytest.fixture
async def provider() -> AsyncIterator[OllamaProvider]:
    client = build_client(HTTP11Transport())
    yield OllamaProvider(client)
    await client.aclose()


def call(fake: FakeOllama, body: dict | None = None, **kw: object) -> ProviderCall:
    args: dict = {
        "upstream_model": "llama3.2",
        "body": body or {"model": "pub", "messages": [{"role": "user", "content": "hi"}]},
        "api_base": fake.base_url,
    }
    args.update(kw)
    return ProviderCall(**args)


async def test_chat_answers_in_openai_format_with_ollama_usage(
    provider: OllamaProvider, fake: FakeOllama
) -> None:
    resp = await provider.chat(call(fake))
    answer = orjson.loads(resp.body)
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    assert answer["choices"][0]["message"]["content"] == Behavior().text
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {
        "prompt_tokens": 26,
        "completion_tokens": Behavior().eval_count(),
        "total_tokens": 26 + Behavior().eval_count(),
    }
    sent = fake.requests[-1]
    assert sent.path == "/api/chat" and sent.body["stream"] is False and sent.body["model"] == "llama3.2"
    assert "authorization" not in sent.headers


async def test_stream_is_read_line_by_line(provider: OllamaProvider, fake: FakeOllama) -> None:
    fake.set_behavior(
        Behavior(text="abcdefghij", fragment=3, tool_calls=[("get_weather", {"city": "Paris"})])
    )
    request = openai_chat.parse_request(
        {"model": "p", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL]}
    )
    events = [e async for e in provider.generate_stream(request, call(fake, body={}))]
    assert isinstance(events[0], StreamStart)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "abcdefghij"
    (tool,) = [e for e in events if isinstance(e, ToolCallDelta)]
    assert (tool.index, tool.name, orjson.loads(tool.arguments)) == (0, "get_weather", {"city": "Paris"})
    assert tool.id == f"call_{events[0].id.removeprefix('chatcmpl-')}_0"
    assert events[-2] == Finish("tool_calls")
    assert events[-1] == UsageReport(Usage(26, 5))
    assert fake.requests[-1].body["stream"] is True


async def test_raw_stream_gives_openai_chunks(provider: OllamaProvider, fake: FakeOllama) -> None:
    fake.set_behavior(Behavior(text="hello world", fragment=4, thinking="hmm"))
    chunks = [
        orjson.loads(e[6:])
        async for e in provider.chat_stream(
            call(fake, body={"model": "p", "messages": [{"role": "user", "content": "hi"}], "stream": True})
        )
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "hello world"
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "hmm"
    assert chunks[-1]["usage"]["prompt_tokens"] == 26


@pytest.mark.parametrize(
    ("behavior", "klass", "status", "code"),
    [
        (
            Behavior(status=400, error="the input length exceeds the context length"),
            ContextWindowExceededError,
            400,
            "context_length_exceeded",
        ),
        (
            Behavior(status=500, error="llama runner process has terminated: exit status 2"),
            ProviderError,
            500,
            None,
        ),
    ],
)
async def test_errors_are_mapped(
    provider: OllamaProvider, fake: FakeOllama, behavior: Behavior, klass: type, status: int, code: str | None
) -> None:
    for stream in (False, True):
        fake.enqueue(behavior)
        with pytest.raises(klass) as exc:
            if stream:
                await anext(aiter(provider.chat_stream(call(fake))))
            else:
                await provider.chat(call(fake))
        assert exc.value.status_code == status and exc.value.code == code
        assert exc.value.message == behavior.error and exc.value.retryable == (status >= 500)


async def test_unknown_model_is_a_404_model_not_found(provider: OllamaProvider, fake: FakeOllama) -> None:
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake, upstream_model="llama9"))
    assert (exc.value.status_code, exc.value.code, exc.value.type) == (
        404,
        "model_not_found",
        "not_found_error",
    )
    assert 'model "llama9" not found' in exc.value.message


async def test_a_model_without_tools_refuses_them(provider: OllamaProvider, fake: FakeOllama) -> None:
    body = {"model": "p", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL]}
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake, body, upstream_model="tiny"))
    assert exc.value.status_code == 400 and "does not support tools" in exc.value.message


async def test_stream_error_line_and_truncation(provider: OllamaProvider, fake: FakeOllama) -> None:
    fake.enqueue(Behavior(text="abcdefghijkl", fragment=3, error_after_lines=2, error="out of memory"))
    got: list[bytes] = []
    with pytest.raises(ProviderError) as exc:
        async for event in provider.chat_stream(call(fake)):
            got.append(event)
    assert exc.value.message == "out of memory" and exc.value.status_code == 500
    assert len(got) == 3  # the role chunk and the two lines before the error
    fake.enqueue(Behavior(end_without_done=True))
    with pytest.raises(ProviderError) as exc:
        _ = [e async for e in provider.chat_stream(call(fake))]
    assert exc.value.code == "stream_truncated"


async def test_unsendable_requests_are_400s_naming_the_parameter(
    provider: OllamaProvider, fake: FakeOllama
) -> None:
    cases = [
        ({"tools": [WEATHER_TOOL], "tool_choice": "required"}, "tool_choice"),
        ({"logit_bias": {"1": 1}}, "logit_bias"),
    ]
    for extra, param in cases:
        body = {"model": "p", "messages": [{"role": "user", "content": "hi"}], **extra}
        with pytest.raises(ProviderError) as exc:
            await provider.chat(call(fake, body))
        assert (exc.value.status_code, exc.value.param) == (400, param)
        assert (await provider.chat(call(fake, body, params={"drop_params": True}))).status == 200
    link = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {"model": "p", "messages": [{"role": "user", "content": [link]}]}
    sent = len(fake.requests)
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake, body))
    assert exc.value.status_code == 400 and exc.value.param == "messages.0.content.0.image_url.url"
    assert len(fake.requests) == sent  # refused here, never sent


async def test_tool_choice_none_leaves_the_tools_out(provider: OllamaProvider, fake: FakeOllama) -> None:
    body = {
        "model": "p",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": "none",
    }
    await provider.chat(call(fake, body))
    assert "tools" not in fake.requests[-1].body


async def test_embeddings(provider: OllamaProvider, fake: FakeOllama) -> None:
    body = {"model": "pub", "input": ["why is the sky blue", "grass"]}
    resp = await provider.embeddings(call(fake, body, upstream_model="all-minilm"))
    answer = orjson.loads(resp.body)
    assert [d["embedding"] for d in answer["data"]] == [fake_embedding(t, 6) for t in body["input"]]
    assert answer["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert fake.requests[-1].body == {"model": "all-minilm", "input": body["input"]}
    with pytest.raises(ProviderError) as exc:
        await provider.embeddings(
            call(fake, {"model": "pub", "input": [[1, 2, 3]]}, upstream_model="all-minilm")
        )
    assert (exc.value.status_code, exc.value.param) == (400, "input")


async def test_api_key_is_a_bearer_token_and_scrubbed_from_errors(
    provider: OllamaProvider, fake: FakeOllama
) -> None:
    key = "ollama-secret-key-123456"
    fake.enqueue(Behavior(status=500, error=f"proxy rejected Bearer {key}"))
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake, api_key=key))
    assert fake.requests[-1].headers["authorization"] == f"Bearer {key}"
    assert key not in exc.value.message


async def test_closing_the_stream_cancels_upstream(provider: OllamaProvider, fake: FakeOllama) -> None:
    fake.set_behavior(Behavior(text="x" * 600, fragment=3, chunk_delay_s=0.05))
    stream = provider.chat_stream(call(fake))
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    assert await asyncio.to_thread(fake.wait_for_cancel, 10.0)


async def test_timeout_and_unreachable(provider: OllamaProvider, fake: FakeOllama) -> None:
    fake.enqueue(Behavior(delay_s=2.0))
    with pytest.raises(ProviderTimeoutError):
        await provider.chat(call(fake, timeout=0.3))
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake, api_base=f"http://127.0.0.1:{free_port()}"))
    assert exc.value.status_code == 502 and exc.value.retryable


async def test_registry_sends_ollama_and_ollama_chat_here() -> None:
    from providers.registry import OPENAI_COMPATIBLE_PROVIDERS, ProviderRegistry

    registry = ProviderRegistry.default()
    assert "ollama_chat" not in OPENAI_COMPATIBLE_PROVIDERS
    for name in ("ollama", "ollama_chat"):
        assert isinstance(registry.get(name), OllamaProvider)
        assert registry.capabilities(name) == frozenset({"chat", "embeddings"})
