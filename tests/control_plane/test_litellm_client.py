"""LiteLLM's own Python client (``litellm.proxy.client``) and CLI (``litellm-proxy``) against a real
gateway: keys, teams and users as a team migrating from LiteLLM drives them (models: test_db_models).

The client runs in LiteLLM's own install (bench/.peers/litellm, made by bench/gateway_overhead.py), in
a process of its own (tests/control_plane/litellm_client_script.py); LiteLLM ships no lighter package
with the client alone. Without that install these tests are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.control_plane.conftest import MASTER_KEY
from tests.control_plane.test_admin_api import call, ok, unique
from tests.support.gateway_process import GatewayProcess

REPO = Path(__file__).resolve().parents[2]
PEER = REPO / "bench" / ".peers" / "litellm" / "bin"
SCRIPT = Path(__file__).with_name("litellm_client_script.py")

pytestmark = pytest.mark.skipif(
    not (PEER / "python").exists(),
    reason="LiteLLM's peer install (bench/.peers/litellm, made by bench/gateway_overhead.py) is absent",
)


class LiteLLMClient:
    """One process of LiteLLM's Python running its client; ``call`` is one client method call."""

    def __init__(self, gw: GatewayProcess, home: str) -> None:
        env = {
            **os.environ,
            "HOME": home,
            "LITELLM_PROXY_URL": gw.base_url,
            "LITELLM_PROXY_API_KEY": MASTER_KEY,
        }
        self._proc = subprocess.Popen(
            [str(PEER / "python"), str(SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=home,
        )

    def call(self, name: str, **kwargs: Any) -> Any:
        """What the client method returned; fails the test with what it raised."""
        answer = self.attempt(name, **kwargs)
        assert "ok" in answer, f"LiteLLM's client {name}({kwargs}) failed: {answer}"
        return answer["ok"]

    def attempt(self, name: str, **kwargs: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"call": name, "kwargs": kwargs}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(timeout=10)
            pytest.fail(
                f"LiteLLM's client process died: {self._proc.stderr.read() if self._proc.stderr else ''}"
            )
        return dict(json.loads(line))

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)


@pytest.fixture(scope="module")
def litellm(gateway: GatewayProcess) -> Iterator[LiteLLMClient]:
    with tempfile.TemporaryDirectory() as home:  # LiteLLM keeps CLI state under ~/.litellm
        client = LiteLLMClient(gateway, home)
        try:
            yield client
        finally:
            client.close()


def _chat(gw: GatewayProcess, key: str) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_keys_through_litellms_client(litellm: LiteLLMClient, gateway: GatewayProcess) -> None:
    team = ok(call(gateway, "/team/new", {"team_alias": unique("client-team")}))["team_id"]
    user = unique("client-user")
    tier = ok(call(gateway, "/budget/new", {"budget_id": unique("client-tier"), "max_budget": 50}))[
        "budget_id"
    ]
    alias = unique("client-key")
    created = litellm.call(
        "keys.generate",
        models=["gpt-4o-mini"],
        aliases={"mini": "gpt-4o-mini"},
        duration="1d",
        key_alias=alias,
        team_id=team,
        user_id=user,
        budget_id=tier,
        config={"source": "litellm-client"},
    )
    key = created["key"]
    assert key.startswith("sk-") and created["key_alias"] == alias and created["budget_id"] == tier
    assert created["team_id"] == team and created["user_id"] == user and created["expires"]
    assert _chat(gateway, key).status_code == 200

    info = litellm.call("keys.info", key=key)
    assert info["key"] == key and info["info"]["key_alias"] == alias and "token" not in info["info"]

    listed = litellm.call("keys.list", team_id=team, return_full_object=True, include_team_keys=True)
    assert [k["key_alias"] for k in listed["keys"]] == [alias]
    assert listed["total_count"] == 1 and listed["current_page"] == 1
    by_alias = litellm.call("keys.list", key_alias=alias)
    assert len(by_alias["keys"]) == 1
    by_hash = litellm.call("keys.list", key_hash=created["token"])
    assert by_hash["keys"] == [created["token"]] and by_hash["total_count"] == 1

    updated = litellm.call("keys.update", key=key, models=["gpt-4o-mini", "gpt-4o"], spend=0.5)
    assert updated["models"] == ["gpt-4o-mini", "gpt-4o"] and updated["spend"] == 0.5

    deleted = litellm.call("keys.delete", key_aliases=[alias])
    assert deleted["deleted_keys"]
    assert _chat(gateway, key).status_code == 401
    refused = litellm.attempt("keys.info", key=key)
    assert refused["status"] == 404


def test_users_and_teams_through_litellms_client(litellm: LiteLLMClient, gateway: GatewayProcess) -> None:
    team = ok(call(gateway, "/team/new", {"team_alias": unique("client-team")}))["team_id"]
    email = f"{unique('client')}@example.com"
    created = litellm.call(
        "users.create_user",
        user_data={"user_email": email, "user_role": "internal_user", "teams": [team], "max_budget": 5},
    )
    user_id = created["user_id"]
    assert created["user_email"] == email and created["key"].startswith("sk-")

    info = litellm.call("users.get_user", user_id=user_id)
    assert info["user_id"] == user_id and info["user_info"]["user_email"] == email
    assert [t["team_id"] for t in info["teams"]] == [team]
    assert litellm.call("users.list_users")  # the first page, LiteLLM's shape read by its client
    # Users are listed oldest first, and other tests share the database: the newest is on the last page.
    total = litellm.call("http.request", method="GET", uri="/user/list", params={"page_size": 1})["total"]
    last = litellm.call("users.list_users", params={"page": total, "page_size": 1})
    assert [u["user_id"] for u in last] == [user_id]

    assert litellm.call("users.get_user_v2", user_id=user_id)["user_email"] == email

    teams = litellm.call("teams.list")
    assert team in [t["team_id"] for t in teams]
    mine = litellm.call("teams.list", user_id=user_id)
    assert [t["team_id"] for t in mine] == [team]
    paged = litellm.call("teams.list_v2", user_id=user_id, page=1, page_size=5, sort_by="team_alias")
    assert [t["team_id"] for t in paged["teams"]] == [team]
    assert (paged["total"], paged["page"], paged["page_size"], paged["total_pages"]) == (1, 1, 5, 1)

    deleted = litellm.call("users.delete_user", user_ids=[user_id])
    assert user_id in json.dumps(deleted)
    assert litellm.attempt("users.get_user", user_id=user_id)["error"].startswith("NotFoundError")


def test_teams_of_an_organization_through_litellms_client(
    litellm: LiteLLMClient, gateway: GatewayProcess
) -> None:
    org = ok(call(gateway, "/organization/new", {"organization_alias": unique("client-org")}))[
        "organization_id"
    ]
    inside = [
        ok(call(gateway, "/team/new", {"team_alias": unique(f"client-org-{i}"), "organization_id": org}))[
            "team_id"
        ]
        for i in range(3)
    ]
    outside = ok(call(gateway, "/team/new", {"team_alias": unique("client-outside")}))["team_id"]
    keys = [litellm.call("keys.generate", team_id=t)["token"] for t in (inside[0], outside)]
    assert litellm.call("keys.list", organization_id=org)["keys"] == keys[:1]
    assert sorted(t["team_id"] for t in litellm.call("teams.list", organization_id=org)) == sorted(inside)
    first = litellm.call("teams.list_v2", organization_id=org, page=1, page_size=2, sort_order="desc")
    second = litellm.call("teams.list_v2", organization_id=org, page=2, page_size=2, sort_order="desc")
    assert first["total"] == 3 and first["total_pages"] == 2
    assert [t["team_id"] for t in first["teams"] + second["teams"]] == inside[::-1]
    assert litellm.call("teams.list_v2", team_id=inside[1])["teams"][0]["team_id"] == inside[1]
    refused = litellm.attempt("teams.list_v2", sort_by="password")
    assert refused["status"] == 400


def test_litellm_proxy_cli_for_keys_users_and_teams(gateway: GatewayProcess) -> None:
    def cli(*args: str) -> str:
        with tempfile.TemporaryDirectory() as home:
            env = {
                **os.environ,
                "HOME": home,
                "LITELLM_PROXY_URL": gateway.base_url,
                "LITELLM_PROXY_API_KEY": MASTER_KEY,
                "COLUMNS": "300",  # rich would cut the table's cells to fit 80 columns
            }
            done = subprocess.run(
                [str(PEER / "litellm-proxy"), *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                cwd=home,
            )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    email = f"{unique('cli')}@example.com"
    created = json.loads(cli("users", "create", "--email", email, "--max-budget", "3"))
    assert created["user_email"] == email

    alias = unique("cli-key")
    generated = cli(
        "keys", "generate", "--key-alias", alias, "--models", "gpt-4o-mini", "--user-id", created["user_id"]
    )
    assert alias in generated
    listed = json.loads(cli("keys", "list", "--key-alias", alias, "--format", "json"))
    assert listed["total_count"] == 1 and alias in json.dumps(listed["keys"])

    team = ok(call(gateway, "/team/new", {"team_alias": unique("cli-team")}))
    assert team["team_alias"] in cli("teams", "list")
