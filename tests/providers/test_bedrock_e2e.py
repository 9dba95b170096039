"""Bedrock end to end: a real gateway process, the fake bedrock-runtime, the official SDKs as clients.

The gateway gets its AWS credentials the standard way (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` in its environment, nothing in the config), signs every call with
SigV4 and the fake verifies each signature: a request that reaches an answer was signed as AWS
requires. The openai SDK drives the chat and embeddings doors; the anthropic SDK drives
/v1/messages, routed to the same Bedrock deployment.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.support import fake_bedrock as fb
from tests.support.fake_bedrock import Behavior, FakeBedrock
from tests.support.gateway_process import GatewayProcess, gateway_process

MASTER_KEY = "sk-master-bedrock-e2e"
CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 24).decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ARGS = '{"city": "Paris", "unit": "celsius"}'


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBedrock]:
    with FakeBedrock() as server:
        yield server


@pytest.fixture(scope="module")
def gw(fake: FakeBedrock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    def deployment(name: str, model: str) -> dict:
        params = {"model": f"bedrock/{model}", "api_base": fake.base_url, "aws_region_name": fb.REGION}
        return {"model_name": name, "litellm_params": params}

    config = {
        "model_list": [
            deployment("claude", CLAUDE),
            # Errors get their own deployment: a 429 cools it down, which must not touch "claude".
            deployment("claude-errors", "us.anthropic.claude-3-7-sonnet-20250219-v1:0"),
            deployment("nova-stream-errors", "amazon.nova-lite-v1:0"),
            deployment("titan", fb.TITAN_EMBED),
        ],
        "general_settings": {"master_key": MASTER_KEY},
        "router_settings": {"num_retries": 0},
    }
    nowhere = str(tmp_path_factory.mktemp("aws") / "absent")
    env = {
        "AWS_ACCESS_KEY_ID": fb.ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": fb.SECRET_ACCESS_KEY,
        # Only the environment: no profile files of the machine running the tests, no IMDS.
        "AWS_CONFIG_FILE": nowhere,
        "AWS_SHARED_CREDENTIALS_FILE": nowhere,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with gateway_process(config, env=env) as gateway:
        yield gateway
        assert fb.SECRET_ACCESS_KEY not in gateway.logs()


@pytest.fixture(autouse=True)
def _fresh(fake: FakeBedrock) -> None:
    fake.reset()


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)


def test_text(gw: GatewayProcess, fake: FakeBedrock) -> None:
    resp = client(gw).chat.completions.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}],
        max_tokens=50,
        temperature=0.3,
    )
    assert resp.choices[0].message.content == "Hello from Bedrock."
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (11, 5, 16)
    sent = fake.requests[-1]
    assert sent.model_id == CLAUDE and sent.operation == "converse"
    assert sent.body == {
        "messages": [{"role": "user", "content": [{"text": "Hello?"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.3},
    }


def test_stream_with_usage_equal_to_upstream(gw: GatewayProcess, fake: FakeBedrock) -> None:
    fake.enqueue(Behavior(text="one two three four", chunks=4, cache_read=6, cache_write=2))
    stream = client(gw).chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three four"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None
    # Bedrock counts cached input apart (inputTokens 11 + read 6 + write 2); OpenAI's prompt_tokens
    # holds all of it, with the cached reads named.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (19, 5, 24)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 6
    assert fake.requests[-1].operation == "converse-stream"


def test_tools_not_streamed(gw: GatewayProcess, fake: FakeBedrock) -> None:
    fake.enqueue(Behavior(text="", tool_calls=[("tooluse_1", "get_weather", ARGS)]))
    resp = client(gw).chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    (tool_call,) = choice.message.tool_calls or []
    assert (tool_call.id, tool_call.function.name) == ("tooluse_1", "get_weather")
    assert json.loads(tool_call.function.arguments) == json.loads(ARGS)
    config = fake.requests[-1].body["toolConfig"]
    assert config["toolChoice"] == {"any": {}}
    assert config["tools"][0]["toolSpec"]["inputSchema"] == {"json": WEATHER["function"]["parameters"]}


def test_tools_streamed_arguments_reassemble_equal(gw: GatewayProcess, fake: FakeBedrock) -> None:
    second = '{"city": "Oslo"}'
    fake.enqueue(
        Behavior(
            text="Checking.", tool_calls=[("tu_a", "get_weather", ARGS), ("tu_b", "get_weather", second)]
        )
    )
    stream = client(gw).chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "Paris and Oslo?"}],
        tools=[WEATHER],
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for piece in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += piece.id or ""
            entry["name"] += (piece.function.name if piece.function else None) or ""
            entry["arguments"] += (piece.function.arguments if piece.function else None) or ""
    assert calls == {
        0: {"id": "tu_a", "name": "get_weather", "arguments": ARGS},
        1: {"id": "tu_b", "name": "get_weather", "arguments": second},
    }
    assert finish == "tool_calls"


def test_tool_result_follow_up_turn(gw: GatewayProcess, fake: FakeBedrock) -> None:
    resp = client(gw).chat.completions.create(
        model="claude",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "tu_1", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}
                ],
            },
            {"role": "tool", "tool_call_id": "tu_1", "content": "sunny, 21C"},
        ],
        tools=[WEATHER],
    )
    assert resp.choices[0].message.content == "The tool said: sunny, 21C"
    messages = fake.requests[-1].body["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": [{"toolUse": {"toolUseId": "tu_1", "name": "get_weather", "input": json.loads(ARGS)}}],
    }
    assert messages[2] == {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": "tu_1", "content": [{"text": "sunny, 21C"}]}}],
    }


def test_image(gw: GatewayProcess, fake: FakeBedrock) -> None:
    resp = client(gw).chat.completions.create(
        model="claude",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                ],
            }
        ],
    )
    assert resp.choices[0].message.content == "Hello from Bedrock."
    assert fake.requests[-1].body["messages"][0]["content"][1] == {
        "image": {"format": "png", "source": {"bytes": PNG_B64}}
    }


def test_image_by_url_is_a_clear_400(gw: GatewayProcess, fake: FakeBedrock) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(
            model="claude",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}],
                }
            ],
        )
    assert "inline" in str(info.value) and fake.requests == []


def test_json_schema_output(gw: GatewayProcess, fake: FakeBedrock) -> None:
    fake.enqueue(Behavior(forced_input='{"city": "Paris", "temp_c": 21}'))
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "temp_c": {"type": "integer"}}}
    resp = client(gw).chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "Weather in Paris as JSON"}],
        response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}},
    )
    assert json.loads(resp.choices[0].message.content or "") == {"city": "Paris", "temp_c": 21}
    assert resp.choices[0].finish_reason == "stop"
    assert fake.requests[-1].body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"] == {"json": schema}


def test_throttling_is_a_429_with_retry_after(gw: GatewayProcess, fake: FakeBedrock) -> None:
    fake.enqueue(Behavior(error=fb.THROTTLED, headers={"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as info:
        client(gw).chat.completions.create(
            model="claude-errors", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 429
    assert info.value.response.headers.get("retry-after") == "7"
    assert "Too many requests" in info.value.message


def test_exception_event_mid_stream_ends_the_stream_with_an_error(
    gw: GatewayProcess, fake: FakeBedrock
) -> None:
    fake.enqueue(Behavior(stream_exception=("modelStreamErrorException", "The model stream broke.")))
    stream = client(gw).chat.completions.create(
        model="nova-stream-errors", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = ""
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text == "Hello from Bedrock."  # what arrived before the exception event was passed on
    assert "The model stream broke." in info.value.message


def test_context_window_exceeded(gw: GatewayProcess, fake: FakeBedrock) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "word " * 5000}]
        )
    assert info.value.code == "context_length_exceeded"
    assert "Input is too long" in info.value.message


def test_embeddings(gw: GatewayProcess, fake: FakeBedrock) -> None:
    texts = ["the first text", "another"]
    resp = client(gw).embeddings.create(model="titan", input=texts, dimensions=256)
    assert [d.embedding for d in resp.data] == [pytest.approx(fb.vector_for(t, 256)) for t in texts]
    assert resp.usage.prompt_tokens == 4
    assert {r.model_id for r in fake.requests} == {fb.TITAN_EMBED}


def test_anthropic_sdk_on_messages_routed_to_bedrock(gw: GatewayProcess, fake: FakeBedrock) -> None:
    sdk = anthropic.Anthropic(base_url=gw.base_url, api_key=MASTER_KEY, max_retries=0, timeout=30)
    message = sdk.messages.create(
        model="claude",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello?"}],
        stop_sequences=["END"],
    )
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Hello from Bedrock.")]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 5)
    assert fake.requests[-1].body == {
        "messages": [{"role": "user", "content": [{"text": "Hello?"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 100, "stopSequences": ["END"]},
    }


def test_anthropic_sdk_streamed_tool_use(gw: GatewayProcess, fake: FakeBedrock) -> None:
    fake.enqueue(Behavior(text="Let me look.", tool_calls=[("tu_9", "get_weather", ARGS)]))
    sdk = anthropic.Anthropic(base_url=gw.base_url, api_key=MASTER_KEY, max_retries=0, timeout=30)
    tool = {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": WEATHER["function"]["parameters"],
    }
    with sdk.messages.stream(
        model="claude",
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[tool],
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Let me look."  # type: ignore[union-attr]
    use = final.content[1]
    assert (use.id, use.name, use.input) == ("tu_9", "get_weather", json.loads(ARGS))  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 5)
    assert fake.requests[-1].operation == "converse-stream"
