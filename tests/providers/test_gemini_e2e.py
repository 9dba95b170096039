"""End to end: a real gateway process in front of the fake Google server
(``tests.support.fake_gemini``) as ``gemini/`` and ``vertex_ai/`` deployments, with the official
openai SDK (and the anthropic SDK on ``/v1/messages``) as clients. The Vertex deployment signs in
with a generated service-account key file: google-auth's real flow against the fake's token
endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.support.fake_gemini import CONTEXT_WINDOW_MESSAGE, Behavior, FakeGemini, fake_embedding
from tests.support.gateway_process import GatewayProcess, gateway_process

MASTER_KEY = "sk-master-gemini-e2e"
UPSTREAM_KEY = "AIza-gemini-e2e-upstream-secret"
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
HI: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def gw(google: FakeGemini, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    key_file = tmp_path_factory.mktemp("vertex") / "service-account.json"
    key_file.write_text(json.dumps(google.service_account(project="e2e-project")))

    def gemini(name: str, model: str) -> dict[str, Any]:
        params = {"model": model, "api_base": google.base_url, "api_key": UPSTREAM_KEY}
        return {"model_name": name, "litellm_params": params}

    vertex_params = {
        "api_base": google.base_url,
        "vertex_credentials": str(key_file),
        "vertex_location": "us-east5",
    }
    config = {
        "model_list": [
            gemini("flash", "gemini/gemini-2.0-flash"),
            gemini("gemini-embed", "gemini/text-embedding-004"),
            {
                "model_name": "vertex-flash",
                "litellm_params": {"model": "vertex_ai/gemini-2.5-flash", **vertex_params},
            },
            {
                "model_name": "vertex-embed",
                "litellm_params": {"model": "vertex_ai/text-embedding-005", **vertex_params},
            },
        ],
        "general_settings": {"master_key": MASTER_KEY},
        # One attempt per request: each test sees exactly what Google answered.
        "router_settings": {"num_retries": 0},
    }
    with gateway_process(config) as g:
        yield g


@pytest.fixture
def fake(google: FakeGemini) -> FakeGemini:
    google.reset()
    return google


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)


@pytest.mark.parametrize("model", ["flash", "vertex-flash"])
def test_text_and_usage_as_google_counted(gw: GatewayProcess, fake: FakeGemini, model: str) -> None:
    fake.set_behavior(
        Behavior(text="Bonjour from Gemini.", prompt_tokens=13, candidates_tokens=5, cached_tokens=3)
    )
    resp = client(gw).chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, *HI],
        temperature=0.3,
        max_tokens=40,
    )
    assert resp.choices[0].message.content == "Bonjour from Gemini."
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (13, 5, 18)
    sent = fake.last()
    assert sent.body == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {"temperature": 0.3, "maxOutputTokens": 40},
    }
    if model == "flash":
        assert sent.path == "/v1beta/models/gemini-2.0-flash:generateContent"
        assert sent.headers["x-goog-api-key"] == UPSTREAM_KEY
    else:
        assert sent.path == (
            "/v1/projects/e2e-project/locations/us-east5/publishers/google/models/gemini-2.5-flash:generateContent"
        )
        assert sent.headers["authorization"].startswith("Bearer ya29.fake-")


@pytest.mark.parametrize("model", ["flash", "vertex-flash"])
def test_stream_text_and_usage(gw: GatewayProcess, fake: FakeGemini, model: str) -> None:
    behavior = Behavior(text="The quick brown fox jumps over the lazy dog", fragment=6, prompt_tokens=17)
    fake.set_behavior(behavior)
    text, usage, finish = "", None, None
    for chunk in client(gw).chat.completions.create(
        model=model, messages=HI, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == behavior.text and finish == "stop"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (
        17,
        behavior.candidates_tokens,
    )
    assert fake.last().query == "alt=sse"


def test_tool_calls_plain_and_streamed_then_the_tool_result_turn(
    gw: GatewayProcess, fake: FakeGemini
) -> None:
    arguments = {"city": "Paris", "unit": "celsius"}
    fake.set_behavior(Behavior(text="", tool_calls=[("get_weather", arguments)]))
    c = client(gw)
    plain = c.chat.completions.create(model="flash", messages=HI, tools=TOOLS, tool_choice="required")
    (call,) = plain.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and orjson.loads(call.function.arguments) == arguments
    assert plain.choices[0].finish_reason == "tool_calls"
    assert fake.last().body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    pieces: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in c.chat.completions.create(model="flash", messages=HI, tools=TOOLS, stream=True):
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
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
    ]
    answer = c.chat.completions.create(model="flash", messages=follow_up, tools=TOOLS)
    assert answer.choices[0].message.content == "It is sunny in Paris."
    contents = fake.last().body["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "get_weather", "args": arguments}}],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "sunny"}}}],
    }


def test_an_image_goes_inline(gw: GatewayProcess, fake: FakeGemini) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
    ]
    resp = client(gw).chat.completions.create(model="flash", messages=[{"role": "user", "content": content}])
    assert resp.choices[0].message.content == Behavior().text
    assert fake.last().body["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": PIXEL}},
    ]
    with pytest.raises(openai.BadRequestError) as exc:
        client(gw).chat.completions.create(
            model="flash",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}],
                }
            ],
        )
    assert "does not fetch image URLs" in exc.value.message


def test_errors_are_mapped(gw: GatewayProcess, fake: FakeGemini) -> None:
    c = client(gw)
    fake.enqueue(
        Behavior(status=429, message="Resource has been exhausted (e.g. check quota).", retry_delay="7s")
    )
    with pytest.raises(openai.RateLimitError) as limited:
        c.chat.completions.create(model="flash", messages=HI)
    assert limited.value.response.headers["retry-after"] == "7"
    assert "Resource has been exhausted" in limited.value.message
    fake.enqueue(Behavior(status=400, message=CONTEXT_WINDOW_MESSAGE))
    with pytest.raises(openai.BadRequestError) as too_long:
        c.chat.completions.create(model="flash", messages=HI)
    assert too_long.value.code == "context_length_exceeded"
    assert too_long.value.body["message"] == CONTEXT_WINDOW_MESSAGE
    fake.enqueue(Behavior(block_reason="SAFETY"))
    with pytest.raises(openai.BadRequestError) as blocked:
        c.chat.completions.create(model="flash", messages=HI, stream=True)
    assert blocked.value.code == "content_policy_violation" and "SAFETY" in blocked.value.message
    fake.enqueue(Behavior(status=503, message="The model is overloaded. Please try again later."))
    with pytest.raises(openai.APIStatusError) as overloaded:
        c.chat.completions.create(model="vertex-flash", messages=HI)
    assert overloaded.value.status_code == 503 and "overloaded" in overloaded.value.message
    assert UPSTREAM_KEY not in overloaded.value.message


@pytest.mark.parametrize("model", ["gemini-embed", "vertex-embed"])
def test_embeddings(gw: GatewayProcess, fake: FakeGemini, model: str) -> None:
    inputs = ["why is the sky blue", "grass"]
    resp = client(gw).embeddings.create(model=model, input=inputs, dimensions=4)
    assert [d.embedding for d in resp.data] == [fake_embedding(t, 4) for t in inputs]
    # Both count the tokens (the fake: one a word): usageMetadata on Gemini, statistics on Vertex.
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == 6
    assert fake.last().path.endswith(":batchEmbedContents" if model == "gemini-embed" else ":predict")


def test_anthropic_messages_door_reaches_gemini(gw: GatewayProcess, fake: FakeGemini) -> None:
    fake.set_behavior(Behavior(text="Hi from Gemini via Messages.", prompt_tokens=8, candidates_tokens=6))
    ant = anthropic.Anthropic(base_url=gw.base_url, api_key=MASTER_KEY, max_retries=0, timeout=30)
    msg = ant.messages.create(
        model="flash", max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.content[0].type == "text" and msg.content[0].text == "Hi from Gemini via Messages."
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (8, 6)
    assert msg.stop_reason == "end_turn"
    assert fake.last().body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}

    fake.set_behavior(Behavior(text="", tool_calls=[("get_weather", {"city": "Oslo"})]))
    tool = {"name": "get_weather", "input_schema": TOOLS[0]["function"]["parameters"]}
    with ant.messages.stream(
        model="vertex-flash", max_tokens=64, tools=[tool], messages=[{"role": "user", "content": "Oslo?"}]
    ) as stream:
        final = stream.get_final_message()
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert (use.name, use.input) == ("get_weather", {"city": "Oslo"}) and final.stop_reason == "tool_use"
