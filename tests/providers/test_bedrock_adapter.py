"""The Bedrock adapter: golden translations of its codec, and the adapter against the fake bedrock-runtime.

The fake (tests/support/fake_bedrock.py) verifies every request's SigV4 signature with botocore and
refuses what Bedrock refuses, so a passing call here was signed and shaped as AWS requires.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
import pytest_asyncio
from botocore.credentials import ReadOnlyCredentials

from providers.bedrock import BedrockProvider, converse, errors
from providers.bedrock.converse_stream import StreamParser
from providers.bedrock.credentials import Identity
from providers.bedrock.signing import sign
from providers.contract import ProviderCall
from providers.errors import ContextWindowExceededError, ProviderError, ProviderTimeoutError
from providers.formats import anthropic_messages, openai_chat
from providers.http import build_client
from providers.registry import ProviderRegistry
from providers.schema import (
    Finish,
    GenerationResponse,
    ReasoningDelta,
    StreamStart,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    UsageReport,
)
from providers.usage import Usage
from tests.support import fake_bedrock as fb
from tests.support.fake_bedrock import Behavior, Error, FakeBedrock

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
PNG_B64 = base64.b64encode(PNG).decode()
KEYS = {
    "aws_access_key_id": fb.ACCESS_KEY_ID,
    "aws_secret_access_key": fb.SECRET_ACCESS_KEY,
    "aws_region_name": fb.REGION,
}
HI = {"model": "public", "messages": [{"role": "user", "content": "hi"}]}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeBedrock]:
    with FakeBedrock() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeBedrock) -> FakeBedrock:
    server.reset()
    return server


@pytest_asyncio.fixture(loop_scope="function")  # the client lives on the test's own loop
async def provider() -> AsyncIterator[BedrockProvider]:
    client = build_client()
    yield BedrockProvider(client)
    await client.aclose()


def call(fake: FakeBedrock, body: dict | None = None, model: str = MODEL, **params: object) -> ProviderCall:
    return ProviderCall(
        upstream_model=model, body=body or HI, api_base=fake.base_url, params={**KEYS, **params}
    )


async def collect(provider: BedrockProvider, c: ProviderCall) -> list[dict]:
    chunks = [chunk async for chunk in provider.chat_stream(c)]
    return [orjson.loads(chunk.removeprefix(b"data: ")) for chunk in chunks]


# ---- golden translations ---------------------------------------------------------------------


def test_openai_body_translates_to_converse_exactly() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image, and the weather?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "tu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "tu_1", "content": "sunny, 21C"},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "top_k": 40,
    }
    assert converse.build_request(openai_chat.parse_request(body)) == {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"text": "What is in this image, and the weather?"},
                    {"image": {"format": "png", "source": {"bytes": PNG_B64}}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"text": "Let me check."},
                    {"toolUse": {"toolUseId": "tu_1", "name": "get_weather", "input": {"city": "Paris"}}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"toolResult": {"toolUseId": "tu_1", "content": [{"text": "sunny, 21C"}]}},
                    {"text": "Thanks"},
                ],
            },
        ],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 300, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]},
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": "get_weather",
                        "inputSchema": {"json": TOOLS[0]["function"]["parameters"]},
                        "description": "Weather in a city",
                    }
                }
            ],
            "toolChoice": {"tool": {"name": "get_weather"}},
        },
        "additionalModelRequestFields": {"top_k": 40},
    }


def test_tool_choice_values() -> None:
    def choice(value: object, messages: list | None = None) -> object:
        body = {"model": "m", "messages": messages or HI["messages"], "tools": TOOLS, "tool_choice": value}
        return converse.build_request(openai_chat.parse_request(body)).get("toolConfig")

    assert choice("auto")["toolChoice"] == {"auto": {}}
    assert choice("required")["toolChoice"] == {"any": {}}
    assert choice("none") is None  # Bedrock has no "none": the tools stay home
    history = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "ok"},
    ]
    kept = choice("none", history)  # tool blocks in the history: Bedrock requires toolConfig
    assert kept is not None and "toolChoice" not in kept


def test_anthropic_body_thinking_cache_points_and_tool_error() -> None:
    body = {
        "model": "m",
        "max_tokens": 2000,
        "system": [{"type": "text", "text": "Long shared context", "cache_control": {"type": "ephemeral"}}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "top_k": 5,
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": True}],
            },
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    }
    out = converse.build_request(anthropic_messages.parse_request(body))
    assert out["system"] == [{"text": "Long shared context"}, {"cachePoint": {"type": "default"}}]
    assert out["additionalModelRequestFields"] == {
        "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    assert out["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": "t", "content": [{"text": "boom"}], "status": "error"}}
    ]


def test_converse_answer_parses_with_cache_usage_and_reasoning() -> None:
    body = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [
                    {"reasoningContent": {"reasoningText": {"text": "thinking...", "signature": "s"}}},
                    {"text": "Calling."},
                    {"toolUse": {"toolUseId": "tu_9", "name": "get_weather", "input": {"city": "Oslo"}}},
                ],
            }
        },
        "stopReason": "tool_use",
        "usage": {
            "inputTokens": 10,
            "outputTokens": 7,
            "totalTokens": 47,
            "cacheReadInputTokens": 20,
            "cacheWriteInputTokens": 10,
        },
        "metrics": {"latencyMs": 5},
    }
    assert converse.parse_response(body, id="r", model="m", created=3) == GenerationResponse(
        id="r",
        model="m",
        created=3,
        text="Calling.",
        reasoning="thinking...",
        tool_calls=[ToolCall("tu_9", "get_weather", '{"city":"Oslo"}')],
        finish_reason="tool_calls",
        usage=Usage(40, 7, cache_read_tokens=20, cache_write_tokens=10),
    )


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("max_tokens", "length"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ],
)
def test_stop_reasons(stop: str, finish: str) -> None:
    assert converse.finish_reason(stop) == finish


def test_stream_events_translate_in_order() -> None:
    parser = StreamParser(id="s", model="m", created=1)
    events = []
    for kind, payload in [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "hmm"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "x"}}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Hi"}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        (
            "contentBlockStart",
            {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "a", "name": "f"}}},
        ),
        ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": '{"x"'}}}),
        ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": ": 1}"}}}),
        ("contentBlockStop", {"contentBlockIndex": 2}),
        (
            "contentBlockStart",
            {"contentBlockIndex": 3, "start": {"toolUse": {"toolUseId": "b", "name": "g"}}},
        ),
        ("contentBlockStop", {"contentBlockIndex": 3}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}}),
    ]:
        events += parser.feed(kind, payload)
    assert events == [
        StreamStart("s", "m", 1),
        ReasoningDelta("hmm"),
        TextDelta("Hi"),
        ToolCallDelta(0, "", "a", "f"),
        ToolCallDelta(0, '{"x"'),
        ToolCallDelta(0, ": 1}"),
        ToolCallDelta(1, "", "b", "g"),
        ToolCallDelta(1, "{}"),  # a call without arguments still gets a JSON object
        Finish("tool_calls"),
        UsageReport(Usage(3, 4)),
    ]


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (
            403,
            b'{"Message":"The security token included in the request is invalid."}',
            {"x-amzn-errortype": "UnrecognizedClientException:http://internal.amazon.com/coral/"},
            (401, "authentication_error", "The security token included in the request is invalid."),
        ),
        (
            400,
            b'{"__type":"com.amazon.coral.validate#ValidationException","message":"too many input tokens"}',
            {},
            (400, "invalid_request_error", "too many input tokens"),
        ),
        (
            429,
            b'{"message":"slow"}',
            {"x-amzn-errortype": "SomeNewException"},
            (429, "rate_limit_error", "slow"),
        ),
        (502, b"<html>bad gateway</html>", {}, (502, "api_error", "<html>bad gateway</html>")),
    ],
)
def test_error_bodies(status: int, body: bytes, headers: dict, expected: tuple) -> None:
    err = errors.from_http(status, body, headers, lambda text: text)
    assert (err.status_code, err.type, err.message) == expected
    assert err.context_window_exceeded == ("tokens" in err.message)


# ---- the adapter against the fake ------------------------------------------------------------


async def test_chat_is_signed_encoded_and_translated(provider: BedrockProvider, fake: FakeBedrock) -> None:
    resp = await provider.chat(call(fake, {**HI, "max_tokens": 64}))
    answer = orjson.loads(resp.body)
    assert answer["choices"][0]["message"]["content"] == "Hello from Bedrock."
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["model"] == MODEL
    assert answer["usage"] == {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    sent = fake.requests[-1]
    assert sent.raw_path == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert sent.body == {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "inferenceConfig": {"maxTokens": 64},
    }
    assert sent.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={fb.ACCESS_KEY_ID}/")
    assert fb.SECRET_ACCESS_KEY not in str(sent.headers)


async def test_converse_prefix_and_arn_model_ids_are_encoded_whole(
    provider: BedrockProvider, fake: FakeBedrock
) -> None:
    await provider.chat(call(fake, model="converse/us.anthropic.claude-3-7-sonnet-20250219-v1:0"))
    assert fake.requests[-1].model_id == "us.anthropic.claude-3-7-sonnet-20250219-v1:0"
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.x"
    with pytest.raises(ProviderError) as info:
        await provider.chat(call(fake, model=arn))
    assert info.value.status_code == 400  # signed correctly, refused only as an unknown model
    assert fake.requests[-1].raw_path == "/model/" + arn.replace(":", "%3A").replace("/", "%2F") + "/converse"


async def test_session_token_credentials(provider: BedrockProvider, fake: FakeBedrock) -> None:
    params = {
        "aws_access_key_id": fb.SESSION_KEY_ID,
        "aws_secret_access_key": fb.SESSION_SECRET,
        "aws_session_token": fb.SESSION_TOKEN,
    }
    resp = await provider.chat(call(fake, **params))
    assert resp.status == 200
    assert fake.requests[-1].headers["x-amz-security-token"] == fb.SESSION_TOKEN


async def test_credentials_from_the_environment_chain(
    provider: BedrockProvider, fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", fb.ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", fb.SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_REGION", fb.REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    c = ProviderCall(upstream_model=MODEL, body=HI, api_base=fake.base_url)
    assert (await provider.chat(c)).status == 200


async def test_bedrock_api_key_is_a_bearer(provider: BedrockProvider, fake: FakeBedrock) -> None:
    c = ProviderCall(
        upstream_model=MODEL,
        body=HI,
        api_base=fake.base_url,
        api_key=fb.API_KEY,
        params={"aws_region_name": fb.REGION},
    )
    assert (await provider.chat(c)).status == 200
    assert fake.requests[-1].headers["authorization"] == f"Bearer {fb.API_KEY}"


async def test_assumed_role_through_sts(provider: BedrockProvider, fake: FakeBedrock) -> None:
    role = {"aws_role_name": fb.ROLE_ARN, "aws_session_name": "s1", "aws_sts_endpoint": fake.base_url}
    assert (await provider.chat(call(fake, **role))).status == 200
    assert (await provider.chat(call(fake, **role))).status == 200
    assert fake.assumed == [(fb.ROLE_ARN, "s1")]  # assumed once, the temporary keys kept
    sent = fake.requests[-1].headers
    assert sent["x-amz-security-token"] == fb.SESSION_TOKEN and fb.SESSION_KEY_ID in sent["authorization"]
    other = {**role, "aws_role_name": "arn:aws:iam::123456789012:role/not-mine"}
    with pytest.raises(ProviderError) as info:
        await provider.chat(call(fake, **other))
    assert (info.value.status_code, info.value.type) == (403, "permission_error")
    assert "could not assume AWS role" in info.value.message and "not authorized" in info.value.message


async def test_bad_secret_is_an_authentication_error_without_the_secret(
    provider: BedrockProvider, fake: FakeBedrock
) -> None:
    wrong = "wrong/secret/key/that/must/not/leak"
    with pytest.raises(ProviderError) as info:
        await provider.chat(call(fake, aws_secret_access_key=wrong))
    err = info.value
    assert (err.status_code, err.type) == (401, "authentication_error")
    assert "signature we calculated does not match" in err.message
    assert wrong not in str(err.to_openai())
    assert fake.requests == []  # refused before it was served


async def test_wrong_region_scope_is_refused(provider: BedrockProvider, fake: FakeBedrock) -> None:
    with pytest.raises(ProviderError) as info:
        await provider.chat(call(fake, aws_region_name="eu-west-1"))
    assert info.value.status_code == 401 and "us-east-1" in info.value.message


async def test_echoed_secret_is_scrubbed(provider: BedrockProvider, fake: FakeBedrock) -> None:
    fake.enqueue(Behavior(error=Error(400, "ValidationException", f"bad key {fb.SECRET_ACCESS_KEY} here")))
    with pytest.raises(ProviderError) as info:
        await provider.chat(call(fake))
    assert fb.SECRET_ACCESS_KEY not in info.value.message and "bad key" in info.value.message


@pytest.mark.parametrize(
    ("error", "status", "type_"),
    [
        (Error(403, "AccessDeniedException", "no access"), 403, "permission_error"),
        (Error(404, "ResourceNotFoundException", "no model"), 404, "not_found_error"),
        (Error(503, "ServiceUnavailableException", "busy"), 503, "service_unavailable"),
        (Error(500, "InternalServerException", "oops"), 500, "api_error"),
        (Error(424, "ModelErrorException", "model broke"), 502, "api_error"),
    ],
)
async def test_http_errors_map(
    provider: BedrockProvider, fake: FakeBedrock, error: Error, status: int, type_: str
) -> None:
    fake.enqueue(Behavior(error=error))
    with pytest.raises(ProviderError) as info:
        await provider.chat(call(fake))
    assert (info.value.status_code, info.value.type, info.value.message) == (status, type_, error.message)
    assert info.value.retryable == (status >= 500)


async def test_throttling_keeps_retry_after(provider: BedrockProvider, fake: FakeBedrock) -> None:
    fake.enqueue(Behavior(error=fb.THROTTLED, headers={"retry-after": "7"}))
    with pytest.raises(ProviderError) as info:
        await provider.chat(call(fake))
    assert (info.value.status_code, info.value.type, info.value.retry_after) == (429, "rate_limit_error", 7.0)
    assert info.value.retryable


async def test_model_timeout_is_a_retryable_timeout(provider: BedrockProvider, fake: FakeBedrock) -> None:
    fake.enqueue(Behavior(error=Error(408, "ModelTimeoutException", "took too long")))
    with pytest.raises(ProviderTimeoutError) as info:
        await provider.chat(call(fake))
    assert info.value.retryable and info.value.message == "took too long"


async def test_too_long_input_is_context_window_exceeded(
    provider: BedrockProvider, fake: FakeBedrock
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "word " * 5000}]}
    with pytest.raises(ContextWindowExceededError) as info:
        await provider.chat(call(fake, body))
    assert info.value.status_code == 400 and info.value.context_window_exceeded


async def test_conversation_starting_with_assistant_is_refused_by_bedrock(
    provider: BedrockProvider, fake: FakeBedrock
) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}],
    }
    with pytest.raises(ProviderError) as info:
        await provider.chat(call(fake, body))
    assert info.value.status_code == 400 and "must start with a user message" in info.value.message


async def test_parameters_bedrock_cannot_take(provider: BedrockProvider, fake: FakeBedrock) -> None:
    for extra, param in [({"seed": 1}, "seed"), ({"logit_bias": {"1": 2}}, "logit_bias")]:
        with pytest.raises(ProviderError) as info:
            await provider.chat(call(fake, {**HI, **extra}))
        assert (info.value.status_code, info.value.param) == (400, param)
    resp = await provider.chat(call(fake, {**HI, "seed": 1, "logit_bias": {"1": 2}}, drop_params=True))
    assert resp.status == 200
    assert fake.requests[-1].body == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    url_image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {"model": "m", "messages": [{"role": "user", "content": [url_image]}]}
    with pytest.raises(ProviderError) as info:
        await provider.chat(call(fake, body))
    assert (info.value.status_code, info.value.param) == (400, "messages.0.content.0")


SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "result", "schema": SCHEMA}}


def test_response_format_is_a_forced_json_tool() -> None:
    body = {"model": "m", "messages": HI["messages"], "response_format": JSON_FORMAT}
    assert converse.build_request(openai_chat.parse_request(body))["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "json_tool_call",
                    "description": "Respond with a JSON object.",
                    "inputSchema": {"json": SCHEMA},
                }
            }
        ],
        "toolChoice": {"tool": {"name": "json_tool_call"}},
    }
    plain = {"model": "m", "messages": HI["messages"], "response_format": {"type": "json_object"}}
    config = converse.build_request(openai_chat.parse_request(plain))["toolConfig"]
    assert config["tools"][0]["toolSpec"]["inputSchema"] == {"json": {"type": "object"}}


async def test_json_answers_come_back_as_text(provider: BedrockProvider, fake: FakeBedrock) -> None:
    fake.set_behavior(Behavior(forced_input='{"answer": 42}'))
    resp = orjson.loads((await provider.chat(call(fake, {**HI, "response_format": JSON_FORMAT}))).body)
    choice = resp["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ('{"answer":42}', "stop")
    assert "tool_calls" not in choice["message"]
    chunks = await collect(provider, call(fake, {**HI, "response_format": JSON_FORMAT, "stream": True}))
    deltas = [c["choices"][0] for c in chunks if c["choices"]]
    assert "".join(d["delta"].get("content") or "" for d in deltas) == '{"answer": 42}'
    assert not any("tool_calls" in d["delta"] for d in deltas)
    assert deltas[-1]["finish_reason"] == "stop"
    with pytest.raises(ProviderError) as info:
        await provider.chat(call(fake, {**HI, "response_format": JSON_FORMAT, "tools": TOOLS}))
    assert (info.value.status_code, info.value.param) == (400, "response_format")


async def test_stream_text_and_tool_calls(provider: BedrockProvider, fake: FakeBedrock) -> None:
    args = '{"city": "Paris", "unit": "celsius"}'
    fake.enqueue(Behavior(tool_calls=[("tu_1", "get_weather", args), ("tu_2", "get_time", "{}")]))
    chunks = await collect(provider, call(fake, {**HI, "stream": True, "tools": TOOLS}))
    assert fake.requests[-1].operation == "converse-stream"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    text = "".join(d.get("content") or "" for d in deltas)
    calls: dict[int, dict] = {}
    for d in deltas:
        for piece in d.get("tool_calls", []):
            entry = calls.setdefault(piece["index"], {"arguments": ""})
            entry.update({k: piece[k] for k in ("id",) if k in piece})
            if "name" in piece["function"]:
                entry["name"] = piece["function"]["name"]
            entry["arguments"] += piece["function"]["arguments"]
    assert text == "Hello from Bedrock."
    assert calls == {
        0: {"id": "tu_1", "name": "get_weather", "arguments": args},
        1: {"id": "tu_2", "name": "get_time", "arguments": "{}"},
    }
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


async def test_stream_split_at_odd_boundaries_gives_the_same_answer(
    provider: BedrockProvider, fake: FakeBedrock
) -> None:
    fake.enqueue(Behavior(reasoning="thinking", cache_read=4, cache_write=2))
    whole = await collect(provider, call(fake, {**HI, "stream": True}))
    fake.enqueue(Behavior(reasoning="thinking", cache_read=4, cache_write=2, write_size=5))
    split = await collect(provider, call(fake, {**HI, "stream": True}))

    def content(chunks: list[dict]) -> list:
        return [(c["choices"], c.get("usage")) for c in chunks]

    assert content(whole) == content(split)
    assert whole[1]["choices"][0]["delta"] == {"reasoning_content": "thinking"}
    assert whole[-1]["usage"]["prompt_tokens"] == 11 + 4 + 2


async def test_stream_exception_event_is_a_provider_error(
    provider: BedrockProvider, fake: FakeBedrock
) -> None:
    fake.enqueue(Behavior(stream_exception=("throttlingException", "Too many tokens, please wait.")))
    with pytest.raises(ProviderError) as info:
        await collect(provider, call(fake, {**HI, "stream": True}))
    assert (info.value.status_code, info.value.type) == (429, "rate_limit_error")
    fake.enqueue(Behavior(stream_exception=("validationException", "Input is too long for requested model.")))
    with pytest.raises(ContextWindowExceededError):
        await collect(provider, call(fake, {**HI, "stream": True}))
    fake.enqueue(Behavior(stream_exception=("modelStreamErrorException", "model broke")))
    with pytest.raises(ProviderError) as info:
        await collect(provider, call(fake, {**HI, "stream": True}))
    assert info.value.status_code == 502 and info.value.retryable


async def test_corrupt_or_truncated_stream_is_refused(provider: BedrockProvider, fake: FakeBedrock) -> None:
    fake.enqueue(Behavior(corrupt_crc=True))
    with pytest.raises(ProviderError) as info:
        await collect(provider, call(fake, {**HI, "stream": True}))
    assert info.value.code == "upstream_malformed_response" and "CRC" in info.value.message
    fake.enqueue(Behavior(truncate_stream=True))
    with pytest.raises(ProviderError) as info:
        await collect(provider, call(fake, {**HI, "stream": True}))
    assert info.value.code == "stream_truncated"


async def test_stream_http_error_before_the_first_event(provider: BedrockProvider, fake: FakeBedrock) -> None:
    fake.enqueue(Behavior(error=fb.THROTTLED))
    with pytest.raises(ProviderError) as info:
        await collect(provider, call(fake, {**HI, "stream": True}))
    assert info.value.status_code == 429


async def test_closing_the_stream_cancels_the_upstream(provider: BedrockProvider, fake: FakeBedrock) -> None:
    fake.enqueue(Behavior(chunks=50, text="x" * 50, chunk_delay_s=0.05))
    stream = provider.chat_stream(call(fake, {**HI, "stream": True}))
    first = await stream.__anext__()
    assert b"assistant" in first
    await stream.aclose()
    assert fake.wait_for_cancel(10.0)


async def test_typed_stream_via_generate_stream(provider: BedrockProvider, fake: FakeBedrock) -> None:
    request = anthropic_messages.parse_request({"model": "m", "max_tokens": 10, "messages": HI["messages"]})
    events = [e async for e in provider.generate_stream(request, call(fake))]
    assert isinstance(events[0], StreamStart) and events[0].model == MODEL
    assert isinstance(events[-2], Finish) and isinstance(events[-1], UsageReport)
    assert fake.requests[-1].body["inferenceConfig"] == {"maxTokens": 10}


async def test_titan_embeddings_one_call_per_text(provider: BedrockProvider, fake: FakeBedrock) -> None:
    texts = ["first text", "second one here", "third"]
    body = {"model": "e", "input": texts, "dimensions": 256}
    resp = await provider.embeddings(call(fake, body, model=fb.TITAN_EMBED))
    data = orjson.loads(resp.body)
    assert [d["embedding"] for d in data["data"]] == [pytest.approx(fb.vector_for(t, 256)) for t in texts]
    assert data["usage"] == {"prompt_tokens": 2 + 3 + 1, "total_tokens": 6}
    assert sorted(r.body["inputText"] for r in fake.requests) == sorted(texts)
    assert all(r.body["dimensions"] == 256 and r.operation == "invoke" for r in fake.requests)


async def test_cohere_embeddings_in_batches(provider: BedrockProvider, fake: FakeBedrock) -> None:
    texts = [f"text number {i}" for i in range(100)]
    body = {"model": "e", "input": texts, "input_type": "search_query"}
    resp = await provider.embeddings(call(fake, body, model=fb.COHERE_EMBED))
    data = orjson.loads(resp.body)
    assert [d["embedding"] for d in data["data"]] == [pytest.approx(fb.vector_for(t, 1024)) for t in texts]
    assert data["usage"]["prompt_tokens"] == 300  # from the token-count header of both calls
    assert sorted(len(r.body["texts"]) for r in fake.requests) == [4, 96]
    assert {r.body["input_type"] for r in fake.requests} == {"search_query"}


async def test_embeddings_refusals(provider: BedrockProvider, fake: FakeBedrock) -> None:
    with pytest.raises(ProviderError) as info:
        await provider.embeddings(call(fake, {"model": "e", "input": [1, 2, 3]}, model=fb.TITAN_EMBED))
    assert (info.value.status_code, info.value.param) == (400, "input.0")
    with pytest.raises(ProviderError) as info:
        await provider.embeddings(call(fake, {"model": "e", "input": "x"}, model=MODEL))
    assert info.value.status_code == 400 and "embedding model" in info.value.message
    with pytest.raises(ProviderError) as info:  # one of the concurrent calls is refused: all fail
        await provider.embeddings(
            call(fake, {"model": "e", "input": ["fine", "", "also"]}, model=fb.TITAN_EMBED)
        )
    assert info.value.status_code == 400 and "inputText" in info.value.message
    with pytest.raises(ProviderError) as info:  # Titan v2 takes 256/512/1024 only: Bedrock says so
        await provider.embeddings(
            call(fake, {"model": "e", "input": "x", "dimensions": 300}, model=fb.TITAN_EMBED)
        )
    assert info.value.status_code == 400 and "dimensions" in info.value.message


def test_registered_lazily_with_its_capabilities() -> None:
    registry = ProviderRegistry.default()
    assert registry.capabilities("bedrock") == frozenset({"chat", "embeddings"})
    assert isinstance(registry.get("bedrock"), BedrockProvider)


# ---- the fake refuses what Bedrock refuses (so the tests above could fail) --------------------


async def test_fake_refuses_unsigned_and_invalid_requests(fake: FakeBedrock) -> None:
    url = f"{fake.base_url}/model/{MODEL.replace(':', '%3A')}/converse"
    identity = Identity(ReadOnlyCredentials(fb.ACCESS_KEY_ID, fb.SECRET_ACCESS_KEY, None))

    async def post(body: dict, signed: bool = True) -> httpx.Response:
        raw = orjson.dumps(body)
        headers = {"content-type": "application/json"}
        if signed:
            headers = sign(identity, fb.REGION, url, raw, headers)
        async with httpx.AsyncClient() as http:
            return await http.post(url, content=raw, headers=headers)

    ok = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    assert (await post(ok)).status_code == 200
    unsigned = await post(ok, signed=False)
    assert unsigned.status_code == 403
    assert unsigned.headers["x-amzn-errortype"].startswith("MissingAuthenticationTokenException:")
    user = {"role": "user", "content": [{"text": "a"}]}
    refusals = {
        "alternate between user and assistant": {"messages": [user, user]},
        "text field in the ContentBlock object is blank": {
            "messages": [{"role": "user", "content": [{"text": ""}]}]
        },
        "toolConfig field must be defined": {
            "messages": [
                user,
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t", "name": "f", "input": {}}}]},
                {"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": [{"text": "x"}]}}]},
            ]
        },
        "Unknown parameter": {**ok, "max_tokens": 5},
    }
    for message, body in refusals.items():
        resp = await post(body)
        assert resp.status_code == 400, message
        assert resp.headers["x-amzn-errortype"].startswith("ValidationException:")
        assert message in resp.json()["message"]
