"""Budgets on LiteLLM's paths with its documented payloads (``BudgetNewRequest``, ``BudgetRequest``,
``BudgetDeleteRequest``), against a real gateway and Postgres: the rows LiteLLM answers, a team that
points at a budget, and the refusals (a duplicate id, an unknown id, bad values, a non-admin key).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.control_plane.test_admin_api import call, ok, sql, unique
from tests.support.gateway_process import GatewayProcess


def test_budget_lifecycle(gateway: GatewayProcess, database_url: str) -> None:
    budget_id = unique("budget")
    created = ok(
        call(
            gateway,
            "/budget/new",
            {
                "budget_id": budget_id,
                "max_budget": 12.5,
                "soft_budget": 10,
                "budget_duration": "30d",
                "rpm_limit": 100,
                "tpm_limit": 5000,
                "max_parallel_requests": 3,
            },
        )
    )
    assert created["budget_id"] == budget_id
    assert created["max_budget"] == 12.5 and created["soft_budget"] == 10
    assert (created["rpm_limit"], created["tpm_limit"], created["max_parallel_requests"]) == (100, 5000, 3)
    reset_at = datetime.fromisoformat(created["budget_reset_at"])
    assert timedelta(days=29) < reset_at - datetime.now(UTC) <= timedelta(days=30)

    # An update changes only the fields it sends.
    updated = ok(call(gateway, "/budget/update", {"budget_id": budget_id, "max_budget": 20}))
    assert updated["max_budget"] == 20 and updated["soft_budget"] == 10 and updated["rpm_limit"] == 100
    (row,) = sql(database_url, "SELECT max_budget, tpm_limit FROM budgets WHERE id = $1", budget_id)
    assert float(row["max_budget"]) == 20 and row["tpm_limit"] == 5000

    info = ok(call(gateway, "/budget/info", {"budgets": [budget_id, "no-such-budget"]}))
    assert [b["budget_id"] for b in info] == [budget_id] and info[0]["max_budget"] == 20
    assert budget_id in [b["budget_id"] for b in ok(call(gateway, "/budget/list"))]

    # A team pointing at it (linked in SQL: /team/new does not take budget_id yet) is unlinked when the
    # budget is deleted, as LiteLLM's schema does.
    team = ok(call(gateway, "/team/new", {}))["team_id"]
    sql(database_url, "UPDATE teams SET budget_id = $1 WHERE id = $2", budget_id, team)
    deleted = ok(call(gateway, "/budget/delete", {"id": budget_id}))
    assert deleted["budget_id"] == budget_id
    assert sql(database_url, "SELECT budget_id FROM teams WHERE id = $1", team)[0]["budget_id"] is None
    assert ok(call(gateway, "/budget/info", {"budgets": [budget_id]})) == []
    audit = sql(database_url, "SELECT action FROM audit_logs WHERE object_id = $1 ORDER BY 1", budget_id)
    assert [r["action"] for r in audit] == ["budget.delete", "budget.new", "budget.update"]


def test_budget_without_id_gets_one(gateway: GatewayProcess) -> None:
    created = ok(call(gateway, "/budget/new", {"max_budget": 1}))
    assert created["budget_id"] and created["budget_reset_at"] is None and created["rpm_limit"] is None


def test_budget_refusals(gateway: GatewayProcess) -> None:
    budget_id = unique("budget")
    ok(call(gateway, "/budget/new", {"budget_id": budget_id}))
    cases: list[tuple[str, dict[str, object], int, str]] = [
        ("/budget/new", {"budget_id": budget_id}, 400, "already exists"),
        ("/budget/new", {"max_budget": -1}, 400, "max_budget"),
        ("/budget/new", {"budget_duration": "soon"}, 400, "budget_duration"),
        ("/budget/update", {"max_budget": 1}, 400, "budget_id is required"),
        ("/budget/update", {"budget_id": "no-such-budget", "max_budget": 1}, 404, "not found"),
        ("/budget/delete", {"id": "no-such-budget"}, 404, "not found"),
        ("/budget/delete", {}, 400, "id"),
        ("/budget/info", {"budgets": []}, 400, "budget id"),
    ]
    for path, body, status, words in cases:
        response = call(gateway, path, body)
        assert response.status_code == status, (path, body, response.text)
        assert words in response.json()["error"]["message"], response.text

    # A key without an admin user may not touch budgets.
    key = ok(call(gateway, "/key/generate", {}))["key"]
    assert call(gateway, "/budget/new", {"max_budget": 1}, key=key).status_code == 403
    assert call(gateway, "/budget/list", key=key).status_code == 403
    assert httpx.get(gateway.base_url + "/budget/list", timeout=30).status_code == 401
