"""/v1/responses through the one pipeline, as every door: a key over budget is refused, limits
count, spend rows match what the client received (operation "responses"), cache hits are free, and
a stored response is written before the client has the answer.

A real gateway process (virtual keys and stored responses in Postgres, in-process limits and
cache, prices per token) in front of the fake OpenAI upstream; the official ``openai`` SDK as client.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import asyncpg
import openai
import pytest

from tests.support.fake_openai import Behavior, FakeOpenAI
from tests.support.gateway_app import INPUT_COST, OUTPUT_COST, gateway_config, keyed_gateway, new_key
from tests.support.gateway_process import GatewayProcess
from tests.support.spend_rows import spend_rows

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def gateway(fake_upstream: FakeOpenAI, database_url: str) -> Iterator[GatewayProcess]:
    config = gateway_config(fake_upstream.base_url, models=[MODEL], cache=True)
    with keyed_gateway(config, database_url) as gw:
        yield gw


def _client(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)


def test_spend_rows_match_what_the_client_received_and_cache_hits_are_free(
    gateway: GatewayProcess, fake_upstream: FakeOpenAI, database_url: str
) -> None:
    created = new_key(gateway)
    client = _client(gateway, created["key"])
    fake_upstream.enqueue(Behavior(content="plain answer", chunks=2, prompt_tokens=11))
    plain = client.responses.create(model=MODEL, input="count me")
    fake_upstream.enqueue(Behavior(content="streamed answer", chunks=4, prompt_tokens=13))
    with client.responses.stream(model=MODEL, input="count me too") as stream:
        streamed = stream.get_final_response()

    # store: false without previous_response_id is cacheable (at temperature 0, as on every
    # door): the second call is a free hit.
    ask = {"model": MODEL, "input": f"cache me {time.monotonic_ns()}", "store": False, "temperature": 0}
    fake_upstream.enqueue(Behavior(content="cached answer", chunks=3, prompt_tokens=5))
    first = client.responses.with_raw_response.create(**ask)
    upstream_calls = len(fake_upstream.requests)
    again = client.responses.with_raw_response.create(**ask)
    assert again.headers.get("x-switchyard-cache") == "hit"
    assert len(fake_upstream.requests) == upstream_calls  # answered without the upstream
    assert again.parse().output_text == first.parse().output_text == "cached answer"

    rows = spend_rows(database_url, created["token"], 4)
    assert [r["operation"] for r in rows] == ["responses"] * 4
    assert [r["status"] for r in rows] == ["success"] * 4
    assert [r["stream"] for r in rows] == [False, True, False, False]
    for row, answer in zip(rows[:3], (plain, streamed, first.parse()), strict=True):
        assert answer.usage is not None
        sent = (answer.usage.input_tokens, answer.usage.output_tokens)
        assert (row["prompt_tokens"], row["completion_tokens"]) == sent
        assert float(row["spend"]) == pytest.approx(sent[0] * INPUT_COST + sent[1] * OUTPUT_COST)
        assert row["cache_hit"] is False
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows[:3]] == [(11, 2), (13, 4), (5, 3)]
    hit = rows[3]
    assert (hit["cache_hit"], float(hit["spend"]), hit["prompt_tokens"], hit["completion_tokens"]) == (
        True,
        0.0,
        0,
        0,
    )


def test_limits_count_and_a_key_over_budget_is_refused(gateway: GatewayProcess) -> None:
    limited = _client(gateway, new_key(gateway, rpm_limit=2)["key"])
    limited.responses.create(model=MODEL, input="one")
    limited.responses.create(model=MODEL, input="two", stream=True).close()
    with pytest.raises(openai.RateLimitError) as limit:
        limited.responses.create(model=MODEL, input="three")
    assert limit.value.body["type"] == "requests"  # type: ignore[index]  # the RPM limit, as OpenAI names it

    broke = _client(gateway, new_key(gateway, max_budget=0.000001)["key"])
    broke.responses.create(model=MODEL, input="spend more than the budget")
    deadline = time.monotonic() + 30
    with pytest.raises(openai.BadRequestError) as refused:
        while time.monotonic() < deadline:  # the spend is written in the background
            broke.responses.create(model=MODEL, input="and again")
            time.sleep(0.2)
    assert refused.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    # A stream is refused the same way, before it starts.
    with pytest.raises(openai.BadRequestError) as streamed:
        broke.responses.create(model=MODEL, input="stream it", stream=True)
    assert streamed.value.body["code"] == "budget_exceeded"  # type: ignore[index]


# ---- a stored response exists before the client has the answer --------------------------------


async def _insert_waits(conn: asyncpg.Connection) -> None:
    """Until a write to stored_responses waits on the lock this test holds."""
    waiting = (
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
        " WHERE c.relname = 'stored_responses' AND NOT l.granted"
    )
    while True:
        if await conn.fetchval(waiting):
            return
        await asyncio.sleep(0.02)  # Postgres has no notification for a lock wait: poll it


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_the_response_is_stored_before_the_client_receives_it(
    gateway: GatewayProcess, database_url: str, stream: bool
) -> None:
    """Holding a lock that blocks the store's INSERT, the client must not have the answer (the
    plain body, or a stream's ``response.completed``) until the row is written: a client calling
    retrieve or previous_response_id right after create must find it."""
    key = new_key(gateway)["key"]
    received: list[str] = []  # the stream's event types, as they arrive
    answered = threading.Event()  # the plain body, or the stream's response.completed, arrived

    def create() -> str:
        client = _client(gateway, key)
        if not stream:
            response_id = client.responses.create(model=MODEL, input="store me first").id
            answered.set()
            return response_id
        final = ""
        for event in client.responses.create(model=MODEL, input="store me first", stream=True):
            received.append(event.type)
            if event.type == "response.completed":
                final = event.response.id
                answered.set()
        return final

    holder = await asyncpg.connect(database_url)
    watcher = await asyncpg.connect(database_url)
    try:
        tx = holder.transaction()
        await tx.start()
        # SHARE mode lets reads through but makes every INSERT wait.
        await holder.execute("LOCK TABLE stored_responses IN SHARE MODE")
        result: list[str] = []
        task = asyncio.ensure_future(asyncio.to_thread(lambda: result.append(create())))
        try:
            await asyncio.wait_for(_insert_waits(watcher), 30)
            # While the row cannot be written the answer must not arrive: a grace second for an
            # answer sent before the write (never set when the write comes first, so no flakiness).
            early = await asyncio.to_thread(answered.wait, 1.0)
            assert not early, "the client had the answer before it was stored"
        finally:
            await tx.rollback()  # releases the lock
        await asyncio.wait_for(task, 30)
    finally:
        await holder.close()
        await watcher.close()
    response_id = result[0]
    assert response_id.startswith("resp_")
    assert _client(gateway, key).responses.retrieve(response_id).id == response_id
    if stream:
        assert received[0] == "response.created" and received[-1] == "response.completed"
