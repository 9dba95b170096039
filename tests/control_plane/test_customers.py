"""Customers (LiteLLM's end users) against a real gateway and Postgres: LiteLLM's ``/customer/*`` (and
``/end_user/*``) payloads and answers, the request's ``user`` (and LiteLLM's other places for it) naming
the customer, spend charged to it, and refusals when it is blocked, outside its models, over its
budget row or over its rate limit, in the door's own error format.

Spend is written in batches (every 0.1 s here): the tests poll for it with a deadline only a broken
gateway reaches.
"""

from __future__ import annotations

import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.control_plane.conftest import MASTER_KEY, UNIT_COST
from tests.control_plane.test_admin_api import call, ok, sql, unique
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import gateway_config, keyed_gateway
from tests.support.gateway_process import GatewayProcess

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _chat(gw: GatewayProcess, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/v1/chat/completions",
        json={**CHAT, **body},
        headers={"Authorization": f"Bearer {MASTER_KEY}", **(headers or {})},
        timeout=30,
    )


def _until(what: str, probe: Any) -> Any:
    deadline = time.monotonic() + 30
    while not (value := probe()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)
    return value


def test_customer_lifecycle_in_litellms_shapes(gateway: GatewayProcess) -> None:
    customer = unique("acme")
    created = ok(
        call(
            gateway,
            "/customer/new",
            {
                "user_id": customer,
                "alias": "Acme",
                "max_budget": 10,
                "budget_duration": "30d",
                "models": ["gpt-4o-mini"],
                "allowed_model_region": "eu",
                "object_permission": {"vector_stores": []},  # accepted, not used
            },
        )
    )
    assert created["user_id"] == customer and created["alias"] == "Acme" and created["blocked"] is False
    assert created["spend"] == 0 and created["models"] == ["gpt-4o-mini"]
    assert created["allowed_model_region"] == "eu"
    budget = created["litellm_budget_table"]
    assert budget["budget_id"] == created["budget_id"] and budget["max_budget"] == 10
    assert budget["budget_duration"] == "30d" and budget["budget_reset_at"]

    # An update of budget fields changes the customer's own row; other fields are kept.
    updated = ok(call(gateway, "/customer/update", {"user_id": customer, "max_budget": 20, "rpm_limit": 5}))
    assert updated["budget_id"] == created["budget_id"] and updated["alias"] == "Acme"
    assert (
        updated["litellm_budget_table"]["max_budget"] == 20
        and updated["litellm_budget_table"]["rpm_limit"] == 5
    )

    for prefix in ("/customer", "/end_user"):
        info = ok(call(gateway, f"{prefix}/info", params={"end_user_id": customer}))
        assert info["litellm_budget_table"]["max_budget"] == 20
        assert customer in [c["user_id"] for c in ok(call(gateway, f"{prefix}/list"))]

    deleted = ok(call(gateway, "/end_user/delete", {"user_ids": [customer]}))
    assert deleted["deleted_customers"] == 1 and customer in deleted["message"]
    missing = call(gateway, "/customer/info", params={"end_user_id": customer})
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == f"End User Id={customer} does not exist in db"


def test_requests_charge_their_customer(gateway: GatewayProcess, database_url: str) -> None:
    customer = unique("shopper")
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], user=customer
    )
    request_id = raw.headers["x-request-id"]

    # Unknown until now: its first charge created it, as LiteLLM upserts end users.
    def charged() -> Any:
        resp = call(gateway, "/customer/info", params={"end_user_id": customer})
        return resp.status_code == 200 and resp.json()["spend"] > 0 and resp.json()

    info = _until("the customer's spend", charged)
    assert info["spend"] == pytest.approx(float(UNIT_COST)) and info["litellm_budget_table"] is None
    rows = sql(database_url, "SELECT end_user FROM spend_logs WHERE end_user = $1", customer)
    assert len(rows) == 1
    (log,) = ok(call(gateway, "/spend/logs", params={"request_id": request_id}))
    assert log["end_user"] == customer


def test_customer_budget_refuses_only_that_customer(gateway: GatewayProcess) -> None:
    customer = unique("capped")
    ok(call(gateway, "/customer/new", {"user_id": customer, "max_budget": float(UNIT_COST) * 1.5}))

    def refused() -> httpx.Response | None:
        resp = _chat(gateway, {"user": customer})
        return resp if resp.status_code != 200 else None

    resp = _until("the customer budget", refused)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == error["code"] == "budget_exceeded"
    assert error["message"].startswith(f"ExceededBudget: End User={customer} over budget.")
    # The same key for another customer, or for none, goes on.
    assert _chat(gateway, {"user": unique("other")}).status_code == 200
    assert _chat(gateway, {}).status_code == 200


def test_blocked_customer_is_refused_wherever_it_is_named(gateway: GatewayProcess) -> None:
    customer = unique("banned")
    blocked = ok(call(gateway, "/customer/block", {"user_ids": [customer]}))["blocked_users"]
    assert [c["user_id"] for c in blocked] == [customer] and blocked[0]["blocked"] is True

    for body, headers in (
        ({"user": customer}, None),
        ({}, {"x-litellm-customer-id": customer}),
        ({"user": "someone-else"}, {"x-litellm-end-user-id": customer}),  # a header wins over the body
        ({"litellm_metadata": {"user": customer}}, None),
        ({"metadata": {"user_id": customer}}, None),
    ):
        resp = _chat(gateway, body, headers)
        assert resp.status_code == 403, (body, headers, resp.text)
        assert resp.json()["error"]["code"] == "customer_blocked"

    # Anthropic's Messages door names it in metadata.user_id and answers in Anthropic's format.
    client = anthropic.Anthropic(base_url=gateway.base_url, api_key=MASTER_KEY, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        client.messages.create(
            model="gpt-4o-mini",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            metadata={"user_id": customer},
        )
    assert refused.value.body["type"] == "error" and "blocked" in refused.value.body["error"]["message"]

    assert ok(call(gateway, "/customer/unblock", {"user_ids": [customer]})) == {"blocked_users": []}
    assert _chat(gateway, {"user": customer}).status_code == 200


def test_customer_models_and_rate_limit(gateway: GatewayProcess) -> None:
    customer = unique("limited")
    ok(call(gateway, "/customer/new", {"user_id": customer, "models": ["gpt-4o"], "rpm_limit": 2}))
    resp = _chat(gateway, {"user": customer})
    assert resp.status_code == 403 and resp.json()["error"]["param"] == "model"
    statuses = [_chat(gateway, {"user": customer, "model": "gpt-4o"}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_customer_soft_budget_warns(gateway: GatewayProcess) -> None:
    customer = unique("soft")
    ok(call(gateway, "/customer/new", {"user_id": customer, "soft_budget": float(UNIT_COST) / 2}))
    header = "x-switchyard-soft-budget-exceeded"

    def warned() -> httpx.Response | None:
        resp = _chat(gateway, {"user": customer})
        assert resp.status_code == 200, resp.text  # a soft budget never refuses
        return resp if header in resp.headers else None

    assert _until("the customer's soft budget", warned).headers[header].startswith(f"customer={customer};")


def test_customer_on_a_shared_budget_row(gateway: GatewayProcess) -> None:
    tier = ok(call(gateway, "/budget/new", {"budget_id": unique("free"), "rpm_limit": 1}))["budget_id"]
    customer = unique("free-user")
    created = ok(call(gateway, "/customer/new", {"user_id": customer, "budget_id": tier}))
    assert created["litellm_budget_table"]["rpm_limit"] == 1
    assert [_chat(gateway, {"user": customer}).status_code for _ in range(2)] == [200, 429]


def test_bad_customer_input_is_a_clear_400(gateway: GatewayProcess) -> None:
    existing = ok(call(gateway, "/customer/new", {"user_id": unique("dup")}))["user_id"]
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("/customer/new", {"user_id": existing}, 400, "already exists"),
        ("/customer/new", {"user_id": unique("x"), "budget_id": "tier", "max_budget": 1}, 400, "not both"),
        ("/customer/new", {"user_id": unique("x"), "budget_id": "no-such-tier"}, 400, "budget_id"),
        ("/customer/new", {"user_id": unique("x"), "default_model": "nope"}, 400, "default_model"),
        (
            "/customer/new",
            {"user_id": unique("x"), "allowed_model_region": "mars"},
            400,
            "allowed_model_region",
        ),
        ("/customer/new", {"alias": "no id"}, 400, "user_id"),
        ("/customer/update", {"user_id": "no-such-customer", "alias": "x"}, 404, "does not exist"),
        ("/customer/delete", {"user_ids": [existing, "no-such-customer"]}, 404, "no-such-customer"),
        ("/customer/delete", {"user_ids": []}, 400, "user_ids"),
    ]
    for path, body, status, words in cases:
        resp = call(gateway, path, body)
        assert resp.status_code == status, (path, body, resp.text)
        assert words in resp.json()["error"]["message"], (path, body, resp.text)
    assert call(gateway, "/customer/info").status_code == 400

    # A customer id the database could not store is the caller's 400, never a poisoned spend batch.
    for user in ("x" * 513, "nul\x00byte"):
        resp = _chat(gateway, {"user": user})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "user", resp.text


def test_default_end_user_budget_from_litellm_settings(
    gateway: GatewayProcess, fake_upstream: FakeOpenAI, database_url: str
) -> None:
    tier = ok(call(gateway, "/budget/new", {"budget_id": unique("default-tier"), "rpm_limit": 2}))[
        "budget_id"
    ]
    rich, own = unique("rich"), unique("own-row")
    sql(database_url, "INSERT INTO customers (id, spend) VALUES ($1, 150)", rich)
    ok(call(gateway, "/customer/new", {"user_id": own, "max_budget": 1000}))
    config = gateway_config(fake_upstream.base_url)
    # LiteLLM's names, in LiteLLM's section: mapped onto general_settings.
    config["litellm_settings"] = {"max_end_user_budget": 100, "max_end_user_budget_id": tier}
    with keyed_gateway(config, database_url) as other:
        # A customer never seen is held to the default row's limits...
        newcomer = unique("newcomer")
        assert [_chat(other, {"user": newcomer}).status_code for _ in range(3)] == [200, 200, 429]
        # ...and one without a budget row of its own to the default amount.
        resp = _chat(other, {"user": rich})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "budget_exceeded", resp.text
        # A customer with its own row is held to that row alone.
        assert [_chat(other, {"user": own}).status_code for _ in range(3)] == [200, 200, 200]
