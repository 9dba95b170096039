"""Stored Responses in a real Postgres: scoping, chains for previous_response_id, retention."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from gateway.db import Database, open_database
from gateway.pipeline import Principal
from gateway.responses_store import ResponseStore, scope_of

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await open_database(database_url)
    yield database
    await database.close()


def _user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def _response(rid: str, text: str, previous: str | None = None) -> dict[str, Any]:
    output = [{"id": f"msg_{rid}", "type": "message", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}]  # fmt: skip
    return {"id": rid, "object": "response", "previous_response_id": previous, "output": output}


async def test_scope_is_team_else_key_else_kind() -> None:
    assert scope_of(Principal("virtual", key_hash="h", team_id="t")) == "team:t"
    assert scope_of(Principal("virtual", key_hash="h")) == "key:h"
    assert scope_of(Principal("master")) == "master"


async def test_save_get_delete_scoped(db: Database) -> None:
    store = ResponseStore(db.pool, retention_days=30)
    await store.save("team:a", [_user("hi")], _response("resp_s1", "hello"))
    got = await store.get("team:a", "resp_s1")
    assert got is not None
    assert got.input_items == [_user("hi")]
    assert got.response == _response("resp_s1", "hello")
    # Another team (or a key without that team) does not see it, and cannot delete it.
    assert await store.get("team:b", "resp_s1") is None
    assert await store.delete("key:x", "resp_s1") is False
    assert await store.conversation("team:b", "resp_s1") is None
    assert await store.delete("team:a", "resp_s1") is True
    assert await store.get("team:a", "resp_s1") is None
    assert await store.delete("team:a", "resp_s1") is False


async def test_conversation_follows_the_chain_oldest_first(db: Database) -> None:
    store = ResponseStore(db.pool, retention_days=30)
    await store.save("key:k", [_user("one")], _response("resp_c1", "first"))
    await store.save("key:k", [_user("two")], _response("resp_c2", "second", "resp_c1"))
    await store.save("key:k", [_user("three")], _response("resp_c3", "third", "resp_c2"))
    items = await store.conversation("key:k", "resp_c3")
    assert items is not None
    texts = [item["content"][0]["text"] for item in items]
    assert texts == ["one", "first", "two", "second", "three", "third"]
    # A deleted link ends the chain there (the newer turns remain).
    assert await store.delete("key:k", "resp_c2")
    items = await store.conversation("key:k", "resp_c3")
    assert items is not None
    assert [item["content"][0]["text"] for item in items] == ["three", "third"]


async def test_expired_rows_are_not_served_and_are_purged(db: Database) -> None:
    store = ResponseStore(db.pool, retention_days=1)
    await store.save("key:e", [_user("old")], _response("resp_e1", "gone"))
    await store.save("key:e", [_user("new")], _response("resp_e2", "kept"))
    await db.pool.execute(
        "UPDATE stored_responses SET expires_at = now() - interval '1 second' WHERE id = 'resp_e1'"
    )
    assert await store.get("key:e", "resp_e1") is None
    assert await store.conversation("key:e", "resp_e1") is None
    assert await store.delete("key:e", "resp_e1") is False
    # The first save started a background purge, which may run after the UPDATE and take the row
    # first: either way, once this purge returns the expired row is gone and the live one is kept.
    await store.purge_expired()
    assert await db.pool.fetchval("SELECT count(*) FROM stored_responses WHERE id = 'resp_e1'") == 0
    assert await store.get("key:e", "resp_e2") is not None
    # The retention setting decides expires_at.
    days = await db.pool.fetchval(
        "SELECT extract(epoch FROM expires_at - created_at) / 86400 FROM stored_responses"
        " WHERE id = 'resp_e2'"
    )
    assert round(float(days), 3) == 1.0
