"""The response cache through two real gateway processes sharing one Redis, with the openai SDK."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest

from tests.support.fake_openai import Behavior
from tests.support.limits_cache_gateways import MASTER_KEY, GatewayPair

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "gpt-cache"
TEXT = "The quick brown fox jumps over the lazy dog, and then " * 4


def question() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {uuid.uuid4().hex}"}]


def sdk(base_url: str, key: str = MASTER_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)


def upstream_calls(pair: GatewayPair, messages: list[dict[str, str]]) -> int:
    return sum(1 for r in pair.fake.requests if r.body.get("messages") == messages)


async def eventually(check: Callable[[], Awaitable[Any]], what: str, tries: int = 100) -> Any:
    """Stores (and spend rows) are written in the background: poll briefly for them to land."""
    for _ in range(tries):
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.02)
    pytest.fail(f"never happened: {what}")


@pytest.fixture(autouse=True)
def _content(gateway_pair: GatewayPair) -> None:
    gateway_pair.fake.set_behavior(Behavior(content=TEXT, chunks=9), model=MODEL)


async def test_hit_on_another_instance_returns_the_stored_bytes(gateway_pair: GatewayPair) -> None:
    a, b = sdk(gateway_pair.a.base_url), sdk(gateway_pair.b.base_url)
    msgs = question()
    first = await a.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, temperature=0)
    assert first.headers.get("x-switchyard-cache") != "hit"

    async def hit() -> Any:
        r = await b.chat.completions.with_raw_response.create(
            model=MODEL, messages=msgs, temperature=0, user="someone-else"
        )
        return r if r.headers.get("x-switchyard-cache") == "hit" else None

    second = await eventually(hit, "a cache hit on the second gateway")
    assert second.http_response.content == first.http_response.content
    assert len(second.headers["x-switchyard-cache-key"]) == 64
    assert upstream_calls(gateway_pair, msgs) == 1
    assert second.parse().choices[0].message.content == TEXT


async def test_streamed_answer_is_stored_and_replayed_as_a_stream(gateway_pair: GatewayPair) -> None:
    a, b = sdk(gateway_pair.a.base_url), sdk(gateway_pair.b.base_url)
    msgs = question()
    stream = await a.chat.completions.create(model=MODEL, messages=msgs, temperature=0, stream=True)
    original = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert original == TEXT

    async def replay() -> Any:
        raw = await b.chat.completions.with_raw_response.create(
            model=MODEL, messages=msgs, temperature=0, stream=True, stream_options={"include_usage": True}
        )
        if raw.headers.get("x-switchyard-cache") != "hit":
            async for _ in raw.parse():  # drain the miss
                pass
            return None
        assert raw.headers["content-type"].startswith("text/event-stream")
        return [c async for c in raw.parse()]

    chunks = await eventually(replay, "a streamed cache hit")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == original
    assert len([c for c in chunks if c.choices]) > 2  # replayed as a real stream of chunks
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # The same entry answers a non-streamed request too.
    plain = await a.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, temperature=0)
    assert plain.headers.get("x-switchyard-cache") == "hit"
    assert plain.parse().choices[0].message.content == original
    assert upstream_calls(gateway_pair, msgs) == 1


async def test_cache_control_no_cache_no_store_and_temperature(gateway_pair: GatewayPair) -> None:
    a = sdk(gateway_pair.a.base_url)
    msgs = question()
    # no-store: answered, but not kept.
    await a.chat.completions.create(
        model=MODEL, messages=msgs, temperature=0, extra_body={"cache": {"no-store": True}}
    )
    await asyncio.sleep(0.2)
    r = await a.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, temperature=0)
    assert r.headers.get("x-switchyard-cache") != "hit"
    assert upstream_calls(gateway_pair, msgs) == 2

    async def hit() -> bool:
        r = await a.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, temperature=0)
        return r.headers.get("x-switchyard-cache") == "hit"

    await eventually(hit, "the stored answer")
    calls = upstream_calls(gateway_pair, msgs)
    # Cache-Control: no-cache goes upstream even though an entry exists.
    r = await a.chat.completions.with_raw_response.create(
        model=MODEL, messages=msgs, temperature=0, extra_headers={"Cache-Control": "no-cache"}
    )
    assert r.headers.get("x-switchyard-cache") != "hit"
    assert upstream_calls(gateway_pair, msgs) == calls + 1
    # Temperature > 0 (or unset: OpenAI's default is 1) is not cached by default.
    warm = question()
    for _ in range(2):
        await a.chat.completions.create(model=MODEL, messages=warm, temperature=0.8)
    await asyncio.sleep(0.2)
    r = await a.chat.completions.with_raw_response.create(model=MODEL, messages=warm, temperature=0.8)
    assert r.headers.get("x-switchyard-cache") != "hit"
    assert upstream_calls(gateway_pair, warm) == 3


async def test_no_hit_across_teams_but_hits_within_a_team(gateway_pair: GatewayPair) -> None:
    gw = gateway_pair
    team_a, team_b = gw.new_team(), gw.new_team()
    a1 = sdk(gw.a.base_url, gw.new_key(team_id=team_a))
    a2_key = gw.new_key(team_id=team_a)
    a2 = sdk(gw.b.base_url, a2_key)
    b1 = sdk(gw.b.base_url, gw.new_key(team_id=team_b))
    lone = sdk(gw.a.base_url, gw.new_key())
    msgs = question()
    await a1.chat.completions.create(model=MODEL, messages=msgs, temperature=0)

    async def hit() -> bool:
        r = await a2.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, temperature=0)
        return r.headers.get("x-switchyard-cache") == "hit"

    await eventually(hit, "a hit for another key of the same team")
    for other in (b1, lone):
        r = await other.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, temperature=0)
        assert r.headers.get("x-switchyard-cache") != "hit"
    assert upstream_calls(gateway_pair, msgs) == 3

    # The hit cost nothing: its spend row says cache_hit, with no tokens and no spend.
    async def hit_logged() -> Any:
        rows = gw.admin_get("/spend/logs", api_key=a2_key)
        return [r for r in rows if r["cache_hit"] == "True"]

    rows = await eventually(hit_logged, "the cache hit in the spend log", tries=250)
    assert rows[0]["spend"] == 0 and rows[0]["total_tokens"] == 0
