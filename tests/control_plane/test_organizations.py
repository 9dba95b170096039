"""Organizations against a real gateway and Postgres: LiteLLM's ``/organization/*`` methods, payloads
and answers, teams placed in an organization (held within its models and budget), and what an
organization bounds at request time: its teams' keys' models, their summed spend against its budget
row, and one rate limit shared by all its teams.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.control_plane.conftest import UNIT_COST
from tests.control_plane.test_admin_api import call, ok, unique
from tests.support.gateway_process import GatewayProcess


def _org(gw: GatewayProcess, **body: Any) -> dict[str, Any]:
    return ok(call(gw, "/organization/new", {"organization_alias": unique("org"), **body}))


def _chat(gw: GatewayProcess, key: str, model: str = "gpt-4o-mini") -> httpx.Response:
    return httpx.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def _team_key(gw: GatewayProcess, org_id: str, **team: Any) -> str:
    team_id = ok(call(gw, "/team/new", {"organization_id": org_id, **team}))["team_id"]
    return str(ok(call(gw, "/key/generate", {"team_id": team_id}))["key"])


def test_organization_lifecycle_in_litellms_shapes(gateway: GatewayProcess) -> None:
    alias = unique("acme")
    created = ok(
        call(
            gateway,
            "/organization/new",
            {
                "organization_alias": alias,
                "models": ["gpt-4o-mini"],
                "max_budget": 10,
                "budget_duration": "30d",
            },
        )
    )
    org_id = created["organization_id"]
    assert created["organization_alias"] == alias and created["models"] == ["gpt-4o-mini"]
    assert created["litellm_budget_table"]["max_budget"] == 10 and created["budget_id"]
    assert created["members"] == [] and created["teams"] == [] and created["spend"] == 0
    assert created["created_by"] == "master"

    updated = ok(
        call(
            gateway,
            "/organization/update",
            {"organization_id": org_id, "max_budget": 20, "metadata": {"tier": "gold"}},
            method="PATCH",
        )
    )
    assert (
        updated["budget_id"] == created["budget_id"] and updated["litellm_budget_table"]["max_budget"] == 20
    )
    assert updated["metadata"] == {"tier": "gold"} and updated["organization_alias"] == alias
    # LiteLLM's UI nests the budget fields.
    nested = {"organization_id": org_id, "litellm_budget_table": {"max_budget": 30, "rpm_limit": 7}}
    updated = ok(call(gateway, "/organization/update", nested, method="PATCH"))
    assert (
        updated["litellm_budget_table"]["max_budget"] == 30
        and updated["litellm_budget_table"]["rpm_limit"] == 7
    )

    team = ok(call(gateway, "/team/new", {"organization_id": org_id, "models": ["gpt-4o-mini"]}))
    assert team["organization_id"] == org_id

    user_id, email = unique("member"), f"{unique('m')}@example.com"
    added = ok(
        call(
            gateway,
            "/organization/member_add",
            {
                "organization_id": org_id,
                "member": [
                    {"user_id": user_id, "role": "org_admin"},
                    {"user_email": email, "role": "internal_user"},
                ],
            },
        )
    )
    assert {m["user_role"] for m in added["updated_organization_memberships"]} == {
        "org_admin",
        "internal_user",
    }
    assert user_id in [u["user_id"] for u in added["updated_users"]]
    changed = ok(
        call(
            gateway,
            "/organization/member_update",
            {"organization_id": org_id, "user_id": user_id, "role": "internal_user_viewer"},
            method="PATCH",
        )
    )
    assert changed["user_role"] == "internal_user_viewer"
    ok(
        call(
            gateway,
            "/organization/member_delete",
            {"organization_id": org_id, "user_email": email},
            method="DELETE",
        )
    )

    info = ok(call(gateway, "/organization/info", params={"organization_id": org_id}))
    assert [t["team_id"] for t in info["teams"]] == [team["team_id"]]
    assert [(m["user_id"], m["user_role"]) for m in info["members"]] == [(user_id, "internal_user_viewer")]
    assert (
        ok(call(gateway, "/organization/info", {"organizations": [org_id]}))[0]["organization_id"] == org_id
    )
    assert org_id in [o["organization_id"] for o in ok(call(gateway, "/organization/list"))]

    deleted = ok(call(gateway, "/organization/delete", {"organization_ids": [org_id]}, method="DELETE"))
    assert [o["organization_id"] for o in deleted] == [org_id]
    team_after = ok(call(gateway, "/team/info", params={"team_id": team["team_id"]}))["team_info"]
    assert team_after["organization_id"] is None
    missing = call(gateway, "/organization/info", params={"organization_id": org_id})
    assert missing.status_code == 404 and "Organization not found" in missing.json()["error"]["message"]


def test_teams_stay_within_their_organization(gateway: GatewayProcess) -> None:
    org = _org(gateway, models=["gpt-4o-mini"], max_budget=5)
    org_id = org["organization_id"]
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/team/new", {"organization_id": org_id, "models": ["gpt-4o"]}, "models"),
        ("/team/new", {"organization_id": org_id, "max_budget": 6}, "max_budget"),
        ("/team/new", {"organization_id": "no-such-org"}, "organization_id"),
    ]
    inside = ok(
        call(gateway, "/team/new", {"organization_id": org_id, "models": ["gpt-4o-mini"], "max_budget": 5})
    )
    cases.append(("/team/update", {"team_id": inside["team_id"], "models": ["gpt-4o"]}, "models"))
    for path, body, param in cases:
        resp = call(gateway, path, body)
        assert resp.status_code == 400, (path, body, resp.text)
        assert param in resp.json()["error"]["message"], resp.text
    # Narrowing the organization below what a team already holds is refused too.
    resp = call(
        gateway, "/organization/update", {"organization_id": org_id, "models": ["gpt-4o"]}, method="PATCH"
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "models", resp.text
    for path, body in (
        ("/organization/new", {"models": []}),
        ("/organization/new", {"organization_alias": "x", "budget_id": "tier", "max_budget": 1}),
        ("/organization/update", {"organization_id": org_id, "organization_alias": None}),
        (
            "/organization/member_add",
            {"organization_id": org_id, "member": {"user_id": "u", "role": "proxy_admin"}},
        ),
    ):
        resp = call(gateway, path, body)
        assert resp.status_code == 400, (path, body, resp.text)
    resp = call(gateway, "/organization/update", {"organization_id": "no-such-org", "models": []})
    assert resp.status_code == 404


def test_organization_bounds_its_teams_keys(gateway: GatewayProcess) -> None:
    # Models: a key of a team that lists none may still use only the organization's.
    org = _org(gateway, models=["gpt-4o-mini"])
    key = _team_key(gateway, org["organization_id"])
    assert _chat(gateway, key).status_code == 200
    assert _chat(gateway, key, "gpt-4o").status_code == 403

    # Budget: the spend of every team of the organization counts against its row.
    capped = _org(gateway, max_budget=float(UNIT_COST) * 1.5)
    first, second = (_team_key(gateway, capped["organization_id"]) for _ in range(2))
    assert _chat(gateway, first).status_code == 200
    deadline = time.monotonic() + 30
    while (resp := _chat(gateway, second)).status_code == 200:
        assert time.monotonic() < deadline, "the organization budget was never enforced"
        time.sleep(0.05)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "budget_exceeded"
    assert "Organization spend" in resp.json()["error"]["message"]
    info = ok(call(gateway, "/organization/info", params={"organization_id": capped["organization_id"]}))
    assert info["spend"] >= float(UNIT_COST) * 1.5

    # Rate limit: one window shared by all its teams.
    limited = _org(gateway, rpm_limit=2)
    keys = [_team_key(gateway, limited["organization_id"]) for _ in range(2)]
    assert [_chat(gateway, k).status_code for k in (*keys, keys[0])] == [200, 200, 429]


def test_org_admin_manages_only_its_own_organization(gateway: GatewayProcess) -> None:
    mine, other = _org(gateway)["organization_id"], _org(gateway)["organization_id"]

    def user(role: str) -> str:
        user_id = unique(role)
        ok(call(gateway, "/user/new", {"user_id": user_id, "user_role": role, "auto_create_key": False}))
        return user_id

    boss, alice, chief = user("internal_user"), user("internal_user"), user("proxy_admin")
    viewer_boss = user("internal_user_viewer")
    for member in (boss, viewer_boss):
        body = {"organization_id": mine, "member": {"user_id": member, "role": "org_admin"}}
        ok(call(gateway, "/organization/member_add", body))
    key = ok(call(gateway, "/key/generate", {"user_id": boss}))["key"]

    def as_boss(path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return call(gateway, path, body, key=key, **kw)

    assert ok(as_boss("/organization/info", params={"organization_id": mine}))["organization_id"] == mine
    assert [o["organization_id"] for o in ok(as_boss("/organization/list"))] == [mine]
    added = as_boss(
        "/organization/member_add",
        {"organization_id": mine, "member": {"user_id": alice, "role": "internal_user"}},
    )
    assert added.status_code == 200, added.text
    # It may give what it holds (org_admin), and remove members.
    promoted = as_boss(
        "/organization/member_update",
        {"organization_id": mine, "user_id": alice, "role": "org_admin"},
        method="PATCH",
    )
    assert promoted.status_code == 200, promoted.text
    removed = as_boss(
        "/organization/member_delete", {"organization_id": mine, "user_id": alice}, method="DELETE"
    )
    assert removed.status_code == 200, removed.text

    refusals: list[tuple[str, str, Any, dict[str, Any], int]] = [
        ("GET", "/organization/info", None, {"organization_id": other}, 403),
        ("GET", "/organization/info", None, {"organization_id": "no-such-org"}, 403),  # nothing learnt
        ("POST", "/organization/info", {"organizations": [mine, other]}, {}, 403),
        (
            "POST",
            "/organization/member_add",
            {"organization_id": other, "member": {"user_id": alice, "role": "internal_user"}},
            {},
            403,
        ),
        # Never a user above internal_user, never a new user.
        (
            "POST",
            "/organization/member_add",
            {"organization_id": mine, "member": {"user_id": chief, "role": "internal_user"}},
            {},
            403,
        ),
        (
            "POST",
            "/organization/member_add",
            {"organization_id": mine, "member": {"user_id": unique("new"), "role": "internal_user"}},
            {},
            404,
        ),
        ("PATCH", "/organization/update", {"organization_id": mine, "models": []}, {}, 403),
        ("DELETE", "/organization/delete", {"organization_ids": [mine]}, {}, 403),
        ("POST", "/organization/new", {"organization_alias": "mine-too"}, {}, 403),
    ]
    for method, path, body, params, status in refusals:
        resp = as_boss(path, body, method=method, params=params)
        assert resp.status_code == status, (method, path, body, resp.text)

    # An org_admin membership of a read-only (internal_user_viewer) user grants nothing.
    viewer_key = ok(call(gateway, "/key/generate", {"user_id": viewer_boss}))["key"]
    resp = call(gateway, "/organization/info", key=viewer_key, params={"organization_id": mine})
    assert resp.status_code == 403
