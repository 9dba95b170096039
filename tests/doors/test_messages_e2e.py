"""/v1/messages and /v1/messages/count_tokens with the official anthropic SDK, end to end.

A real gateway process (virtual keys in Postgres, in-process limits and cache) in front of the
fake OpenAI upstream: the door translates Anthropic's Messages API to OpenAI Chat and back, and
goes through the one pipeline like every door (budgets, limits, spend rows with the operation
"messages", free cache hits). Errors arrive in Anthropic's shape. The last tests route the door to
the local engine (the bundled SmolLM2; skipped only when its package is absent), where
count_tokens counts with the engine's tokenizer instead of estimating.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from gateway.doors.messages import estimate_input_tokens
from local_engine.loader.gguf import GGUFFile, build_tokenizer
from local_engine.models.default import DefaultModelMissing, default_model_path
from providers.formats import anthropic_messages
from tests.support.fake_openai import Behavior, FakeOpenAI
from tests.support.gateway_app import MASTER_KEY, gateway_config, keyed_gateway, new_key
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.spend_rows import spend_rows

MODEL = "gpt-4o-mini"
USER = [{"role": "user", "content": "What is the weather in Oslo?"}]
WEATHER = {
    "name": "weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gw(fake_upstream: FakeOpenAI, database_url: str) -> Iterator[GatewayProcess]:
    with keyed_gateway(gateway_config(fake_upstream.base_url, cache=True), database_url) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def local_gw() -> Iterator[GatewayProcess]:
    """A gateway serving the local engine (the bundled SmolLM2; skipped only when its package is absent)."""
    try:
        default_model_path()
    except DefaultModelMissing as exc:
        pytest.skip(str(exc))
    config = {
        "model_list": [
            {"model_name": "smollm2", "litellm_params": {"model": "local/smollm2", "max_model_len": 512}}
        ]
    }
    with gateway_process(config) as gateway:
        yield gateway


@pytest.fixture(autouse=True)
def _plain_upstream(fake_upstream: FakeOpenAI) -> Iterator[None]:
    fake_upstream.reset()
    yield
    fake_upstream.reset()


def _client(gw: GatewayProcess, key: str = MASTER_KEY, timeout: float = 60) -> anthropic.Anthropic:
    # The SDK posts to {base_url}/v1/messages with the key in x-api-key.
    return anthropic.Anthropic(base_url=gw.base_url, api_key=key, max_retries=0, timeout=timeout)


def test_create_plain_translates_both_ways(gw: GatewayProcess, fake_upstream: FakeOpenAI) -> None:
    message = _client(gw).messages.create(
        model=MODEL, max_tokens=20, system="Be brief.", messages=USER, stop_sequences=["END"]
    )
    assert message.type == "message" and message.role == "assistant"
    assert [(b.type, b.text) for b in message.content] == [("text", "chunk0 chunk1 chunk2 ")]  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 3)
    sent = fake_upstream.requests[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the weather in Oslo?"},
    ]
    assert (sent["model"], sent["max_tokens"], sent["stop"]) == ("gpt-4o-mini", 20, ["END"])


def test_stream_text_and_final_message(gw: GatewayProcess) -> None:
    with _client(gw).messages.stream(model=MODEL, max_tokens=20, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "chunk0 chunk1 chunk2 "
    assert [b.text for b in final.content] == [text]  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 3)


def test_tool_use_round_trip(gw: GatewayProcess, fake_upstream: FakeOpenAI) -> None:
    client = _client(gw)
    fake_upstream.enqueue(Behavior(content="", tool_calls=[("call_1", "weather", '{"city":"Oslo"}')]))
    first = client.messages.create(model=MODEL, max_tokens=50, messages=USER, tools=[WEATHER])  # type: ignore[list-item]
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert (use.id, use.name, use.input) == ("call_1", "weather", {"city": "Oslo"})
    upstream_tools = fake_upstream.requests[-1].body["tools"]
    assert upstream_tools[0]["function"]["name"] == "weather"
    assert upstream_tools[0]["function"]["parameters"] == WEATHER["input_schema"]

    fake_upstream.enqueue(Behavior(content="It is sunny in Oslo."))
    final = client.messages.create(
        model=MODEL,
        max_tokens=50,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            *USER,  # type: ignore[list-item]
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny, 21 C"}],
            },
        ],
    )
    assert [b.text for b in final.content] == ["It is sunny in Oslo."]  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    sent = fake_upstream.requests[-1].body["messages"]
    assert sent[1]["role"] == "assistant"
    assert [(c["id"], c["function"]["name"]) for c in sent[1]["tool_calls"]] == [("call_1", "weather")]
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}


def test_streamed_tool_use(gw: GatewayProcess, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.enqueue(
        Behavior(content="Let me check.", tool_calls=[("call_2", "weather", '{"city":"Bergen"}')])
    )
    with _client(gw).messages.stream(
        model=MODEL,
        max_tokens=50,
        messages=USER,
        tools=[WEATHER],  # type: ignore[list-item]
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[1].input == {"city": "Bergen"}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"


def test_count_tokens_needs_a_key_and_model_access(gw: GatewayProcess) -> None:
    body: dict[str, Any] = {"model": MODEL, "system": "Be brief.", "messages": USER, "tools": [WEATHER]}
    counted = _client(gw).messages.count_tokens(**body)
    expected = estimate_input_tokens(anthropic_messages.parse_request(body, require_max_tokens=False))
    assert counted.input_tokens == expected > 0
    with pytest.raises(anthropic.AuthenticationError) as denied:
        _client(gw, "sk-wrong").messages.count_tokens(**body)
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    limited = new_key(gw, models=["gpt-4o"])["key"]
    with pytest.raises(anthropic.PermissionDeniedError):
        _client(gw, limited).messages.count_tokens(**body)
    with pytest.raises(anthropic.NotFoundError):
        _client(gw).messages.count_tokens(**{**body, "model": "no-such-model"})


def test_errors_are_anthropic_shaped(gw: GatewayProcess, fake_upstream: FakeOpenAI) -> None:
    with pytest.raises(anthropic.AuthenticationError) as denied:
        _client(gw, "sk-wrong").messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert denied.value.body == {  # type: ignore[comparison-overlap]
        "type": "error",
        "error": {"type": "authentication_error", "message": denied.value.body["error"]["message"]},  # type: ignore[index]
    }
    with pytest.raises(anthropic.NotFoundError) as missing:
        _client(gw).messages.create(model="no-such-model", max_tokens=5, messages=USER)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "no-such-model" in missing.value.body["error"]["message"]  # type: ignore[index]

    # A bad body names its field (Anthropic's shape has no ``param``); bearer auth works too.
    bad = httpx.post(
        gw.base_url + "/v1/messages",
        json={"model": MODEL, "messages": USER},
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=30,
    )
    assert bad.status_code == 400
    assert bad.json()["type"] == "error" and bad.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in bad.json()["error"]["message"]

    # An upstream's refusal keeps its status, in this door's shape.
    fake_upstream.enqueue(
        Behavior(status=400, error_message="upstream says no", error_type="invalid_request_error")
    )
    with pytest.raises(anthropic.BadRequestError) as refused:
        _client(gw).messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert refused.value.body["type"] == "error"  # type: ignore[index]
    assert "upstream says no" in refused.value.body["error"]["message"]  # type: ignore[index]


def test_a_stream_broken_upstream_ends_with_an_error_event(
    gw: GatewayProcess, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.enqueue(Behavior(fail_after_chunks=1))
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as broken:
        with _client(gw).messages.stream(model=MODEL, max_tokens=20, messages=USER) as stream:
            for text in stream.text_stream:
                received.append(text)
    assert received == ["chunk0 "]  # the part sent before the failure
    assert broken.value.body["type"] == "error"  # type: ignore[index]
    assert broken.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_limits_count_and_a_key_over_budget_is_refused(gw: GatewayProcess) -> None:
    limited = _client(gw, new_key(gw, rpm_limit=2)["key"])
    for _ in range(2):
        limited.messages.create(model=MODEL, max_tokens=5, messages=USER)
    with pytest.raises(anthropic.RateLimitError) as slow:
        limited.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert slow.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(slow.value.response.headers["retry-after"]) >= 1

    broke = _client(gw, new_key(gw, max_budget=0.000001)["key"])
    broke.messages.create(model=MODEL, max_tokens=5, messages=USER)  # spends more than the budget
    deadline = time.monotonic() + 30
    with pytest.raises(anthropic.BadRequestError) as refused:
        while time.monotonic() < deadline:  # the spend is written in the background
            broke.messages.create(model=MODEL, max_tokens=5, messages=USER)
            time.sleep(0.2)
    assert refused.value.body["error"]["type"] == "billing_error"  # type: ignore[index]


def test_spend_rows_match_what_clients_received_and_cache_hits_are_free(
    gw: GatewayProcess, fake_upstream: FakeOpenAI, database_url: str
) -> None:
    created = new_key(gw)
    client = _client(gw, created["key"])
    # Cached only at temperature 0; this SDK takes ``temperature`` as an extra (no parameter).
    ask: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 20,
        "extra_body": {"temperature": 0},
        "messages": [{"role": "user", "content": f"cache me {time.monotonic_ns()}"}],
    }
    first = client.messages.with_raw_response.create(**ask)
    with client.messages.stream(model=MODEL, max_tokens=10, messages=USER) as stream:
        streamed = stream.get_final_message()
    upstream_calls = len(fake_upstream.requests)
    again = client.messages.with_raw_response.create(**ask)
    assert again.headers.get("x-switchyard-cache") == "hit"
    # A stream of the same request is replayed from the cached plain answer.
    with client.messages.stream(**ask) as replay:
        replayed = replay.get_final_message()
    assert len(fake_upstream.requests) == upstream_calls  # both answered without the upstream
    texts = [[b.text for b in m.content] for m in (first.parse(), again.parse(), replayed)]  # type: ignore[union-attr]
    assert texts == [["chunk0 chunk1 chunk2 "]] * 3
    assert replayed.usage.output_tokens == first.parse().usage.output_tokens

    rows = spend_rows(database_url, created["token"], 4)
    assert [r["operation"] for r in rows] == ["messages"] * 4
    assert [r["cache_hit"] for r in rows] == [False, False, True, True]
    for row, message in zip(rows[:2], (first.parse(), streamed), strict=True):
        sent = (message.usage.input_tokens, message.usage.output_tokens)
        assert (row["prompt_tokens"], row["completion_tokens"]) == sent
        assert float(row["spend"]) == pytest.approx(sent[0] * 1e-6 + sent[1] * 2e-6)
    assert [(float(r["spend"]), r["prompt_tokens"]) for r in rows[2:]] == [(0.0, 0), (0.0, 0)]


def test_routed_to_the_local_engine(local_gw: GatewayProcess) -> None:
    client = _client(local_gw, "unused", timeout=240)
    ask: dict[str, Any] = {
        "model": "smollm2",
        "max_tokens": 4,
        "extra_body": {"temperature": 0},  # greedy (the SDK takes it as an extra)
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    plain = client.messages.create(**ask)
    assert plain.content[0].type == "text" and plain.content[0].text  # type: ignore[union-attr]
    assert plain.stop_reason in ("end_turn", "max_tokens")
    assert plain.usage.input_tokens > 0 and 0 < plain.usage.output_tokens <= 4
    with client.messages.stream(**ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    # Greedy decoding: the stream says what the plain answer said.
    assert text == plain.content[0].text  # type: ignore[union-attr]
    assert final.usage.output_tokens == plain.usage.output_tokens


def test_count_tokens_on_the_local_engine_is_its_tokenizer_count(local_gw: GatewayProcess) -> None:
    client = _client(local_gw, "unused", timeout=240)
    system, question = "Answer in one word.", "Which city is the capital of Norway, and why is it there?"
    asked: dict[str, Any] = {
        "model": "smollm2",
        "system": system,
        "messages": [{"role": "user", "content": question}],
    }
    counted = client.messages.count_tokens(**asked).input_tokens

    # The engine's own tokenizer and chat template, read from the model file.
    tokenizer = build_tokenizer(GGUFFile(default_model_path()))
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": question}],
        add_generation_prompt=True,
    )
    assert counted == len(tokenizer.encode(prompt))
    # What a generation of the same message reports as its input.
    created = client.messages.create(**asked, max_tokens=1)
    assert created.usage.input_tokens == counted
    # Not the estimate other upstreams get (so the check above tells the two apart).
    assert counted != estimate_input_tokens(anthropic_messages.parse_request(asked, require_max_tokens=False))
