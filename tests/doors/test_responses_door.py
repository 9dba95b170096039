"""The /v1/responses door end to end: the official ``openai`` SDK against a real gateway process
routed to the fake OpenAI upstream (chat completions), with a real Postgres for stored responses."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.db import open_database
from gateway.doors.base import DoorCall
from gateway.doors.responses import ResponsesDoor
from gateway.errors import GatewayError
from gateway.pipeline import Principal
from gateway.responses_store import ResponseStore
from providers.formats import openai_chat
from providers.formats.sse import SSEDecoder
from tests.support.fake_openai import Behavior, FakeOpenAI
from tests.support.gateway_app import MASTER_KEY, admin, gateway_config, keyed_gateway
from tests.support.gateway_process import GatewayProcess

MODEL = "gpt-4o-mini"
TOOL = {
    "type": "function",
    "name": "weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gateway(fake_upstream: FakeOpenAI, database_url: str) -> Iterator[GatewayProcess]:
    with keyed_gateway(gateway_config(fake_upstream.base_url, models=[MODEL]), database_url) as gw:
        yield gw


@pytest.fixture(scope="module")
def team_keys(gateway: GatewayProcess) -> tuple[str, str, str]:
    """Two keys of team A and one of team B."""
    a = admin(gateway, "/team/new", {"team_alias": "resp-a"})["team_id"]
    b = admin(gateway, "/team/new", {"team_alias": "resp-b"})["team_id"]
    a1 = admin(gateway, "/key/generate", {"team_id": a})["key"]
    a2 = admin(gateway, "/key/generate", {"team_id": a})["key"]
    b1 = admin(gateway, "/key/generate", {"team_id": b})["key"]
    return a1, a2, b1


def _client(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)


def _store_directly(database_url: str, scope: str, items: list[Any], response: dict[str, Any]) -> None:
    async def save() -> None:
        db = await open_database(database_url)
        try:
            await ResponseStore(db.pool, 30).save(scope, items, response)
        finally:
            await db.close()

    asyncio.run(save())


def test_stored_response_routes_are_scoped_to_the_team(
    gateway: GatewayProcess, database_url: str, team_keys: tuple[str, str, str]
) -> None:
    a1, a2, b1 = team_keys
    team_a = httpx.get(
        f"{gateway.base_url}/key/info", params={"key": a1}, headers={"Authorization": f"Bearer {MASTER_KEY}"}
    )
    team_id = team_a.json()["info"]["team_id"]
    items = [
        {"id": f"msg_x_in{i}", "type": "message", "role": "user", "status": "completed",
         "content": [{"type": "input_text", "text": f"q{i}"}]}
        for i in range(3)
    ]  # fmt: skip
    response = {
        "id": "resp_direct1", "object": "response", "created_at": 1, "status": "completed", "model": MODEL,
        "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "previous_response_id": None,
    }  # fmt: skip
    _store_directly(database_url, f"team:{team_id}", items, response)

    # Another key of the same team reads it; input items in OpenAI's list shape, paged.
    got = _client(gateway, a2).responses.retrieve("resp_direct1")
    assert got.id == "resp_direct1" and got.status == "completed"
    page = _client(gateway, a2).responses.input_items.list("resp_direct1", limit=2, order="asc")
    assert [i.id for i in page.data] == ["msg_x_in0", "msg_x_in1"]
    assert page.has_more is True and page.first_id == "msg_x_in0" and page.last_id == "msg_x_in1"
    raw = httpx.get(
        f"{gateway.base_url}/v1/responses/resp_direct1/input_items",
        params={"after": "msg_x_in1"},
        headers={"Authorization": f"Bearer {a1}"},
    ).json()
    assert [i["id"] for i in raw["data"]] == ["msg_x_in0"]  # desc by default, after the cursor
    assert raw["object"] == "list" and raw["has_more"] is False

    # Team B: 404, for retrieve, input items and delete alike, and the row survives.
    other = _client(gateway, b1)
    for call in (
        lambda: other.responses.retrieve("resp_direct1"),
        lambda: other.responses.input_items.list("resp_direct1"),
        lambda: other.responses.delete("resp_direct1"),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["message"] == "Response with id 'resp_direct1' not found."  # type: ignore[index]
    # Bad paging is a 400 naming the parameter; no key is a 401.
    bad = httpx.get(
        f"{gateway.base_url}/v1/responses/resp_direct1/input_items",
        params={"limit": 0},
        headers={"Authorization": f"Bearer {a1}"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
    assert httpx.get(f"{gateway.base_url}/v1/responses/resp_direct1").status_code == 401

    # The owner deletes it; then it is gone.
    _client(gateway, a1).responses.delete("resp_direct1")
    with pytest.raises(openai.NotFoundError):
        _client(gateway, a1).responses.retrieve("resp_direct1")


def _events(gw: GatewayProcess, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream(
        "POST",
        f"{gw.base_url}/v1/responses",
        json={**body, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        assert resp.status_code == 200
        return [orjson.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]


def test_create_plain_and_retrieve(
    gateway: GatewayProcess, fake_upstream: FakeOpenAI, team_keys: tuple[str, str, str]
) -> None:
    a1, a2, b1 = team_keys
    fake_upstream.enqueue(Behavior(content="Paris is the capital.", prompt_tokens=11))
    client = _client(gateway, a1)
    resp = client.responses.create(model=MODEL, instructions="Be brief.", input="Capital of France?")
    assert resp.output_text == "Paris is the capital."
    assert resp.status == "completed" and resp.id.startswith("resp_")
    assert resp.usage is not None and (resp.usage.input_tokens, resp.usage.output_tokens) == (11, 3)
    sent = fake_upstream.requests[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    # Stored (store defaults to true): the team reads it back, the other team does not.
    assert _client(gateway, a2).responses.retrieve(resp.id).output_text == "Paris is the capital."
    items = _client(gateway, a2).responses.input_items.list(resp.id)
    assert [(i.type, i.content[0].text) for i in items.data] == [("message", "Capital of France?")]  # type: ignore[union-attr]
    with pytest.raises(openai.NotFoundError):
        _client(gateway, b1).responses.retrieve(resp.id)
    # store: false keeps nothing.
    fake_upstream.enqueue(Behavior(content="x"))
    unstored = client.responses.create(model=MODEL, input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_function_tool_round_trip_streamed_with_previous_response_id(
    gateway: GatewayProcess, fake_upstream: FakeOpenAI, team_keys: tuple[str, str, str]
) -> None:
    a1, _, b1 = team_keys
    client = _client(gateway, a1)
    fake_upstream.enqueue(
        Behavior(content="", tool_calls=[("call_w1", "weather", '{"city": "Oslo"}')], chunks=3)
    )
    with client.responses.stream(model=MODEL, input="Weather in Oslo?", tools=[TOOL]) as stream:  # type: ignore[list-item]
        kinds = [event.type for event in stream]
        first = stream.get_final_response()
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [("call_w1", "weather", '{"city": "Oslo"}')]
    assert fake_upstream.requests[-1].body["tools"][0]["function"]["name"] == "weather"

    # The tool's result, chained on the stored conversation.
    fake_upstream.enqueue(Behavior(content="It is sunny in Oslo."))
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_w1", "output": "sunny, 21C"}],
        tools=[TOOL],  # type: ignore[list-item]
    )
    assert second.output_text == "It is sunny in Oslo."
    assert second.previous_response_id == first.id
    upstream = fake_upstream.requests[-1].body["messages"]
    assert upstream == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21C"},
    ]
    # Another team cannot chain on it.
    with pytest.raises(openai.NotFoundError) as err:
        _client(gateway, b1).responses.create(model=MODEL, previous_response_id=first.id, input="and?")
    assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_stream_events_and_text(
    gateway: GatewayProcess, fake_upstream: FakeOpenAI, team_keys: tuple[str, str, str]
) -> None:
    a1, _, _ = team_keys
    fake_upstream.enqueue(Behavior(content="Hello there", chunks=2, prompt_tokens=5))
    events = _events(gateway, a1, {"model": MODEL, "input": "hi"})
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "Hello there"
    final = events[-1]
    assert final["type"] == "response.completed"
    assert final["response"]["usage"]["input_tokens"] == 5
    stored = _client(gateway, a1).responses.retrieve(final["response"]["id"])
    assert stored.output_text == "Hello there"


def test_bad_bodies_are_openai_shaped_400s(gateway: GatewayProcess, team_keys: tuple[str, str, str]) -> None:
    a1, _, _ = team_keys
    for body, param in [
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "input": [{"type": "item_reference", "id": "x"}]}, "input.0.type"),
        ({"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"model": MODEL, "input": "x", "store": "yes"}, "store"),
    ]:
        resp = httpx.post(
            f"{gateway.base_url}/v1/responses", json=body, headers={"Authorization": f"Bearer {a1}"}
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == param


def test_openai_agents_sdk_default_model_runs_a_tool_turn(
    gateway: GatewayProcess, fake_upstream: FakeOpenAI, team_keys: tuple[str, str, str]
) -> None:
    """The Agents SDK's default model is the Responses API: one tool call, its result, an answer."""
    import agents

    a1, _, _ = team_keys
    seen: list[str] = []

    @agents.function_tool
    def weather(city: str) -> str:
        """Weather in a city."""
        seen.append(city)
        return f"sunny in {city}"

    agents.set_default_openai_client(openai.AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key=a1))
    agents.set_tracing_disabled(True)
    fake_upstream.enqueue(Behavior(content="", tool_calls=[("call_a1", "weather", '{"city": "Oslo"}')]))
    fake_upstream.enqueue(Behavior(content="It is sunny in Oslo."))
    agent = agents.Agent(name="assistant", instructions="Use tools.", tools=[weather], model=MODEL)
    result = agents.Runner.run_sync(agent, "Weather in Oslo?")
    assert seen == ["Oslo"]
    assert result.final_output == "It is sunny in Oslo."
    last = fake_upstream.requests[-1].body["messages"]
    assert last[-1] == {"role": "tool", "tool_call_id": "call_a1", "content": "sunny in Oslo"}


# ---- the door's declarations, without a gateway ------------------------------------------------

DOOR = ResponsesDoor()
CALL = DoorCall(
    headers={}, principal=Principal("virtual", key_hash="h", team_id="t"), services=None, request_id="r"
)  # type: ignore[arg-type]


async def test_read_caches_only_unstored_unchained_requests() -> None:
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 9, "stream": True}
    stored = await DOOR.read(orjson.dumps(body), CALL)
    assert (stored.model, stored.stream, stored.cache_material) == (MODEL, True, None)
    assert stored.request is not None and stored.estimated_tokens > 9
    assert stored.state.scope == "team:t" and stored.state.response_id.startswith("resp_")
    unstored = await DOOR.read(orjson.dumps({**body, "store": False}), CALL)
    assert unstored.cache_material == {"model": MODEL, "input": "hi", "max_output_tokens": 9, "store": False}
    assert unstored.state.response_id != stored.state.response_id
    with pytest.raises(GatewayError) as err:
        await DOOR.read(b"[1]", CALL)
    assert err.value.status == 400


async def test_streamed_tool_call_from_an_openai_upstream_reads_back_in_the_sdk() -> None:
    """openai_chat.StreamParser (the adapter side) feeding this door's writer, checked by the SDK's types."""
    req = await DOOR.read(
        orjson.dumps({"model": MODEL, "input": "w?", "stream": True, "tools": [TOOL]}), CALL
    )
    parser = openai_chat.StreamParser()
    writer = DOOR.stream_writer(req)
    head = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}
    chunks: list[dict[str, Any]] = [
        {"id": "c", "created": 1, "model": "up", "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [head]}}]},
        {
            "id": "c",
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}
            ],
        },
        {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
    ]
    wire = b"".join(writer.write(e) for chunk in chunks for e in parser.feed(chunk)) + writer.end()
    adapter = TypeAdapter(ResponseStreamEvent)
    events = [adapter.validate_python(orjson.loads(ev.data)) for ev in SSEDecoder().feed(wire)]
    final = events[-1]
    assert final.type == "response.completed"
    calls = [item for item in final.response.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [("call_1", "weather", "{}")]
    assert final.response.usage is not None and final.response.usage.total_tokens == 6
    assert final.response.id == req.state.response_id and final.response.model == "up"


async def test_write_plain_and_stream_error_shapes() -> None:
    req = await DOOR.read(orjson.dumps({"model": MODEL, "input": "hi"}), CALL)
    answer = openai_chat.parse_response(
        {
            "id": "c",
            "created": 1,
            "model": "up",
            "choices": [{"message": {"content": "yo"}, "finish_reason": "stop"}],
        }
    )
    body = Response.model_validate(orjson.loads(DOOR.write(answer, req)))
    assert body.output_text == "yo" and body.id == req.state.response_id
    event = DOOR.stream_error(GatewayError(429, "slow down", code="rate_limited"))
    decoded = SSEDecoder().feed(event)
    assert decoded[0].event == "error"
    error = TypeAdapter(ResponseStreamEvent).validate_python(orjson.loads(decoded[0].data))
    assert (error.type, error.message, error.code) == ("error", "slow down", "rate_limited")
