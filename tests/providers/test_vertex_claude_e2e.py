"""End to end: Claude on Vertex AI (``vertex_ai/claude-*``) behind a real gateway process, with the
official openai SDK (chat) and anthropic SDK (``/v1/messages``) as clients. The deployment signs in
with a generated service-account key (google-auth's real flow against the fake Google token
endpoint of ``tests.support.fake_gemini``); the model answers from ``tests.support.fake_vertex_claude``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.support.fake_anthropic import Behavior
from tests.support.fake_gemini import FakeGemini
from tests.support.fake_vertex_claude import VERTEX_ANTHROPIC_VERSION, FakeVertexClaude
from tests.support.gateway_process import GatewayProcess, gateway_process

MASTER_KEY = "sk-master-vertex-claude-e2e"
MODEL = "claude-sonnet-4@20250514"
BASE_PATH = "/v1/projects/e2e-project/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514"
OSLO = {"city": "Oslo"}
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER: Any = {
    "type": "function",
    "function": {"name": "weather", "description": "Weather in a city", "parameters": WEATHER_SCHEMA},
}
USER: Any = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FakeGemini, FakeVertexClaude]]:
    with FakeGemini() as google, FakeVertexClaude(google, models={MODEL}) as vertex:
        yield google, vertex


@pytest.fixture(scope="module")
def gw(
    servers: tuple[FakeGemini, FakeVertexClaude], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    google, vertex = servers
    key_file = tmp_path_factory.mktemp("vertex-claude") / "service-account.json"
    key_file.write_text(json.dumps(google.service_account(project="e2e-project")))
    params = {"api_base": vertex.base_url, "vertex_credentials": str(key_file), "vertex_location": "us-east5"}
    config = {
        "model_list": [
            {"model_name": "claude", "litellm_params": {"model": f"vertex_ai/{MODEL}", **params}},
            {"model_name": "claude-off", "litellm_params": {"model": "vertex_ai/claude-opus-4@1", **params}},
        ],
        "general_settings": {"master_key": MASTER_KEY},
        "router_settings": {"num_retries": 0},
    }
    with gateway_process(config) as g:
        yield g


@pytest.fixture
def fake(servers: tuple[FakeGemini, FakeVertexClaude]) -> FakeVertexClaude:
    servers[1].reset()
    return servers[1]


def oai(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)


def test_plain_chat_goes_to_raw_predict_with_the_vertex_body(
    gw: GatewayProcess, fake: FakeVertexClaude
) -> None:
    answer = oai(gw).chat.completions.create(
        model="claude", messages=[{"role": "system", "content": "Be brief."}, *USER], max_tokens=100
    )
    assert answer.choices[0].message.content == Behavior().text
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        21,
        9,
    )
    sent = fake.requests[-1]
    assert sent.path == f"{BASE_PATH}:rawPredict"
    assert sent.body["anthropic_version"] == VERTEX_ANTHROPIC_VERSION and "model" not in sent.body
    assert sent.body["system"] == "Be brief." and sent.body["max_tokens"] == 100
    assert sent.headers["authorization"].startswith("Bearer ya29.") and "x-api-key" not in sent.headers


def test_stream_goes_to_stream_raw_predict(gw: GatewayProcess, fake: FakeVertexClaude) -> None:
    fake.set_behavior(Behavior(text="The quick brown fox", fragment=4))
    text, usage = "", None
    for chunk in oai(gw).chat.completions.create(
        model="claude", messages=USER, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "The quick brown fox"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (21, 9)
    assert (
        fake.requests[-1].path == f"{BASE_PATH}:streamRawPredict" and fake.requests[-1].body["stream"] is True
    )


def test_tools_plain_and_streamed(gw: GatewayProcess, fake: FakeVertexClaude) -> None:
    fake.set_behavior(Behavior(text="Checking.", tool_uses=[("toolu_1", "weather", OSLO)]))
    plain = oai(gw).chat.completions.create(model="claude", messages=USER, tools=[WEATHER])
    (call,) = plain.choices[0].message.tool_calls or []
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("toolu_1", "weather", OSLO)
    assert plain.choices[0].finish_reason == "tool_calls"
    assert fake.requests[-1].body["tools"][0]["input_schema"] == WEATHER_SCHEMA

    arguments, finish = "", None
    for chunk in oai(gw).chat.completions.create(model="claude", messages=USER, tools=[WEATHER], stream=True):
        for piece in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            arguments += piece.function.arguments or "" if piece.function else ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert json.loads(arguments) == OSLO and finish == "tool_calls"


def test_anthropic_sdk_on_messages_door(gw: GatewayProcess, fake: FakeVertexClaude) -> None:
    client = anthropic.Anthropic(base_url=gw.base_url, api_key=MASTER_KEY, max_retries=0, timeout=30)
    message = client.messages.create(
        model="claude", max_tokens=256, messages=[{"role": "user", "content": "hi"}], system="Be brief."
    )
    assert message.content[0].text == Behavior().text  # type: ignore[union-attr]
    assert message.usage.input_tokens == 21 and message.stop_reason == "end_turn"
    assert fake.requests[-1].body["system"] == "Be brief."
    with client.messages.stream(
        model="claude", max_tokens=256, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        final = s.get_final_message()
    assert final.content[0].text == Behavior().text  # type: ignore[union-attr]
    assert fake.requests[-1].path.endswith(":streamRawPredict")


def test_errors_in_both_shapes_are_mapped(gw: GatewayProcess, fake: FakeVertexClaude) -> None:
    # Anthropic's shape, from the model.
    fake.enqueue(
        Behavior(
            status=429, error_type="rate_limit_error", error_message="slow down", headers={"retry-after": "7"}
        )
    )
    with pytest.raises(openai.RateLimitError) as rate:
        oai(gw).chat.completions.create(model="claude", messages=USER)
    assert "slow down" in rate.value.message
    # Google's shape, from Vertex's front: a model not enabled in the project.
    with pytest.raises(openai.NotFoundError) as missing:
        oai(gw).chat.completions.create(model="claude-off", messages=USER)
    assert "Publisher Model" in missing.value.message and "claude-opus-4@1" in missing.value.message
    client = anthropic.Anthropic(base_url=gw.base_url, api_key=MASTER_KEY, max_retries=0, timeout=30)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(
            model="claude-off", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
