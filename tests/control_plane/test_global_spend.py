"""Global spend reports on LiteLLM's paths and shapes (``/global/spend``, ``/global/spend/logs``,
``/global/spend/keys``, ``/global/spend/models``, ``/global/spend/teams``): requests made with the
official openai SDK through a real gateway, then every report checked against the spend rows in
Postgres."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from gateway.keys.tokens import hash_key
from tests.control_plane.test_admin_api import call, chat, ok, sql, unique
from tests.support.gateway_process import GatewayProcess


def _wait_for_rows(database_url: str, key_hash: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while (
        sql(database_url, "SELECT count(*) AS n FROM spend_logs WHERE key_hash = $1", key_hash)[0]["n"]
        < count
    ):
        assert time.monotonic() < deadline, "spend logs were not written"
        time.sleep(0.1)


def test_global_spend_reports_add_up_to_the_spend_rows(gateway: GatewayProcess, database_url: str) -> None:
    alias = unique("spend-team")
    team = ok(call(gateway, "/team/new", {"team_alias": alias}))["team_id"]
    key = ok(call(gateway, "/key/generate", {"team_id": team, "key_alias": unique("spend-key")}))["key"]
    for _ in range(3):
        chat(gateway, key)
    key_hash = hash_key(key)
    _wait_for_rows(database_url, key_hash, 3)

    rows = sql(database_url, "SELECT key_hash, team_id, model, spend, start_time FROM spend_logs")
    total = sum(float(r["spend"]) for r in rows)
    mine = sum(float(r["spend"]) for r in rows if r["key_hash"] == key_hash)
    assert mine > 0

    report = ok(call(gateway, "/global/spend"))
    assert report["spend"] == pytest.approx(total) and report["max_budget"] is None

    days = ok(call(gateway, "/global/spend/logs"))
    assert sum(d["spend"] for d in days) == pytest.approx(total)
    today = datetime.now(UTC).date().isoformat()
    (mine_by_day,) = ok(call(gateway, "/global/spend/logs", params={"api_key": key_hash}))
    assert mine_by_day == {"date": today, "spend": pytest.approx(mine)}

    keys = ok(call(gateway, "/global/spend/keys"))
    by_key = {k["api_key"]: k for k in keys}
    assert by_key[key_hash]["total_spend"] == pytest.approx(mine)
    assert by_key[key_hash]["key_alias"].startswith("spend-key")
    assert [k["total_spend"] for k in keys] == sorted((k["total_spend"] for k in keys), reverse=True)
    assert len(ok(call(gateway, "/global/spend/keys", params={"limit": "1"}))) == 1

    # Other tests' gateways may still be flushing spend rows: compare the report with the rows read
    # right after it, until a moment when no row landed in between.
    deadline = time.monotonic() + 10
    while True:
        models = ok(call(gateway, "/global/spend/models"))
        expected_models: dict[str, float] = {}
        # As the report: the last 30 days (the data-layer test writes older rows), rows with a model.
        for r in sql(
            database_url,
            "SELECT model, spend FROM spend_logs "
            "WHERE model <> '' AND start_time >= now() - interval '30 days'",
        ):
            expected_models[r["model"]] = expected_models.get(r["model"], 0.0) + float(r["spend"])
        reported = {m["model"]: m["total_spend"] for m in models}
        if reported == pytest.approx(expected_models) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert reported == pytest.approx(expected_models), (reported, expected_models)

    teams = ok(call(gateway, "/global/spend/teams"))
    assert alias in teams["teams"]
    per_team = {t["team_id"]: t["total_spend"] for t in teams["total_spend_per_team"]}
    assert per_team[alias] == pytest.approx(mine)
    (day,) = [d for d in teams["daily_spend"] if d["date"] == today]
    assert day[alias] == pytest.approx(mine)


def test_global_spend_refusals(gateway: GatewayProcess) -> None:
    for limit in ("0", "-3", "many"):
        response = call(gateway, "/global/spend/keys", params={"limit": limit})
        assert response.status_code in (400, 422) and "error" in response.json(), response.text
    key = ok(call(gateway, "/key/generate", {}))["key"]
    assert call(gateway, "/global/spend", key=key).status_code == 403
