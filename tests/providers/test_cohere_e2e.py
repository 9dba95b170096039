"""End to end: a real ``switchyard serve`` routing ``cohere/`` models to a fake Cohere v2 API
(``tests.support.fake_cohere``), with the official openai SDK (and the anthropic SDK on
``/v1/messages``) as clients."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.support.fake_cohere import Behavior, FakeCohere, embed_tokens, vector_for
from tests.support.gateway_process import GatewayProcess, gateway_process

MASTER_KEY = "sk-master-cohere-e2e"
UPSTREAM_KEY = "co-e2e-upstream-secret"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeCohere]:
    with FakeCohere(api_key=UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def gw(fake: FakeCohere) -> Iterator[GatewayProcess]:
    def dep(name: str, model: str) -> dict:
        return {
            "model_name": name,
            "litellm_params": {"model": model, "api_base": fake.base_url, "api_key": UPSTREAM_KEY},
        }

    config = {
        "model_list": [
            dep("command", "cohere/command-r-plus"),
            dep("command-alias", "cohere_chat/command-r"),
            dep("embed", "cohere/embed-v4.0"),
        ],
        "general_settings": {"master_key": MASTER_KEY},
        "router_settings": {"num_retries": 0},
    }
    with gateway_process(config) as g:
        yield g


@pytest.fixture
def client(gw: GatewayProcess, fake: FakeCohere) -> openai.OpenAI:
    fake.reset()
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)


def test_text(client: openai.OpenAI, fake: FakeCohere) -> None:
    fake.set_behavior(Behavior(text="Bonjour from Cohere.", billed_input=11, billed_output=4))
    resp = client.chat.completions.create(model="command", messages=HI, temperature=0.2, max_tokens=50)
    assert resp.choices[0].message.content == "Bonjour from Cohere."
    assert resp.choices[0].finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (11, 4, 15)
    sent = fake.last()
    assert sent.path == "/v2/chat" and sent.body["model"] == "command-r-plus"
    assert (sent.body["temperature"], sent.body["max_tokens"]) == (0.2, 50)
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_litellm_alias_cohere_chat(client: openai.OpenAI, fake: FakeCohere) -> None:
    resp = client.chat.completions.create(model="command-alias", messages=HI)
    assert resp.choices[0].message.content == Behavior().text
    assert fake.last().body["model"] == "command-r"


def test_stream_with_usage(client: openai.OpenAI, fake: FakeCohere) -> None:
    text = "Streaming words from the fake Command model, piece by piece."
    fake.set_behavior(Behavior(text=text, fragment=4, billed_input=21, billed_output=13))
    stream = client.chat.completions.create(
        model="command", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (21, 13)
    assert fake.last().body["stream"] is True


def test_tools_plain_then_a_tool_result_turn(client: openai.OpenAI, fake: FakeCohere) -> None:
    fake.set_behavior(Behavior(tool_calls=[("get_weather_x1", "get_weather", '{"city": "Toronto"}')]))
    first = client.chat.completions.create(
        model="command", messages=HI, tools=[WEATHER_TOOL], tool_choice="required"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "get_weather_x1",
        "get_weather",
        {"city": "Toronto"},
    )
    assert fake.last().body["tool_choice"] == "REQUIRED"
    fake.set_behavior(Behavior(text="It is 24C in Toronto."))
    messages = [
        *HI,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 24}'},
    ]
    second = client.chat.completions.create(model="command", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "It is 24C in Toronto."
    sent = fake.last().body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "get_weather_x1"
    assert sent[2] == {"role": "tool", "tool_call_id": "get_weather_x1", "content": '{"temp_c": 24}'}


def test_streamed_tool_calls_reassemble_equal(client: openai.OpenAI, fake: FakeCohere) -> None:
    calls = [
        ("c_madrid", "get_weather", '{"city": "Madrid"}'),
        ("c_brasilia", "get_weather", '{"city": "Brasilia"}'),
    ]
    fake.set_behavior(Behavior(tool_calls=calls, fragment=3))
    plain = client.chat.completions.create(model="command", messages=HI, tools=[WEATHER_TOOL])
    stream = client.chat.completions.create(model="command", messages=HI, tools=[WEATHER_TOOL], stream=True)
    rebuilt: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for piece in chunk.choices[0].delta.tool_calls or []:
            slot = rebuilt.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] += piece.id or ""
            slot["name"] += (piece.function.name if piece.function else None) or ""
            slot["arguments"] += (piece.function.arguments if piece.function else None) or ""
    expected = [(c.id, c.function.name, c.function.arguments) for c in plain.choices[0].message.tool_calls]
    assert [(v["id"], v["name"], v["arguments"]) for _, v in sorted(rebuilt.items())] == expected == calls
    assert finish == "tool_calls"


def test_an_image(client: openai.OpenAI, fake: FakeCohere) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake image").decode()
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": data_url}},
    ]
    resp = client.chat.completions.create(model="command", messages=[{"role": "user", "content": content}])
    assert resp.choices[0].message.content == Behavior().text
    assert fake.last().body["messages"][0]["content"] == content


def test_rate_limit_is_mapped_with_retry_after(client: openai.OpenAI, fake: FakeCohere) -> None:
    fake.enqueue(Behavior(status=429, error_message="trial key limit reached", headers={"retry-after": "9"}))
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="command", messages=HI)
    assert "trial key limit reached" in exc.value.message
    assert exc.value.response.headers["retry-after"] == "9"


def test_context_window_error_is_mapped(client: openai.OpenAI, fake: FakeCohere) -> None:
    message = "too many tokens: total number of tokens in the prompt cannot exceed 4081 - received 4928"
    fake.enqueue(Behavior(status=400, error_message=message))
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="command", messages=HI)
    assert exc.value.code == "context_length_exceeded"
    assert message in exc.value.message
    assert UPSTREAM_KEY not in str(exc.value.body)


def test_unsupported_parameter_is_a_400_naming_it(client: openai.OpenAI, fake: FakeCohere) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="command", messages=HI, logit_bias={"1": 5})
    assert exc.value.param == "logit_bias"
    assert not fake.requests


def _floats(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_embeddings_float_and_base64(client: openai.OpenAI, fake: FakeCohere) -> None:
    texts = ["the quick brown fox", "jumps"]
    floats = client.embeddings.create(model="embed", input=texts, encoding_format="float")
    assert [d.embedding for d in floats.data] == [vector_for(t) for t in texts]
    assert floats.usage.prompt_tokens == sum(embed_tokens(t) for t in texts)
    assert fake.last().body["input_type"] == "search_document"
    # The SDK's default asks for base64 and decodes it; ask for it raw as well.
    decoded = client.embeddings.create(model="embed", input="jumps")
    assert decoded.data[0].embedding == vector_for("jumps")
    raw = client.embeddings.create(model="embed", input="jumps", encoding_format="base64")
    assert _floats(raw.data[0].embedding) == vector_for("jumps")
    assert fake.last().body["embedding_types"] == ["float"]


def test_anthropic_messages_door_reaches_cohere(gw: GatewayProcess, fake: FakeCohere) -> None:
    fake.reset()
    fake.set_behavior(Behavior(text="Hi from Command via Messages.", billed_input=8, billed_output=6))
    ant = anthropic.Anthropic(base_url=gw.base_url, api_key=MASTER_KEY, max_retries=0, timeout=30)
    msg = ant.messages.create(
        model="command", max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.content[0].text == "Hi from Command via Messages."
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (8, 6)
    assert fake.last().body["messages"][0] == {"role": "system", "content": "Be brief."}
