"""Wildcard model names as LiteLLM routes them (https://docs.litellm.ai/docs/wildcard_routing).

Real gateway processes (virtual keys and spend in Postgres) in front of fake OpenAI upstreams that
record each body they receive: a name a wildcard entry matches goes to that entry's upstream with
the matched text as the upstream model; exact names win, longer patterns win over shorter ones; a
name nothing matches is still a 404; keys listing a pattern may use what it matches; /v1/models
lists the patterns as configured; spend rows name the concrete model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import asyncpg
import httpx
import openai
import pytest

from gateway.routing.wildcards import WildcardRoutes, compile_pattern, model_allowed, upstream_for
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import MASTER_KEY, new_key, own_database
from tests.support.gateway_process import GatewayProcess, gateway_process

MSG = [{"role": "user", "content": "hi"}]


def entry(name: str, fake: FakeOpenAI, model: str, dep_id: str) -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {"model": model, "api_base": fake.base_url, "api_key": "sk-upstream-fake"},
        "model_info": {"id": dep_id},
    }


# ---- the matching rules -------------------------------------------------------------------------


def test_each_star_fills_the_deployments_star_in_order() -> None:
    m = compile_pattern("anthropic/*").fullmatch("anthropic/claude-x")
    assert m is not None and upstream_for("*", m.groups(), "anthropic/claude-x") == "claude-x"
    m = compile_pattern("*").fullmatch("anthropic/claude-x")
    assert m is not None and upstream_for("*", m.groups(), "anthropic/claude-x") == "anthropic/claude-x"
    m = compile_pattern("fo::*::static::*").fullmatch("fo::hi::static::there")
    assert m is not None and upstream_for("fo::*::static::*", m.groups(), "") == "fo::hi::static::there"
    # More stars in the name than in the model: the requested name goes upstream whole.
    m = compile_pattern("*/*").fullmatch("a/b")
    assert m is not None and upstream_for("x-*", m.groups(), "a/b") == "a/b"
    assert upstream_for("fixed-model", ("anything",), "x") == "fixed-model"
    # Regex characters in a pattern are literal.
    assert compile_pattern("a.b/*").fullmatch("axb/c") is None


def test_longer_patterns_are_tried_first_then_config_order() -> None:
    routes = WildcardRoutes(["*", "vendor/*", "vendor/special-*", "other/*"], {})
    assert [p.name for p in routes.patterns] == ["vendor/special-*", "vendor/*", "other/*", "*"]


def test_key_access_with_patterns() -> None:
    allowed = ("gpt-4o", "anthropic/*")
    assert model_allowed(allowed, "gpt-4o") and model_allowed(allowed, "anthropic/claude-x")
    assert not model_allowed(allowed, "openai/gpt-4o") and not model_allowed(allowed, "anthropic")
    assert model_allowed(("*",), "anything/at-all")


# ---- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeOpenAI]]:
    with FakeOpenAI() as a, FakeOpenAI() as b, FakeOpenAI() as c:
        yield {"a": a, "b": b, "c": c}


@pytest.fixture(autouse=True)
def _fresh(fakes: dict[str, FakeOpenAI]) -> None:
    for fake in fakes.values():
        fake.reset()


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with own_database() as url:
        yield url


PATTERN_MODELS = [
    ("gpt-exact", "a", "openai/exact-upstream", "exact"),
    ("vendor/pinned", "a", "openai/pinned-upstream", "pinned"),
    ("vendor/*", "b", "openai/*", "vendor-any"),
    ("vendor/special-*", "b", "openai/sp-*", "vendor-special"),
    ("openai/*", "b", "openai/*", "openai-any"),
]


@pytest.fixture(scope="module")
def gw(fakes: dict[str, FakeOpenAI], database_url: str) -> Iterator[GatewayProcess]:
    """No catch-all: names no pattern matches are unknown."""
    config = {
        "model_list": [entry(n, fakes[f], m, i) for n, f, m, i in PATTERN_MODELS],
        "general_settings": {"master_key": MASTER_KEY, "spend_flush_interval_s": 0.1},
    }
    with gateway_process(config, env={"DATABASE_URL": database_url}) as g:
        yield g


def client(gw: GatewayProcess, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0, timeout=30)


def upstream_models(fake: FakeOpenAI) -> list[str]:
    return [r.body["model"] for r in fake.requests]


def test_a_prefix_pattern_sends_the_matched_part_upstream(
    gw: GatewayProcess, fakes: dict[str, FakeOpenAI]
) -> None:
    c = client(gw)
    raw = c.chat.completions.with_raw_response.create(model="vendor/x1", messages=MSG)
    assert raw.headers["x-switchyard-deployment"] == "vendor-any"
    assert raw.parse().choices[0].message.content == "chunk0 chunk1 chunk2 "
    c.chat.completions.create(model="openai/gpt-4o", messages=MSG)
    c.chat.completions.create(model="vendor/deep/er", messages=MSG)  # "*" matches "/" too
    assert upstream_models(fakes["b"]) == ["x1", "gpt-4o", "deep/er"]
    assert upstream_models(fakes["a"]) == []


def test_the_longer_pattern_wins(gw: GatewayProcess, fakes: dict[str, FakeOpenAI]) -> None:
    raw = client(gw).chat.completions.with_raw_response.create(model="vendor/special-y", messages=MSG)
    assert raw.headers["x-switchyard-deployment"] == "vendor-special"
    assert upstream_models(fakes["b"]) == ["sp-y"]


def test_an_exact_name_beats_a_wildcard(gw: GatewayProcess, fakes: dict[str, FakeOpenAI]) -> None:
    c = client(gw)
    c.chat.completions.create(model="vendor/pinned", messages=MSG)
    c.chat.completions.create(model="gpt-exact", messages=MSG)
    assert upstream_models(fakes["a"]) == ["pinned-upstream", "exact-upstream"]
    assert upstream_models(fakes["b"]) == []


def test_an_unknown_model_no_pattern_matches_is_still_a_404(
    gw: GatewayProcess, fakes: dict[str, FakeOpenAI]
) -> None:
    for name in ("mystery-model", "vendor", "xvendor/x"):
        with pytest.raises(openai.NotFoundError) as missing:
            client(gw).chat.completions.create(model=name, messages=MSG)
        assert missing.value.code == "model_not_found"
    assert all(not f.requests for f in fakes.values())


def test_streams_embeddings_and_the_messages_door_route_through_patterns(
    gw: GatewayProcess, fakes: dict[str, FakeOpenAI]
) -> None:
    c = client(gw)
    stream = c.chat.completions.create(model="vendor/streamed", messages=MSG, stream=True)
    assert "".join(x.choices[0].delta.content or "" for x in stream if x.choices) == "chunk0 chunk1 chunk2 "
    assert len(c.embeddings.create(model="vendor/embedder", input="hello").data) == 1
    claude = anthropic.Anthropic(base_url=gw.base_url, api_key=MASTER_KEY, max_retries=0, timeout=30)
    message = claude.messages.create(model="vendor/typed", max_tokens=20, messages=MSG)
    assert message.content[0].text == "chunk0 chunk1 chunk2 "  # type: ignore[union-attr]
    assert upstream_models(fakes["b"]) == ["streamed", "embedder", "typed"]


def test_models_lists_the_patterns_as_configured(gw: GatewayProcess) -> None:
    ids = [m.id for m in client(gw).models.list()]
    assert ids == [n for n, *_ in PATTERN_MODELS]
    assert client(gw).models.retrieve("vendor/*").id == "vendor/*"
    with pytest.raises(openai.NotFoundError):  # a name a pattern serves is no model of its own
        client(gw).models.retrieve("vendor/some-model")


def test_a_key_listing_a_pattern_may_use_what_it_matches(gw: GatewayProcess) -> None:
    key = new_key(gw, models=["vendor/*"])["key"]
    c = client(gw, key)
    c.chat.completions.create(model="vendor/allowed", messages=MSG)
    c.chat.completions.create(model="vendor/pinned", messages=MSG)  # an exact name the pattern matches
    for refused in ("openai/gpt-4o", "gpt-exact"):
        with pytest.raises(openai.PermissionDeniedError):
            c.chat.completions.create(model=refused, messages=MSG)
    assert [m.id for m in c.models.list()] == ["vendor/pinned", "vendor/*", "vendor/special-*"]


def _spend_rows(database_url: str, key_hash: str, count: int) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            deadline = time.monotonic() + 30
            while True:
                rows = await conn.fetch(
                    "SELECT model, provider_model, deployment_id FROM spend_logs"
                    " WHERE key_hash = $1 ORDER BY start_time",
                    key_hash,
                )
                if len(rows) >= count or time.monotonic() > deadline:
                    return rows
                await asyncio.sleep(0.1)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_spend_rows_record_the_concrete_model(gw: GatewayProcess, database_url: str) -> None:
    created = new_key(gw)
    c = client(gw, created["key"])
    c.chat.completions.create(model="vendor/billed", messages=MSG)
    c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    rows = _spend_rows(database_url, created["token"], 2)
    assert [(r["model"], r["provider_model"], r["deployment_id"]) for r in rows] == [
        ("vendor/billed", "openai/billed", "vendor-any"),
        ("openai/gpt-4o-mini", "openai/gpt-4o-mini", "openai-any"),
    ]


def test_a_catch_all_serves_every_other_name_as_it_is(fakes: dict[str, FakeOpenAI]) -> None:
    config = {
        "model_list": [
            entry("*", fakes["c"], "openai/*", "catch-all"),
            entry("gpt-exact", fakes["a"], "openai/exact-upstream", "exact"),
            entry("vendor/*", fakes["b"], "openai/*", "vendor-any"),
        ],
        "general_settings": {"master_key": MASTER_KEY},
    }
    with own_database() as url, gateway_process(config, env={"DATABASE_URL": url}) as catch_all:
        c = client(catch_all)
        for name in ("gpt-4.1", "anthropic/claude-x", "gpt-exact", "vendor/v1"):
            c.chat.completions.create(model=name, messages=MSG)
        listed = httpx.get(
            catch_all.base_url + "/v1/models", headers={"Authorization": f"Bearer {MASTER_KEY}"}
        ).json()
    assert upstream_models(fakes["c"]) == ["gpt-4.1", "anthropic/claude-x"]
    assert upstream_models(fakes["a"]) == ["exact-upstream"]
    assert upstream_models(fakes["b"]) == ["v1"]
    assert [m["id"] for m in listed["data"]] == ["*", "gpt-exact", "vendor/*"]
