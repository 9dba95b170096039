"""The admin API and virtual keys over HTTP, against a real ``switchyard serve`` and Postgres."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from tests.control_plane.conftest import MASTER_KEY
from tests.support.gateway_process import GatewayProcess


def sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def call(
    gw: GatewayProcess,
    path: str,
    body: Any = None,
    *,
    key: str | None = MASTER_KEY,
    method: str | None = None,
    params: dict[str, Any] | None = None,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    method = method or ("POST" if body is not None else "GET")
    return httpx.request(method, gw.base_url + path, json=body, params=params, headers=headers, timeout=30)


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def chat(gw: GatewayProcess, key: str, model: str = "gpt-4o-mini") -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


def test_key_lifecycle_with_the_openai_sdk(gateway: GatewayProcess, database_url: str) -> None:
    created = ok(
        call(
            gateway,
            "/key/generate",
            {"key_alias": unique("life"), "models": ["gpt-4o-mini"], "metadata": {"owner": "tests"}},
        )
    )
    key, token = created["key"], created["token"]
    assert key.startswith("sk-") and len(key) >= 3 + 22 and token != key
    assert not sql(database_url, "SELECT 1 FROM virtual_keys WHERE token_hash = $1 OR key_name = $1", key)

    assert chat(gateway, key).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as denied:
        chat(gateway, key, model="gpt-4o")
    assert denied.value.body["code"] == "model_not_allowed"

    info = ok(call(gateway, "/key/info", params={"key": key}))["info"]
    assert info["models"] == ["gpt-4o-mini"] and info["metadata"] == {"owner": "tests"}

    ok(call(gateway, "/key/update", {"key": key, "models": ["gpt-4o-mini", "gpt-4o"]}))
    chat(gateway, key, model="gpt-4o")  # the update invalidated the cached key at once

    ok(call(gateway, "/key/block", {"key": key}))
    with pytest.raises(openai.AuthenticationError):
        chat(gateway, key)
    ok(call(gateway, "/key/unblock", {"key": key}))
    chat(gateway, key)

    fresh = ok(call(gateway, "/key/regenerate", {"key": key}))["key"]
    with pytest.raises(openai.AuthenticationError):
        chat(gateway, key)
    chat(gateway, fresh)

    assert ok(call(gateway, "/key/delete", {"keys": [fresh]}))["deleted_keys"] == [fresh]
    with pytest.raises(openai.AuthenticationError) as gone:
        chat(gateway, fresh)
    assert gone.value.body["type"] == "authentication_error"

    actions = [
        r["action"]
        for r in sql(
            database_url,
            "SELECT action FROM audit_logs WHERE object_id = ANY($1) ORDER BY created_at",
            [token, ok_hash(fresh)],
        )
    ]
    assert actions == [
        "key.generate",
        "key.update",
        "key.block",
        "key.unblock",
        "key.regenerate",
        "key.delete",
    ]


def ok_hash(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def test_durations(gateway: GatewayProcess) -> None:
    forever = ok(call(gateway, "/key/generate", {"duration": "permanent"}))
    assert forever["expires"] is None
    hour = ok(call(gateway, "/key/generate", {"duration": "1h", "max_budget": 1, "budget_duration": "30d"}))
    assert hour["expires"] is not None and hour["budget_reset_at"] is not None
    assert hour["budget_duration"] == "30d"


def test_wrong_and_missing_keys_are_401(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.AuthenticationError) as wrong:
        chat(gateway, "sk-not-a-real-key-at-all")
    assert wrong.value.status_code == 401 and wrong.value.body["code"] == "invalid_api_key"
    response = call(gateway, "/key/list", key=None)
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    # Authentication comes before validation: no schema details for callers without a key.
    assert call(gateway, "/key/generate", {"max_budget": -1}, key=None).status_code == 401
    assert call(gateway, "/key/generate", {"max_budget": -1}, key="sk-wrong-wrong-wrong").status_code == 401


def test_team_budget_is_enforced_as_budget_exceeded(gateway: GatewayProcess) -> None:
    team = ok(
        call(
            gateway,
            "/team/new",
            {"team_alias": unique("budget"), "max_budget": 0.00002, "models": ["gpt-4o-mini"]},
        )
    )
    key = ok(call(gateway, "/key/generate", {"team_id": team["team_id"]}))["key"]
    chat(gateway, key)
    chat(gateway, key)  # 2 x 0.000013 > 0.00002: the team is now over budget
    deadline = time.monotonic() + 20
    while True:  # spend is written in the background (every 0.1 s here)
        try:
            chat(gateway, key)
        except openai.BadRequestError as exc:
            assert exc.body["code"] == "budget_exceeded" and exc.body["type"] == "budget_exceeded"
            break
        assert time.monotonic() < deadline, "the team budget was never enforced"
        time.sleep(0.1)
    info = ok(call(gateway, "/team/info", params={"team_id": team["team_id"]}))
    assert info["team_info"]["spend"] >= 0.00002


def test_team_admin_manages_only_its_own_team(gateway: GatewayProcess) -> None:
    admin_user, plain_user = unique("admin"), unique("plain")
    team = ok(
        call(
            gateway,
            "/team/new",
            {
                "team_alias": unique("own"),
                "members_with_roles": [
                    {"role": "admin", "user_id": admin_user},
                    {"role": "user", "user_id": plain_user},
                ],
            },
        )
    )["team_id"]
    other = ok(call(gateway, "/team/new", {"team_alias": unique("other")}))["team_id"]
    admin_key = ok(call(gateway, "/key/generate", {"team_id": team, "user_id": admin_user}))["key"]
    plain_key = ok(call(gateway, "/key/generate", {"team_id": team, "user_id": plain_user}))["key"]

    made = ok(call(gateway, "/key/generate", {"key_alias": unique("by-admin")}, key=admin_key))
    assert made["team_id"] == team  # a team admin's keys land in its team
    assert call(gateway, "/key/generate", {"team_id": other}, key=admin_key).status_code == 403
    other_key = ok(call(gateway, "/key/generate", {"team_id": other}))["key"]
    assert call(gateway, "/key/block", {"key": other_key}, key=admin_key).status_code == 403
    ok(call(gateway, "/key/block", {"key": made["key"]}, key=admin_key))
    listed = ok(call(gateway, "/key/list", key=admin_key))
    assert listed["total_count"] == 3

    # A plain key reads its own info and nothing else.
    assert ok(call(gateway, "/key/info", key=plain_key))["info"]["user_id"] == plain_user
    assert call(gateway, "/key/info", params={"key": other_key}, key=plain_key).status_code == 403
    assert call(gateway, "/key/generate", {}, key=plain_key).status_code == 403
    assert call(gateway, "/team/new", {}, key=admin_key).status_code == 403
    assert call(gateway, "/spend/logs", key=plain_key).status_code == 403


def test_users_and_membership(gateway: GatewayProcess) -> None:
    team = ok(call(gateway, "/team/new", {"team_alias": unique("users")}))["team_id"]
    user = ok(
        call(
            gateway,
            "/user/new",
            {"user_email": f"{unique('u')}@example.com", "teams": [team], "max_budget": 5},
        )
    )
    assert user["key"].startswith("sk-")
    info = ok(call(gateway, "/user/info", params={"user_id": user["user_id"]}))
    assert info["teams"][0]["team_id"] == team and len(info["keys"]) == 1
    ok(call(gateway, "/user/update", {"user_id": user["user_id"], "user_role": "proxy_admin"}))
    # A proxy admin's key can do admin work.
    ok(call(gateway, "/team/list", key=user["key"]))
    ok(call(gateway, "/team/member_delete", {"team_id": team, "user_id": user["user_id"]}))
    assert ok(call(gateway, "/team/info", params={"team_id": team}))["team_info"]["members_with_roles"] == []
    ok(
        call(
            gateway,
            "/team/member_add",
            {"team_id": team, "member": {"role": "admin", "user_id": user["user_id"]}},
        )
    )
    users = ok(call(gateway, "/user/list", params={"page_size": 1000}))
    assert user["user_id"] in {u["user_id"] for u in users["users"]}
    assert ok(call(gateway, "/user/delete", {"user_ids": [user["user_id"]]}))["deleted_users"] == [
        user["user_id"]
    ]
    assert ok(call(gateway, "/team/delete", {"team_ids": [team]}))["deleted_teams"] == [team]


BAD_INPUTS = [
    ("/key/generate", {"team_id": "no-such-team"}, "team_id"),
    ("/key/generate", {"max_budget": -1}, "max_budget"),
    ("/key/generate", {"max_budget": "lots"}, "max_budget"),
    ("/key/generate", {"models": "gpt-4o"}, "models"),
    ("/key/generate", {"rpm_limit": 1.5}, "rpm_limit"),
    ("/key/generate", {"budget_duration": "forever"}, "budget_duration"),
    ("/key/generate", {"key_alias": "x'; DROP TABLE virtual_keys; --"}, "key_alias"),
    ("/key/generate", {"metadata": {"blob": "x" * 20_000}}, "metadata"),
    ("/key/generate", {"metadata": ["not", "an", "object"]}, "metadata"),
    ("/team/new", {"team_alias": "Robert'); DROP TABLE teams;--"}, "team_alias"),
    ("/team/new", {"max_budget": -0.01}, "max_budget"),
    ("/user/new", {"user_email": "not-an-email"}, "user_email"),
    ("/user/new", {"teams": ["no-such-team"]}, "teams"),
    ("/team/member_add", {"team_id": "t", "member": {"role": "owner", "user_id": "u"}}, "member"),
    # Values pydantic would accept but the database could not store (each was a 500 before).
    ("/key/generate", {"tpm_limit": 2**31}, "tpm_limit"),
    ("/key/generate", {"max_parallel_requests": 10**12}, "max_parallel_requests"),
    ("/key/generate", {"model_tpm_limit": {"gpt-4o": 2**31}}, "model_tpm_limit"),
    ("/team/new", {"rpm_limit": 2**31}, "rpm_limit"),
    ("/user/new", {"tpm_limit": 2**40}, "tpm_limit"),
    ("/key/generate", {"max_budget": 1e300}, "max_budget"),
    ("/team/new", {"max_budget": 1e12}, "max_budget"),
    ("/key/generate", {"budget_duration": "99999999999999999999d"}, "budget_duration"),
    ("/key/generate", {"metadata": {"note": "a\x00b"}}, "metadata"),
    ("/team/delete", {"team_ids": ["t" * 10_000]}, "team_ids"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD_INPUTS)
def test_bad_input_is_a_400_naming_the_field(
    gateway: GatewayProcess, path: str, body: dict[str, Any], field: str
) -> None:
    response = call(gateway, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] is not None and error["param"].startswith(field), error
    assert field in error["message"]


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/key/generate", b'{"max_budget": NaN}', "max_budget"),
        ("/team/new", b'{"max_budget": Infinity}', "max_budget"),
        ("/key/generate", b'{"metadata": {"x": NaN}}', "metadata"),
        ("/key/generate", b'{"metadata": {"note": "\\ud800"}}', "metadata"),
    ],
)
def test_unstorable_json_is_a_400_naming_the_field(
    gateway: GatewayProcess, path: str, raw: bytes, field: str
) -> None:
    # Python's JSON parser accepts these; DECIMAL and jsonb cannot store NaN, nor UTF-8 a lone surrogate.
    response = httpx.post(
        gateway.base_url + path,
        content=raw,
        headers={"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field


def test_out_of_range_query_parameters_are_a_400(gateway: GatewayProcess) -> None:
    response = call(gateway, "/key/list", params={"page": 10**30})
    assert response.status_code == 400 and response.json()["error"]["param"] == "page", response.text
    response = call(gateway, "/key/list", params={"team_id": "a\x00b"})
    assert response.status_code == 400, response.text


def test_duplicate_alias_is_a_400_and_sql_text_is_stored_verbatim(
    gateway: GatewayProcess, database_url: str
) -> None:
    alias = unique("dup")
    ok(call(gateway, "/key/generate", {"key_alias": alias}))
    response = call(gateway, "/key/generate", {"key_alias": alias})
    assert response.status_code == 400 and response.json()["error"]["param"] == "key_alias"
    team_alias = unique("dupteam")
    ok(call(gateway, "/team/new", {"team_alias": team_alias}))
    response = call(gateway, "/team/new", {"team_alias": team_alias})
    assert response.status_code == 400 and response.json()["error"]["param"] == "team_alias"
    # Free-form text reaches the database only as parameters.
    evil = "'); DELETE FROM virtual_keys; --"
    key = ok(call(gateway, "/key/generate", {"metadata": {"note": evil}}))["key"]
    assert ok(call(gateway, "/key/info", params={"key": key}))["info"]["metadata"] == {"note": evil}
    assert sql(database_url, "SELECT count(*) AS n FROM virtual_keys")[0]["n"] > 1
