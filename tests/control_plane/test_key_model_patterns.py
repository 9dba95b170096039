"""Key and team model lists with wildcard patterns (``anthropic/*``), resolved from a real
Postgres: the key-team intersection keeps what both allow, and ``check_model`` lets a pattern's
matches through, as the conductor's own access check does (gateway.routing.wildcards)."""

from __future__ import annotations

import time

import pytest

from gateway.db import Database
from gateway.errors import GatewayError
from gateway.keys import store
from gateway.keys.resolver import PostgresKeyResolver
from gateway.keys.tokens import display_name, generate_key, hash_key
from gateway.pipeline import Principal

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _principal(db: Database, key_models: list[str], team_models: list[str] | None) -> Principal:
    values: dict[str, object] = {"models": key_models}
    async with db.pool.acquire() as conn:
        if team_models is not None:
            team_id = f"team-{time.monotonic_ns()}"
            await store.insert_team(conn, {"id": team_id, "models": team_models})
            values["team_id"] = team_id
        key = generate_key()
        await store.insert_key(conn, {"token_hash": hash_key(key), "key_name": display_name(key), **values})
    principal = await PostgresKeyResolver(db.pool).resolve(key)
    assert principal is not None
    return principal


def allowed(principal: Principal, model: str) -> bool:
    try:
        PostgresKeyResolver.check_model(principal, model)
    except GatewayError as exc:
        assert exc.status == 403
        return False
    return True


async def test_a_key_pattern_allows_its_matches(db: Database) -> None:
    p = await _principal(db, ["anthropic/*", "gpt-4o"], None)
    assert allowed(p, "anthropic/claude-x") and allowed(p, "gpt-4o")
    assert not allowed(p, "openai/gpt-4o") and not allowed(p, "anthropic")


async def test_a_key_pattern_inside_a_team_keeps_the_team_names_it_matches(db: Database) -> None:
    p = await _principal(db, ["anthropic/*"], ["anthropic/claude-x", "gpt-4o"])
    assert p.models == ("anthropic/claude-x",)
    assert allowed(p, "anthropic/claude-x") and not allowed(p, "anthropic/claude-y")


async def test_a_team_pattern_keeps_the_key_names_it_matches(db: Database) -> None:
    p = await _principal(db, ["anthropic/claude-x", "gpt-4o"], ["anthropic/*"])
    assert p.models == ("anthropic/claude-x",)
    assert allowed(p, "anthropic/claude-x") and not allowed(p, "gpt-4o")


async def test_overlapping_patterns_keep_the_narrower(db: Database) -> None:
    p = await _principal(db, ["vendor/*"], ["vendor/special-*", "other/*"])
    assert p.models == ("vendor/special-*",)
    assert allowed(p, "vendor/special-1") and not allowed(p, "vendor/plain") and not allowed(p, "other/x")
    p = await _principal(db, ["*"], ["gpt-4o", "anthropic/*"])
    assert set(p.models) == {"gpt-4o", "anthropic/*"}


async def test_nothing_in_common_still_allows_nothing(db: Database) -> None:
    p = await _principal(db, ["anthropic/*"], ["gpt-4o"])
    assert not allowed(p, "gpt-4o") and not allowed(p, "anthropic/claude-x")
