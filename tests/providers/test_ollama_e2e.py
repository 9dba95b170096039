"""End to end: a real gateway process, the official openai SDK, a fake Ollama behind ``ollama/`` and
``ollama_chat/`` deployments."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from tests.support.fake_ollama import Behavior, FakeOllama, fake_embedding
from tests.support.gateway_process import GatewayProcess, gateway_process

MASTER_KEY = "sk-master-ollama-e2e"
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
MSG: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama(models={"llama3.2": {"tools", "vision"}, "all-minilm": {"embedding"}}) as fake:
        yield fake


@pytest.fixture(scope="module")
def gw(ollama: FakeOllama) -> Iterator[GatewayProcess]:
    def dep(name: str, model: str) -> dict[str, Any]:
        return {"model_name": name, "litellm_params": {"model": model, "api_base": ollama.base_url}}

    config = {
        "model_list": [
            dep("llama", "ollama/llama3.2"),
            dep("llama-chat", "ollama_chat/llama3.2"),
            dep("llama-failing", "ollama/llama3.2"),
            dep("missing", "ollama/llama9"),
            dep("minilm", "ollama/all-minilm"),
        ],
        "general_settings": {"master_key": MASTER_KEY},
        # One attempt per request: each test sees exactly what Ollama answered.
        "router_settings": {"num_retries": 0},
    }
    with gateway_process(config) as g:
        yield g


@pytest.fixture
def fake(ollama: FakeOllama) -> FakeOllama:
    ollama.reset()
    return ollama


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)


@pytest.mark.parametrize("model", ["llama", "llama-chat"])
def test_text_and_usage_as_ollama_counted(gw: GatewayProcess, fake: FakeOllama, model: str) -> None:
    resp = client(gw).chat.completions.create(model=model, messages=MSG, temperature=0.3, max_tokens=40)
    assert resp.choices[0].message.content == Behavior().text
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (26, Behavior().eval_count())
    sent = fake.requests[-1]
    assert sent.path == "/api/chat" and sent.body["model"] == "llama3.2"
    assert sent.body["options"] == {"temperature": 0.3, "num_predict": 40}


def test_stream_text_and_usage(gw: GatewayProcess, fake: FakeOllama) -> None:
    behavior = Behavior(text="The quick brown fox jumps over", fragment=4)
    fake.set_behavior(behavior)
    text, usage = "", None
    for chunk in client(gw).chat.completions.create(
        model="llama", messages=MSG, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == behavior.text
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (26, behavior.eval_count())


def test_tool_calls_plain_and_streamed_then_the_tool_result_turn(
    gw: GatewayProcess, fake: FakeOllama
) -> None:
    arguments = {"city": "Paris", "unit": "celsius"}
    fake.set_behavior(Behavior(text="", tool_calls=[("get_weather", arguments)]))
    c = client(gw)
    plain = c.chat.completions.create(model="llama", messages=MSG, tools=TOOLS)
    (call,) = plain.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and orjson.loads(call.function.arguments) == arguments
    assert call.id.startswith("call_") and plain.choices[0].finish_reason == "tool_calls"

    pieces: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in c.chat.completions.create(model="llama", messages=MSG, tools=TOOLS, stream=True):
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for tc in chunk.choices[0].delta.tool_calls or []:
            entry = pieces.setdefault(tc.index, {"name": "", "arguments": ""})
            entry["name"] += (tc.function.name or "") if tc.function else ""
            entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
    assert pieces == {0: {"name": "get_weather", "arguments": call.function.arguments}}
    assert finish == "tool_calls"

    fake.set_behavior(Behavior(text="It is sunny in Paris."))
    follow_up: list[Any] = [
        *MSG,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
    ]
    answer = c.chat.completions.create(model="llama", messages=follow_up, tools=TOOLS)
    assert answer.choices[0].message.content == "It is sunny in Paris."
    sent = fake.requests[-1].body["messages"]
    assert sent[1]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": arguments}}]
    assert sent[2] == {"role": "tool", "content": '{"sky": "sunny"}', "tool_name": "get_weather"}


def test_an_image_goes_as_base64(gw: GatewayProcess, fake: FakeOllama) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
    ]
    resp = client(gw).chat.completions.create(model="llama", messages=[{"role": "user", "content": content}])
    assert resp.choices[0].message.content == Behavior().text
    assert fake.requests[-1].body["messages"][0] == {
        "role": "user",
        "content": "What is this?",
        "images": [PIXEL],
    }


def test_errors_are_mapped(gw: GatewayProcess, fake: FakeOllama) -> None:
    c = client(gw)
    fake.enqueue(Behavior(status=400, error="the input length exceeds the context length"))
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="llama", messages=MSG)
    assert exc.value.code == "context_length_exceeded"
    assert exc.value.body["message"] == "the input length exceeds the context length"
    with pytest.raises(openai.NotFoundError) as nf:
        c.chat.completions.create(model="missing", messages=MSG)
    assert nf.value.code == "model_not_found" and 'model "llama9" not found' in nf.value.message
    fake.enqueue(Behavior(status=500, error="llama runner process has terminated"))
    with pytest.raises(openai.InternalServerError) as ise:
        c.chat.completions.create(model="llama-failing", messages=MSG)
    assert "llama runner process has terminated" in ise.value.message


def test_embeddings(gw: GatewayProcess, fake: FakeOllama) -> None:
    inputs = ["why is the sky blue", "grass"]
    resp = client(gw).embeddings.create(model="minilm", input=inputs)
    assert [d.embedding for d in resp.data] == [fake_embedding(t, 6) for t in inputs]
    assert resp.usage.prompt_tokens == 6  # the fake counts words
    assert fake.requests[-1].path == "/api/embed"
