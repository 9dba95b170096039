"""End to end: open models at Vertex AI's OpenAI-compatible endpoint (``vertex_ai/meta/...``) behind a
real gateway process, with the official openai SDK (chat) and anthropic SDK (``/v1/messages``). The
deployment signs in with a generated service-account key against the fake Google token endpoint
(``tests.support.fake_gemini``); ``tests.support.fake_vertex_openapi`` answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.support.fake_gemini import FakeGemini
from tests.support.fake_openai import Behavior
from tests.support.fake_vertex_openapi import FakeVertexOpenAPI
from tests.support.gateway_process import GatewayProcess, gateway_process

MASTER_KEY = "sk-master-vertex-openapi-e2e"
MODEL = "meta/llama-3.3-70b-instruct-maas"
PATH = "/v1/projects/maas-project/locations/us-central1/endpoints/openapi/chat/completions"
USER: Any = [{"role": "user", "content": "Weather in Oslo?"}]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FakeGemini, FakeVertexOpenAPI]]:
    with FakeGemini() as google, FakeVertexOpenAPI(google, models={MODEL}) as vertex:
        yield google, vertex


@pytest.fixture(scope="module")
def gw(
    servers: tuple[FakeGemini, FakeVertexOpenAPI], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    google, vertex = servers
    key_file = tmp_path_factory.mktemp("vertex-openapi") / "service-account.json"
    key_file.write_text(json.dumps(google.service_account(project="maas-project")))
    params = {"api_base": vertex.endpoint, "vertex_credentials": str(key_file)}
    config = {
        "model_list": [
            {"model_name": "llama", "litellm_params": {"model": f"vertex_ai/{MODEL}", **params}},
            {"model_name": "llama-off", "litellm_params": {"model": "vertex_ai/meta/llama-0-maas", **params}},
        ],
        "general_settings": {"master_key": MASTER_KEY},
        "router_settings": {"num_retries": 0},
    }
    with gateway_process(config) as g:
        yield g


@pytest.fixture
def fake(servers: tuple[FakeGemini, FakeVertexOpenAPI]) -> FakeVertexOpenAPI:
    servers[1].reset()
    return servers[1]


def oai(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)


def test_plain_chat_passes_the_body_through_with_the_bearer_token(
    gw: GatewayProcess, fake: FakeVertexOpenAPI
) -> None:
    answer = oai(gw).chat.completions.create(model="llama", messages=USER, temperature=0.2, seed=3)
    assert answer.choices[0].message.content == Behavior().text()
    assert answer.usage is not None and answer.usage.prompt_tokens == 7
    sent = fake.requests[-1]
    assert sent.path == PATH and sent.body["model"] == MODEL
    assert (sent.body["temperature"], sent.body["seed"]) == (0.2, 3)
    assert sent.headers["authorization"].startswith("Bearer ya29.")


def test_stream_and_tools(gw: GatewayProcess, fake: FakeVertexOpenAPI) -> None:
    fake.set_behavior(Behavior(content="Sunny and cold", chunks=3))
    text, usage = "", None
    for chunk in oai(gw).chat.completions.create(
        model="llama", messages=USER, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "Sunny and cold" and usage is not None and usage.prompt_tokens == 7

    arguments = '{"city": "Oslo"}'
    fake.set_behavior(Behavior(content="", tool_calls=[("call_1", "weather", arguments)]))
    pieces = ""
    for chunk in oai(gw).chat.completions.create(model="llama", messages=USER, tools=[WEATHER], stream=True):
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            pieces += (call.function.arguments or "") if call.function else ""
    assert json.loads(pieces) == {"city": "Oslo"}
    assert fake.requests[-1].body["tools"] == [WEATHER]


def test_anthropic_sdk_on_the_messages_door(gw: GatewayProcess, fake: FakeVertexOpenAPI) -> None:
    fake.set_behavior(Behavior(content="Hello from Llama."))
    client = anthropic.Anthropic(base_url=gw.base_url, api_key=MASTER_KEY, max_retries=0, timeout=30)
    message = client.messages.create(
        model="llama", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text == "Hello from Llama."  # type: ignore[union-attr]
    assert fake.requests[-1].path == PATH and fake.requests[-1].body["max_tokens"] == 64


def test_google_shaped_errors_are_mapped(gw: GatewayProcess, fake: FakeVertexOpenAPI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        oai(gw).chat.completions.create(model="llama-off", messages=USER)
    assert "meta/llama-0-maas" in exc.value.message and exc.value.code == "model_not_found"
