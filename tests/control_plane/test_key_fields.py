"""LiteLLM's key fields and auth headers, against a real gateway (Postgres, the fake OpenAI upstream).

Auth: ``x-litellm-api-key`` (bare or ``Bearer``), ``Authorization: Bearer``, ``api-key`` and
``x-api-key`` each authenticate, on the doors and the admin API, in LiteLLM's order
(litellm/proxy/auth/user_api_key_auth.py, ``get_api_key``). Key fields: ``aliases`` route,
``tags`` reach spend rows, ``model_max_budget`` refuses its model once spent while other models go
on, ``soft_budget`` adds a warning header (and a metric) once crossed, ``permissions``/``config``/
``metadata`` are stored and returned, and ``/key/info`` answers in LiteLLM's shape.

Spend reaches the database in batches (every 0.1 s here): the tests poll for it, like the other
spend tests, with a generous deadline that only a broken gateway reaches.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import anthropic
import asyncpg
import httpx
import openai
import pytest

from tests.control_plane.conftest import MASTER_KEY, UNIT_COST
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import admin, new_key
from tests.support.gateway_process import GatewayProcess

SOFT_HEADER = "x-switchyard-soft-budget-exceeded"
DEADLINE_S = 30.0


def _until(what: str, probe: Callable[[], Any]) -> Any:
    """Call ``probe`` until it returns something truthy (spend is written in batches)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def _chat(gw: GatewayProcess, headers: dict[str, str], model: str = "gpt-4o-mini") -> httpx.Response:
    return httpx.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
        timeout=30,
    )


def _key_info(gw: GatewayProcess, token: str) -> dict[str, Any]:
    resp = httpx.get(
        gw.base_url + "/key/info",
        params={"key": token},
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


# ---- auth headers -------------------------------------------------------------------------------------


HEADER_FORMS: dict[str, Callable[[str], dict[str, str]]] = {
    "x-litellm-api-key": lambda k: {"x-litellm-api-key": k},
    "x-litellm-api-key bearer": lambda k: {"x-litellm-api-key": f"Bearer {k}"},
    "authorization": lambda k: {"Authorization": f"Bearer {k}"},
    "api-key": lambda k: {"api-key": k},
    "x-api-key": lambda k: {"x-api-key": k},
}


@pytest.mark.parametrize("form", list(HEADER_FORMS))
def test_each_header_authenticates_doors_and_admin(gateway: GatewayProcess, form: str) -> None:
    key = new_key(gateway, models=["gpt-4o-mini"])["key"]
    headers = HEADER_FORMS[form]
    assert _chat(gateway, headers(key)).status_code == 200
    wrong = _chat(gateway, headers("sk-not-a-key-0123456789abcdef"))
    assert wrong.status_code == 401, wrong.text
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    # The admin API reads the same headers: a key may read its own info.
    own = httpx.get(gateway.base_url + "/key/info", headers=headers(key), timeout=30)
    assert own.status_code == 200, own.text
    refused = httpx.get(
        gateway.base_url + "/key/info", headers=headers("sk-wrong-0123456789abcdef"), timeout=30
    )
    assert refused.status_code == 401, refused.text
    models = httpx.get(gateway.base_url + "/v1/models", headers=headers(key), timeout=30)
    assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["gpt-4o-mini"]


@pytest.mark.parametrize("form", list(HEADER_FORMS))
def test_each_header_carries_the_master_key_to_health(gateway: GatewayProcess, form: str) -> None:
    headers = HEADER_FORMS[form]
    health = httpx.get(
        gateway.base_url + "/health", params={"model": "gpt-4o-mini"}, headers=headers(MASTER_KEY)
    )
    assert health.status_code == 200, health.text
    key = new_key(gateway)["key"]
    assert httpx.get(gateway.base_url + "/health", headers=headers(key)).status_code == 403


def test_header_precedence_is_litellms(gateway: GatewayProcess) -> None:
    key = new_key(gateway)["key"]
    wrong = "sk-wrong-0123456789abcdef"
    # x-litellm-api-key first: the openai SDK's own Authorization may hold anything.
    client = openai.OpenAI(
        base_url=gateway.base_url + "/v1",
        api_key="sk-placeholder-for-the-sdk",
        default_headers={"x-litellm-api-key": f"Bearer {key}"},
        max_retries=0,
    )
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    wrong_first = openai.OpenAI(
        base_url=gateway.base_url + "/v1",
        api_key=key,
        default_headers={"x-litellm-api-key": wrong},
        max_retries=0,
    )
    with pytest.raises(openai.AuthenticationError):
        wrong_first.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    # Then Authorization, then api-key, then x-api-key.
    assert _chat(gateway, {"Authorization": f"Bearer {key}", "x-api-key": wrong}).status_code == 200
    assert _chat(gateway, {"Authorization": f"Bearer {wrong}", "x-api-key": key}).status_code == 401
    assert _chat(gateway, {"api-key": key, "x-api-key": wrong}).status_code == 200
    missing = _chat(gateway, {})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"


def test_anthropic_sdk_with_the_litellm_header(gateway: GatewayProcess) -> None:
    """Claude Code's way: the key in x-litellm-api-key, the SDK's own x-api-key a placeholder."""
    key = new_key(gateway)["key"]
    client = anthropic.Anthropic(
        base_url=gateway.base_url,
        api_key="placeholder",
        default_headers={"x-litellm-api-key": f"Bearer {key}"},
        max_retries=0,
    )
    message = client.messages.create(
        model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content
    plain = anthropic.Anthropic(base_url=gateway.base_url, api_key=key, max_retries=0)
    assert plain.messages.create(
        model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    )
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(
            base_url=gateway.base_url, api_key="sk-wrong-0123456789abcdef", max_retries=0
        ).messages.create(model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "hi"}])


# ---- key fields ---------------------------------------------------------------------------------------


def test_aliases_route_to_their_target(gateway: GatewayProcess, fake_upstream: FakeOpenAI) -> None:
    created = new_key(gateway, models=["gpt-4o"], aliases={"my-model": "gpt-4o"})
    assert created["aliases"] == {"my-model": "gpt-4o"}
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=created["key"], max_retries=0)
    before = len(fake_upstream.requests)
    reply = client.chat.completions.create(model="my-model", messages=[{"role": "user", "content": "alias"}])
    assert reply.model == "gpt-4o"
    assert fake_upstream.requests[before:][-1].body["model"] == "gpt-4o"
    # The typed path too (the Messages door translates the request for the upstream).
    messages = anthropic.Anthropic(base_url=gateway.base_url, api_key=created["key"], max_retries=0)
    before = len(fake_upstream.requests)
    messages.messages.create(model="my-model", max_tokens=16, messages=[{"role": "user", "content": "alias"}])
    assert fake_upstream.requests[before:][-1].body["model"] == "gpt-4o"
    # Access is checked on the target: the alias of a model the key may not use is refused.
    other = new_key(gateway, models=["gpt-4o-mini"], aliases={"sneaky": "gpt-4o"})
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(
            base_url=gateway.base_url + "/v1", api_key=other["key"], max_retries=0
        ).chat.completions.create(model="sneaky", messages=[{"role": "user", "content": "x"}])
    # An update replaces the map; the change is seen at once by this instance.
    admin(gateway, "/key/update", {"key": created["key"], "aliases": {}})
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="my-model", messages=[{"role": "user", "content": "gone"}])


def test_tags_reach_spend_rows(gateway: GatewayProcess, database_url: str) -> None:
    created = new_key(gateway, tags=["team-search", "prod"], metadata={"owner": "search"})
    assert created["metadata"] == {"owner": "search", "tags": ["team-search", "prod"]}
    assert created["tags"] == ["team-search", "prod"]
    key, token = created["key"], created["token"]
    assert _chat(gateway, {"Authorization": f"Bearer {key}"}).status_code == 200

    async def tags_in_db() -> list[Any]:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch(
                "SELECT metadata -> 'tags' AS tags FROM spend_logs WHERE key_hash = $1", token
            )
        finally:
            await conn.close()

    rows = _until("the spend row", lambda: asyncio.run(tags_in_db()))
    assert [json.loads(r["tags"]) for r in rows] == [["team-search", "prod"]]
    logs = httpx.get(
        gateway.base_url + "/spend/logs",
        params={"api_key": token},
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=30,
    ).json()
    assert [log["request_tags"] for log in logs] == [["team-search", "prod"]]
    by_tag = httpx.get(
        gateway.base_url + "/spend/tags", headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    ).json()
    tagged = {row["individual_request_tag"]: row for row in by_tag}
    assert tagged["team-search"]["log_count"] >= 1 and tagged["team-search"]["total_spend"] >= float(
        UNIT_COST
    )
    assert {"team-search", "prod"} <= set(tagged)
    # tags alone changes only the tags; null clears them, the rest of metadata stays.
    updated = admin(gateway, "/key/update", {"key": key, "tags": ["prod"]})
    assert updated["metadata"] == {"owner": "search", "tags": ["prod"]}
    cleared = admin(gateway, "/key/update", {"key": key, "tags": None})
    assert cleared["metadata"] == {"owner": "search"}


def test_model_max_budget_refuses_only_that_model(gateway: GatewayProcess) -> None:
    # One request costs UNIT_COST; the budget is below it, so the first request spends it.
    budget = float(UNIT_COST) / 2
    created = new_key(
        gateway,
        model_max_budget={"gpt-4o-mini": budget, "gpt-4o": {"budget_limit": 1.0, "time_period": "30d"}},
    )
    assert created["model_max_budget"] == {
        "gpt-4o-mini": budget,
        "gpt-4o": {"budget_limit": 1.0, "time_period": "30d"},
    }
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert _chat(gateway, headers).status_code == 200

    def refused() -> httpx.Response | None:
        resp = _chat(gateway, headers)
        return resp if resp.status_code != 200 else None

    # The next requests are refused as soon as the spend batch is committed (one batch at most).
    resp = _until("the model budget to refuse", refused)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "budget_exceeded" and "gpt-4o-mini" in error["message"]
    # Other models go on.
    assert _chat(gateway, headers, model="gpt-4o").status_code == 200
    info = _key_info(gateway, created["token"])["info"]
    assert info["model_spend"]["gpt-4o-mini"] >= float(UNIT_COST)
    usage = info["model_max_budget_usage"]
    assert usage["gpt-4o-mini"]["budget_limit"] == budget
    assert usage["gpt-4o-mini"]["current_spend"] >= float(UNIT_COST)
    # Raising the budget lets the model through again.
    admin(gateway, "/key/update", {"key": created["key"], "model_max_budget": {"gpt-4o-mini": 1.0}})
    assert _chat(gateway, headers).status_code == 200


def test_model_max_budget_is_validated(gateway: GatewayProcess) -> None:
    for bad in ({"gpt-4o": -1}, {"gpt-4o": {"budget_limit": 1, "time_period": "soon"}}, {"gpt-4o": "x"}):
        resp = httpx.post(
            gateway.base_url + "/key/generate",
            json={"model_max_budget": bad},
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            timeout=30,
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"].startswith("model_max_budget")


def test_soft_budget_warns_once_crossed(gateway: GatewayProcess) -> None:
    created = new_key(gateway, soft_budget=float(UNIT_COST) / 2)
    assert created["soft_budget"] == float(UNIT_COST) / 2
    headers = {"Authorization": f"Bearer {created['key']}"}
    first = _chat(gateway, headers)
    assert first.status_code == 200 and SOFT_HEADER not in first.headers

    def warned() -> httpx.Response | None:
        resp = _chat(gateway, headers)
        assert resp.status_code == 200, resp.text  # a warning, never a refusal
        return resp if SOFT_HEADER in resp.headers else None

    resp = _until("the soft budget header", warned)
    assert "soft_budget=" in resp.headers[SOFT_HEADER]
    metrics = httpx.get(gateway.base_url + "/metrics", timeout=30).text
    counted = [
        line for line in metrics.splitlines() if line.startswith("switchyard_key_soft_budget_exceeded_total")
    ]
    assert counted and float(counted[0].split()[-1]) >= 1
    # A key without a soft budget never carries the header.
    plain = new_key(gateway)["key"]
    assert SOFT_HEADER not in _chat(gateway, {"Authorization": f"Bearer {plain}"}).headers


def test_key_info_has_litellms_shape(gateway: GatewayProcess) -> None:
    created = new_key(
        gateway,
        permissions={"allow_pii_controls": True},
        config={"max_retries": 2},
        metadata={"team": "core-infra"},
        soft_budget=5.0,
    )
    token = created["token"]
    answer = _key_info(gateway, token)
    assert answer["key"] == token
    info = answer["info"]
    assert "token" not in info
    assert info["last_active"] is None and info["model_spend"] == {}
    assert info["status"] == "active"
    assert info["permissions"] == {"allow_pii_controls": True}
    assert info["config"] == {"max_retries": 2}
    assert info["metadata"] == {"team": "core-infra"}
    assert info["soft_budget"] == 5.0
    for field in (
        "key_alias",
        "spend",
        "max_budget",
        "models",
        "expires",
        "budget_duration",
        "model_max_budget",
    ):
        assert field in info
    assert _chat(gateway, {"Authorization": f"Bearer {created['key']}"}).status_code == 200
    info = _until("spend on the key", lambda: (i := _key_info(gateway, token)["info"])["model_spend"] and i)
    assert info["model_spend"] == {"gpt-4o-mini": float(UNIT_COST)}
    assert info["last_active"] is not None
    # Updates keep what they do not name; null clears a soft budget.
    updated = admin(gateway, "/key/update", {"key": created["key"], "soft_budget": None, "config": {}})
    assert updated["soft_budget"] is None and updated["config"] == {}
    assert updated["permissions"] == {"allow_pii_controls": True}
    blocked = admin(gateway, "/key/block", {"key": created["key"]})
    assert blocked["blocked"] is True
    assert _key_info(gateway, token)["info"]["status"] == "revoked"


def test_duration_sets_expiry(gateway: GatewayProcess) -> None:
    created = new_key(gateway, duration="1h")
    assert created["expires"] is not None
    updated = admin(gateway, "/key/update", {"key": created["key"], "duration": None})
    assert updated["expires"] is None
