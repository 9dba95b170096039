"""The role model's rules (README, "Roles and access"), each against a real gateway and Postgres.

Every test here is a hole that was open: a team admin minting proxy-admin keys, charging another
team's users, creating users; a blocked team's or user's keys still passing; nulls in NOT NULL
columns giving a 500 or silently widening a key's models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import openai
import pytest

from tests.control_plane.test_admin_api import call, chat, ok, sql, unique
from tests.support.gateway_process import GatewayProcess


@dataclass
class Team:
    id: str
    admin_user: str
    admin_key: str
    member_user: str
    member_key: str


def new_team(gw: GatewayProcess) -> Team:
    """A team with an admin member and a plain member, each with a key of the team (made by the master)."""
    admin_user, member_user = unique("ta"), unique("tm")
    team_id = ok(
        call(
            gw,
            "/team/new",
            {
                "team_alias": unique("team"),
                "members_with_roles": [
                    {"role": "admin", "user_id": admin_user},
                    {"role": "user", "user_id": member_user},
                ],
            },
        )
    )["team_id"]
    admin_key = ok(call(gw, "/key/generate", {"team_id": team_id, "user_id": admin_user}))["key"]
    member_key = ok(call(gw, "/key/generate", {"team_id": team_id, "user_id": member_user}))["key"]
    return Team(team_id, admin_user, admin_key, member_user, member_key)


def new_user(gw: GatewayProcess, role: str = "internal_user", teams: list[str] | None = None) -> str:
    user_id = unique(role)
    body: dict[str, Any] = {"user_id": user_id, "user_role": role, "auto_create_key": False}
    ok(call(gw, "/user/new", {**body, "teams": teams or []}))
    return user_id


def refused(response: Any, status: int = 403, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    if param is not None:
        assert error["param"] == param, error
    return error


def user_exists(url: str, user_id: str) -> bool:
    return bool(sql(url, "SELECT 1 FROM users WHERE id = $1", user_id))


# ---- a team admin never hands out more than it holds -------------------------------------------------


def test_team_admin_cannot_mint_a_proxy_admin_key(gateway: GatewayProcess) -> None:
    team = new_team(gateway)
    # A proxy admin who is even a member of the team: still not a user the team admin may use.
    boss = new_user(gateway, "proxy_admin", teams=[team.id])
    refused(call(gateway, "/key/generate", {"user_id": boss}, key=team.admin_key), param="user_id")
    outsider_boss = new_user(gateway, "proxy_admin")
    refused(call(gateway, "/key/generate", {"user_id": outsider_boss}, key=team.admin_key), param="user_id")
    viewer = new_user(gateway, "proxy_admin_viewer", teams=[team.id])
    refused(call(gateway, "/key/generate", {"user_id": viewer}, key=team.admin_key), param="user_id")

    # Moving one of its own keys to the proxy admin, by update or regenerate, is refused the same way.
    own = ok(call(gateway, "/key/generate", {}, key=team.admin_key))
    refused(call(gateway, "/key/update", {"key": own["key"], "user_id": boss}, key=team.admin_key))
    refused(call(gateway, "/key/regenerate", {"key": own["key"], "user_id": boss}, key=team.admin_key))
    refused(call(gateway, f"/key/{own['key']}/regenerate", {"user_id": boss}, key=team.admin_key))
    assert ok(call(gateway, "/key/info", params={"key": own["key"]}))["info"]["user_id"] is None

    # A proxy admin's key that sits in the team: the team admin may read it, never regenerate
    # (which would hand it the new secret), update, block or delete it.
    boss_key = ok(call(gateway, "/key/generate", {"team_id": team.id, "user_id": boss}))["key"]
    ok(call(gateway, "/key/info", params={"key": boss_key}, key=team.admin_key))
    refused(call(gateway, "/key/regenerate", {"key": boss_key}, key=team.admin_key))
    refused(call(gateway, "/key/update", {"key": boss_key, "models": ["gpt-4o"]}, key=team.admin_key))
    refused(call(gateway, "/key/block", {"key": boss_key}, key=team.admin_key))
    refused(call(gateway, "/key/delete", {"keys": [boss_key]}, key=team.admin_key))
    chat(gateway, boss_key)  # untouched: the old secret still works


def test_team_admin_cannot_charge_another_teams_user(gateway: GatewayProcess, database_url: str) -> None:
    team, other = new_team(gateway), new_team(gateway)
    refused(call(gateway, "/key/generate", {"user_id": other.member_user}, key=team.admin_key))
    own = ok(call(gateway, "/key/generate", {}, key=team.admin_key))["key"]
    refused(call(gateway, "/key/update", {"key": own, "user_id": other.member_user}, key=team.admin_key))
    # Nor into the other team, nor out of every team (where only proxy admins manage keys).
    refused(call(gateway, "/key/update", {"key": own, "team_id": other.id}, key=team.admin_key))
    refused(call(gateway, "/key/update", {"key": own, "team_id": None}, key=team.admin_key))
    refused(call(gateway, "/key/generate", {"team_id": other.id}, key=team.admin_key))
    # A user in no team is outside the team as well until someone adds it.
    loner = new_user(gateway)
    refused(call(gateway, "/key/generate", {"user_id": loner}, key=team.admin_key))
    keys = sql(database_url, "SELECT 1 FROM virtual_keys WHERE user_id = ANY($1)", [other.member_user, loner])
    assert len(keys) == 1  # only the other team's own key for its member


def test_team_admin_never_creates_users(gateway: GatewayProcess, database_url: str) -> None:
    team = new_team(gateway)
    ghost = unique("ghost")
    refused(call(gateway, "/key/generate", {"user_id": ghost}, key=team.admin_key), param="user_id")
    refused(
        call(
            gateway,
            "/team/member_add",
            {"team_id": team.id, "member": {"role": "user", "user_id": ghost}},
            key=team.admin_key,
        ),
        param="member",
    )
    email = f"{ghost}@example.com"
    refused(
        call(
            gateway,
            "/team/member_add",
            {"team_id": team.id, "member": {"role": "user", "user_email": email}},
            key=team.admin_key,
        )
    )
    assert not user_exists(database_url, ghost)
    assert not sql(database_url, "SELECT 1 FROM users WHERE email = $1", email)


def test_team_admin_manages_its_own_members(gateway: GatewayProcess) -> None:
    team, other = new_team(gateway), new_team(gateway)
    # Its own member: a key for them works and is charged to them.
    made = ok(call(gateway, "/key/generate", {"user_id": team.member_user}, key=team.admin_key))
    assert made["team_id"] == team.id and made["user_id"] == team.member_user
    chat(gateway, made["key"])

    # Adding an existing user of no team, then giving them a key, then changing their member role.
    loner = new_user(gateway)
    add = {"team_id": team.id, "member": {"role": "user", "user_id": loner}}
    ok(call(gateway, "/team/member_add", add, key=team.admin_key))
    ok(call(gateway, "/key/generate", {"user_id": loner}, key=team.admin_key))
    promote = {"team_id": team.id, "member": {"role": "admin", "user_id": loner}}
    view = ok(call(gateway, "/team/member_add", promote, key=team.admin_key))
    assert {"team_id": team.id, "user_id": loner, "role": "admin"} in view["members_with_roles"]
    ok(call(gateway, "/team/member_delete", {"team_id": team.id, "user_id": loner}, key=team.admin_key))

    # Never a user of another team, never a proxy admin, never another team's membership.
    add_other = {"team_id": team.id, "member": {"role": "user", "user_id": other.member_user}}
    refused(call(gateway, "/team/member_add", add_other, key=team.admin_key), param="member")
    boss = new_user(gateway, "proxy_admin")
    add_boss = {"team_id": team.id, "member": {"role": "admin", "user_id": boss}}
    refused(call(gateway, "/team/member_add", add_boss, key=team.admin_key), param="member")
    into_other = {"team_id": other.id, "member": {"role": "admin", "user_id": team.member_user}}
    refused(call(gateway, "/team/member_add", into_other, key=team.admin_key), param="team_id")
    remove_other = {"team_id": other.id, "user_id": other.member_user}
    refused(call(gateway, "/team/member_delete", remove_other, key=team.admin_key), param="team_id")


def test_only_proxy_admins_set_roles_and_team_settings(gateway: GatewayProcess) -> None:
    team = new_team(gateway)
    for key in (team.admin_key, team.member_key):
        refused(
            call(gateway, "/user/update", {"user_id": team.admin_user, "user_role": "proxy_admin"}, key=key)
        )
        refused(call(gateway, "/user/new", {"user_role": "proxy_admin"}, key=key))
        refused(call(gateway, "/team/update", {"team_id": team.id, "max_budget": 1000}, key=key))
        refused(call(gateway, "/team/unblock", {"team_id": team.id}, key=key))
    assert ok(call(gateway, "/user/info", params={"user_id": team.admin_user}))["user_info"]["user_role"] == (
        "internal_user"
    )


def test_proxy_admin_viewer_reads_everything_and_writes_nothing(gateway: GatewayProcess) -> None:
    team = new_team(gateway)
    viewer = new_user(gateway, "proxy_admin_viewer")
    key = ok(call(gateway, "/key/generate", {"user_id": viewer}))["key"]
    ok(call(gateway, "/key/list", key=key))
    ok(call(gateway, "/team/info", params={"team_id": team.id}, key=key))
    ok(call(gateway, "/user/info", params={"user_id": team.member_user}, key=key))
    ok(call(gateway, "/key/info", params={"key": team.member_key}, key=key))
    ok(call(gateway, "/spend/logs", key=key))
    refused(call(gateway, "/key/generate", {}, key=key))
    refused(call(gateway, "/key/block", {"key": team.member_key}, key=key))
    refused(call(gateway, "/user/update", {"user_id": viewer, "user_role": "proxy_admin"}, key=key))


# ---- blocked is blocked everywhere ---------------------------------------------------------------------


def test_blocked_team_is_blocked_on_the_admin_api_too(gateway: GatewayProcess) -> None:
    team = new_team(gateway)
    ok(call(gateway, "/key/list", key=team.admin_key))
    blocked = ok(call(gateway, "/team/block", {"team_id": team.id}))
    assert blocked["blocked"] is True
    for key in (team.admin_key, team.member_key):
        error = refused(call(gateway, "/key/list", key=key), 401)
        assert error["code"] == "key_blocked" and "team" in error["message"]
        with pytest.raises(openai.AuthenticationError):
            chat(gateway, key)
    refused(call(gateway, "/key/generate", {}, key=team.admin_key), 401)
    assert ok(call(gateway, "/team/unblock", {"team_id": team.id}))["blocked"] is False
    ok(call(gateway, "/key/list", key=team.admin_key))
    chat(gateway, team.member_key)


def test_blocked_user_is_blocked_everywhere(gateway: GatewayProcess) -> None:
    team = new_team(gateway)
    chat(gateway, team.admin_key)  # cached by the resolver: the block must reach it anyway
    updated = ok(call(gateway, "/user/update", {"user_id": team.admin_user, "blocked": True}))
    assert updated["blocked"] is True
    with pytest.raises(openai.AuthenticationError) as denied:
        chat(gateway, team.admin_key)
    assert denied.value.body["code"] == "key_blocked"
    error = refused(call(gateway, "/key/list", key=team.admin_key), 401)
    assert "user" in error["message"]
    refused(call(gateway, "/user/info", key=team.admin_key), 401)
    chat(gateway, team.member_key)  # the rest of the team is not affected
    ok(call(gateway, "/user/update", {"user_id": team.admin_user, "blocked": False}))
    chat(gateway, team.admin_key)
    ok(call(gateway, "/key/list", key=team.admin_key))


def test_blocked_proxy_admin_is_refused(gateway: GatewayProcess) -> None:
    boss = new_user(gateway, "proxy_admin")
    key = ok(call(gateway, "/key/generate", {"user_id": boss}))["key"]
    ok(call(gateway, "/team/list", key=key))
    ok(call(gateway, "/user/update", {"user_id": boss, "blocked": True}))
    refused(call(gateway, "/team/list", key=key), 401)
    refused(call(gateway, "/user/update", {"user_id": boss, "blocked": False}, key=key), 401)


# ---- null for a NOT NULL column: a 400 naming the field -----------------------------------------------

NULLS = [
    ("/key/generate", {}, "blocked"),
    ("/key/generate", {}, "models"),
    ("/key/generate", {}, "metadata"),
    ("/key/generate", {}, "model_rpm_limit"),
    ("/key/generate", {}, "spend"),
    ("/key/update", {"key": "{key}"}, "blocked"),
    ("/key/update", {"key": "{key}"}, "models"),
    ("/key/update", {"key": "{key}"}, "metadata"),
    ("/key/update", {"key": "{key}"}, "model_tpm_limit"),
    ("/key/update", {"key": "{key}"}, "spend"),
    ("/key/regenerate", {"key": "{key}"}, "models"),
    ("/team/new", {}, "blocked"),
    ("/team/new", {}, "models"),
    ("/team/new", {}, "metadata"),
    ("/team/update", {"team_id": "{team}"}, "blocked"),
    ("/team/update", {"team_id": "{team}"}, "models"),
    ("/team/update", {"team_id": "{team}"}, "metadata"),
    ("/user/new", {}, "user_role"),
    ("/user/new", {}, "metadata"),
    ("/user/update", {"user_id": "{user}"}, "blocked"),
    ("/user/update", {"user_id": "{user}"}, "user_role"),
    ("/user/update", {"user_id": "{user}"}, "models"),
    ("/user/update", {"user_id": "{user}"}, "metadata"),
    ("/user/update", {"user_id": "{user}"}, "spend"),
]


@pytest.mark.parametrize(("path", "body", "field"), NULLS)
def test_null_for_a_not_null_field_is_a_400_naming_it(
    gateway: GatewayProcess, path: str, body: dict[str, str], field: str
) -> None:
    team = new_team(gateway)
    refs = {"{key}": team.member_key, "{team}": team.id, "{user}": team.member_user}
    before = ok(call(gateway, "/key/info", params={"key": team.member_key}))["info"]
    sent = {name: refs.get(value, value) for name, value in body.items()}
    error = refused(call(gateway, path, {**sent, field: None}), 400, param=field)
    assert field in error["message"] and "null" in error["message"]
    # Nothing changed: in particular a null `models` did not widen the key to every model.
    assert ok(call(gateway, "/key/info", params={"key": team.member_key}))["info"] == before


def test_null_clears_nullable_fields(gateway: GatewayProcess) -> None:
    made = ok(call(gateway, "/key/generate", {"max_budget": 5, "rpm_limit": 10, "key_alias": unique("n")}))
    cleared = ok(call(gateway, "/key/update", {"key": made["key"], "max_budget": None, "key_alias": None}))
    assert cleared["max_budget"] is None and cleared["key_alias"] is None and cleared["rpm_limit"] == 10
