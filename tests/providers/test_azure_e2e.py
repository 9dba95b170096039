"""End to end: a real gateway process, the official openai SDK, a fake Azure service behind ``azure/`` and
``azure_ai/`` deployments."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.fake_azure import (
    AD_TOKEN,
    API_KEY,
    FakeAzure,
    content_filter_error,
    context_window_error,
    rate_limited,
)
from tests.support.fake_entra import CLIENT_ID, CLIENT_SECRET, TENANT, FakeEntra
from tests.support.fake_openai import Behavior, fake_embedding
from tests.support.gateway_process import GatewayProcess, gateway_process

MASTER_KEY = "sk-master-azure-e2e"
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
def entra() -> Iterator[FakeEntra]:
    with FakeEntra() as fake:
        yield fake


@pytest.fixture(scope="module")
def azure(entra: FakeEntra) -> Iterator[FakeAzure]:
    with FakeAzure(
        deployments={"gpt4o-prod", "embed-prod"}, ai_models={"mistral-large"}, entra=entra
    ) as fake:
        yield fake


@pytest.fixture(scope="module")
def gw(azure: FakeAzure, entra: FakeEntra) -> Iterator[GatewayProcess]:
    def dep(name: str, model: str, dep_id: str, **params: Any) -> dict[str, Any]:
        return {
            "model_name": name,
            "litellm_params": {"model": model, **params},
            "model_info": {"id": dep_id},
        }

    base = {"api_base": azure.endpoint, "api_key": API_KEY, "api_version": "2024-10-21"}
    config = {
        "model_list": [
            dep("az", "azure/gpt4o-prod", "az-0", **base),
            dep("az-limited", "azure/gpt4o-prod", "az-limited-0", **base),
            dep(
                "az-entra", "azure/gpt4o-prod", "az-entra-0", api_base=azure.endpoint, azure_ad_token=AD_TOKEN
            ),
            dep(
                "az-sp",
                "azure/gpt4o-prod",
                "az-sp-0",
                api_base=azure.endpoint,
                tenant_id=TENANT,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
            ),
            dep("az-embed", "azure/embed-prod", "az-embed-0", **base),
            dep("az-ai", "azure_ai/mistral-large", "az-ai-0", api_base=azure.ai_endpoint, api_key=API_KEY),
        ],
        "general_settings": {"master_key": MASTER_KEY},
        # One attempt per request: each test sees exactly what Azure answered.
        "router_settings": {"num_retries": 0},
    }
    with gateway_process(config, env={"AZURE_AUTHORITY_HOST": entra.authority}) as g:
        yield g
        assert CLIENT_SECRET not in g.logs()  # the service principal's secret is never logged


@pytest.fixture
def fake(azure: FakeAzure) -> FakeAzure:
    azure.reset()
    return azure


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)


def test_text_and_usage_as_azure_answered(gw: GatewayProcess, fake: FakeAzure) -> None:
    resp = client(gw).chat.completions.create(model="az", messages=MSG)
    assert resp.choices[0].message.content == Behavior().text()
    assert resp.usage is not None and (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (7, 3)
    # Azure's own fields arrive untouched: the bytes were passed through.
    raw = httpx.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": "az", "messages": MSG},
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        timeout=30,
    ).json()
    assert raw["prompt_filter_results"][0]["content_filter_results"]["hate"]["severity"] == "safe"
    sent = fake.requests[-1]
    assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert sent.headers["api-key"] == API_KEY


def test_stream_text_and_usage(gw: GatewayProcess, fake: FakeAzure) -> None:
    fake.set_behavior(Behavior(content="The quick brown fox jumps", chunks=5))
    text, usage = "", None
    for chunk in client(gw).chat.completions.create(
        model="az", messages=MSG, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "The quick brown fox jumps"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (7, 5)


def test_tool_calls_plain_and_streamed_then_the_tool_result_turn(gw: GatewayProcess, fake: FakeAzure) -> None:
    arguments = '{"city": "Paris", "unit": "celsius"}'
    fake.set_behavior(Behavior(content="", tool_calls=[("call_az1", "get_weather", arguments)]))
    c = client(gw)
    plain = c.chat.completions.create(model="az", messages=MSG, tools=TOOLS)
    (call,) = plain.choices[0].message.tool_calls or []
    assert (call.id, call.function.name, call.function.arguments) == ("call_az1", "get_weather", arguments)
    assert plain.choices[0].finish_reason == "tool_calls"

    pieces: dict[int, dict[str, str]] = {}
    for chunk in c.chat.completions.create(model="az", messages=MSG, tools=TOOLS, stream=True):
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = pieces.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += tc.id or ""
            entry["name"] += (tc.function.name or "") if tc.function else ""
            entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
    assert pieces == {0: {"id": "call_az1", "name": "get_weather", "arguments": arguments}}

    fake.set_behavior(Behavior(content="It is sunny in Paris."))
    follow_up: list[Any] = [
        *MSG,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": "call_az1", "content": '{"sky": "sunny"}'},
    ]
    answer = c.chat.completions.create(model="az", messages=follow_up, tools=TOOLS)
    assert answer.choices[0].message.content == "It is sunny in Paris."
    assert fake.requests[-1].body["messages"][2] == follow_up[2]


def test_an_image_passes_through(gw: GatewayProcess, fake: FakeAzure) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}", "detail": "low"}},
    ]
    resp = client(gw).chat.completions.create(model="az", messages=[{"role": "user", "content": content}])
    assert resp.choices[0].message.content == Behavior().text()
    assert fake.requests[-1].body["messages"][0]["content"] == content


def test_rate_limit_keeps_retry_after(gw: GatewayProcess, fake: FakeAzure) -> None:
    fake.enqueue(rate_limited(7))
    with pytest.raises(openai.RateLimitError) as exc:
        client(gw).chat.completions.create(model="az-limited", messages=MSG)
    assert exc.value.status_code == 429
    assert exc.value.response.headers["retry-after"] == "7"
    assert "retry after 7 seconds" in exc.value.message


def test_context_window_and_content_filter_errors(gw: GatewayProcess, fake: FakeAzure) -> None:
    c = client(gw)
    fake.enqueue(context_window_error())
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="az", messages=MSG)
    assert exc.value.code == "context_length_exceeded" and "maximum context length" in exc.value.message
    fake.enqueue(content_filter_error())
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="az", messages=MSG, stream=True)
    assert exc.value.code == "content_filter" and "content management policy" in exc.value.message


def test_entra_id_token_deployment(gw: GatewayProcess, fake: FakeAzure) -> None:
    resp = client(gw).chat.completions.create(model="az-entra", messages=MSG)
    assert resp.choices[0].message.content == Behavior().text()
    assert fake.requests[-1].headers["authorization"] == f"Bearer {AD_TOKEN}"


def test_service_principal_deployment_plain_and_streamed(
    gw: GatewayProcess, fake: FakeAzure, entra: FakeEntra
) -> None:
    c = client(gw)
    resp = c.chat.completions.create(model="az-sp", messages=MSG)
    assert resp.choices[0].message.content == Behavior().text()
    chunks = list(c.chat.completions.create(model="az-sp", messages=MSG, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == Behavior().text()
    bearer = fake.requests[-1].headers["authorization"].removeprefix("Bearer ")
    assert entra.accepts(bearer) and len(entra.token_requests) == 1


def test_embeddings(gw: GatewayProcess, fake: FakeAzure) -> None:
    inputs = ["why is the sky blue", "grass"]
    resp = client(gw).embeddings.create(model="az-embed", input=inputs)
    assert [d.embedding for d in resp.data] == [fake_embedding(t, 8) for t in inputs]
    assert resp.usage.prompt_tokens == 6  # the fake counts words
    assert fake.requests[-1].path == "/openai/deployments/embed-prod/embeddings"


def test_azure_ai_text_and_stream(gw: GatewayProcess, fake: FakeAzure) -> None:
    c = client(gw)
    resp = c.chat.completions.create(model="az-ai", messages=MSG)
    assert resp.choices[0].message.content == Behavior().text()
    assert fake.requests[-1].path == "/models/chat/completions"
    assert fake.requests[-1].body["model"] == "mistral-large"
    fake.set_behavior(Behavior(chunks=4))
    text, usage = "", None
    for chunk in c.chat.completions.create(
        model="az-ai", messages=MSG, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == Behavior(chunks=4).text()
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (7, 4)
