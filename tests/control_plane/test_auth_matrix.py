"""The auth matrix: every route of the app against every kind of caller, one table of expected statuses.

One real gateway (with Postgres and a fake upstream) serves the whole module. ``MATRIX`` holds, for
each (method, path) the app serves, how to build a request that touches team A's objects and the
status each caller must get; a route the app serves without a row (or a row for a route it no
longer serves) fails ``test_every_route_has_a_row``. README, "Roles and access", is the same table
in words.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.app import create_app
from tests.control_plane.conftest import MASTER_KEY
from tests.control_plane.test_admin_api import ok, unique
from tests.support.gateway_process import GatewayProcess

# The callers, in the order of every row's statuses.
CALLERS = (
    "no key",
    "malformed header",
    "wrong key",
    "expired key",
    "blocked key",
    "key of a blocked team",
    "key of a blocked user",
    "key of another team",
    "team admin",
    "internal user",
    "proxy_admin_viewer",
    "proxy admin",
    "master key",
)


@dataclass
class Req:
    path: str
    body: Any = None
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    """Team A (a team admin and an internal user), another team, and the refused callers' keys."""

    gw: GatewayProcess
    team: str
    internal_user: str
    headers: dict[str, dict[str, str]]

    # Fresh objects (made by the master key) for the requests that consume what they touch.
    def fresh_key(self, blocked: bool = False) -> str:
        return str(_admin(self.gw, "/key/generate", {"team_id": self.team, "blocked": blocked})["key"])

    def fresh_team(self, blocked: bool = False) -> str:
        return str(_admin(self.gw, "/team/new", {"blocked": blocked})["team_id"])

    def fresh_response(self) -> str:
        """A stored response of team A (created through POST /v1/responses by its team admin's key)."""
        created = httpx.post(
            self.gw.base_url + "/v1/responses", json=RESPOND, headers=self.headers["team admin"], timeout=30
        )
        return str(ok(created)["id"])

    def fresh_model(self) -> str:
        """The id of a new model stored in the database (served by the fake upstream)."""
        body = {"model_name": unique("mx-model"), "litellm_params": {"model": "openai/gpt-4o-mini"}}
        return str(_admin(self.gw, "/model/new", body)["model_id"])

    def fresh_budget(self) -> str:
        return str(_admin(self.gw, "/budget/new", {"max_budget": 10})["budget_id"])

    def fresh_user(self, team: str | None = None) -> str:
        user_id = unique("mx")
        body = {"user_id": user_id, "auto_create_key": False, "teams": [team] if team else []}
        _admin(self.gw, "/user/new", body)
        return user_id


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _admin(gw: GatewayProcess, path: str, body: Any) -> Any:
    return ok(httpx.post(gw.base_url + path, json=body, headers=_bearer(MASTER_KEY), timeout=30))


# Rows. Open routes answer everyone; keyed routes refuse the first seven callers with 401 and give the
# master key 200, so a row names what the six valid keys get.
OPEN = (200,) * len(CALLERS)


def keyed(other: int, team_admin: int, internal: int, viewer: int, proxy_admin: int) -> tuple[int, ...]:
    return (401,) * 7 + (other, team_admin, internal, viewer, proxy_admin, 200)


ANY_KEY = keyed(200, 200, 200, 200, 200)
ADMIN_ONLY = keyed(403, 403, 403, 403, 200)
ADMIN_READ = keyed(403, 403, 403, 200, 200)
TEAM_WRITE = keyed(403, 200, 403, 403, 200)
TEAM_READ = keyed(403, 200, 403, 200, 200)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
EMBED = {"model": "gpt-4o-mini", "input": "hi", "encoding_format": "float"}
COMPLETE = {"model": "gpt-4o-mini", "prompt": "hi", "max_tokens": 3}
MESSAGE = {"model": "gpt-4o-mini", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
RESPOND = {"model": "gpt-4o-mini", "input": "hi"}
# A stored response belongs to the team that created it (else its key): team A's keys see team A's,
# every other caller (admins and the master key included) gets 404, as for an unknown id.
TEAM_ONLY = (401,) * 7 + (404, 200, 200, 404, 404, 404)


def _stored(tail: str) -> Callable[[World], Req]:
    return lambda w: Req(tail.format(w.fresh_response()))


MATRIX: dict[tuple[str, str], tuple[Callable[[World], Req], tuple[int, ...]]] = {
    ("POST", "/v1/chat/completions"): (lambda w: Req("/v1/chat/completions", CHAT), ANY_KEY),
    ("POST", "/chat/completions"): (lambda w: Req("/chat/completions", CHAT), ANY_KEY),
    ("GET", "/v1/models"): (lambda w: Req("/v1/models"), ANY_KEY),
    ("GET", "/models"): (lambda w: Req("/models"), ANY_KEY),
    ("POST", "/v1/embeddings"): (lambda w: Req("/v1/embeddings", EMBED), ANY_KEY),
    ("POST", "/embeddings"): (lambda w: Req("/embeddings", EMBED), ANY_KEY),
    ("POST", "/v1/completions"): (lambda w: Req("/v1/completions", COMPLETE), ANY_KEY),
    ("POST", "/completions"): (lambda w: Req("/completions", COMPLETE), ANY_KEY),
    ("GET", "/v1/models/{model:path}"): (lambda w: Req(f"/v1/models/{CHAT['model']}"), ANY_KEY),
    ("GET", "/models/{model:path}"): (lambda w: Req(f"/models/{CHAT['model']}"), ANY_KEY),
    ("POST", "/v1/responses"): (lambda w: Req("/v1/responses", RESPOND), ANY_KEY),
    ("POST", "/responses"): (lambda w: Req("/responses", RESPOND), ANY_KEY),
    ("GET", "/v1/responses/{response_id}"): (_stored("/v1/responses/{}"), TEAM_ONLY),
    ("GET", "/responses/{response_id}"): (_stored("/responses/{}"), TEAM_ONLY),
    ("DELETE", "/v1/responses/{response_id}"): (_stored("/v1/responses/{}"), TEAM_ONLY),
    ("DELETE", "/responses/{response_id}"): (_stored("/responses/{}"), TEAM_ONLY),
    ("GET", "/v1/responses/{response_id}/input_items"): (_stored("/v1/responses/{}/input_items"), TEAM_ONLY),
    ("GET", "/responses/{response_id}/input_items"): (_stored("/responses/{}/input_items"), TEAM_ONLY),
    # Anthropic's Messages door: the same keys (bearer here), errors in Anthropic's shape.
    ("POST", "/v1/messages"): (lambda w: Req("/v1/messages", MESSAGE), ANY_KEY),
    ("POST", "/messages"): (lambda w: Req("/messages", MESSAGE), ANY_KEY),
    ("POST", "/v1/messages/count_tokens"): (lambda w: Req("/v1/messages/count_tokens", MESSAGE), ANY_KEY),
    ("POST", "/messages/count_tokens"): (lambda w: Req("/messages/count_tokens", MESSAGE), ANY_KEY),
    ("GET", "/health/liveliness"): (lambda w: Req("/health/liveliness"), OPEN),
    ("GET", "/health/readiness"): (lambda w: Req("/health/readiness"), OPEN),
    ("GET", "/metrics"): (lambda w: Req("/metrics"), OPEN),
    ("GET", "/openapi.json"): (lambda w: Req("/openapi.json"), OPEN),
    # Probes every upstream: the master key only.
    ("GET", "/health"): (lambda w: Req("/health"), keyed(403, 403, 403, 403, 403)),
    # Keys.
    ("POST", "/key/generate"): (lambda w: Req("/key/generate", {"team_id": w.team}), TEAM_WRITE),
    ("POST", "/key/update"): (
        lambda w: Req("/key/update", {"key": w.fresh_key(), "metadata": {"by": "matrix"}}),
        TEAM_WRITE,
    ),
    ("POST", "/key/delete"): (lambda w: Req("/key/delete", {"keys": [w.fresh_key()]}), TEAM_WRITE),
    ("POST", "/key/regenerate"): (lambda w: Req("/key/regenerate", {"key": w.fresh_key()}), TEAM_WRITE),
    ("POST", "/key/{key}/regenerate"): (lambda w: Req(f"/key/{w.fresh_key()}/regenerate", {}), TEAM_WRITE),
    ("POST", "/key/block"): (lambda w: Req("/key/block", {"key": w.fresh_key()}), TEAM_WRITE),
    ("POST", "/key/unblock"): (lambda w: Req("/key/unblock", {"key": w.fresh_key(blocked=True)}), TEAM_WRITE),
    ("GET", "/key/info"): (lambda w: Req("/key/info", params={"key": w.fresh_key()}), TEAM_READ),
    ("GET", "/key/list"): (lambda w: Req("/key/list"), TEAM_READ),
    # Teams.
    ("POST", "/team/new"): (lambda w: Req("/team/new", {}), ADMIN_ONLY),
    ("POST", "/team/update"): (
        lambda w: Req("/team/update", {"team_id": w.team, "metadata": {"by": "matrix"}}),
        ADMIN_ONLY,
    ),
    ("POST", "/team/delete"): (lambda w: Req("/team/delete", {"team_ids": [w.fresh_team()]}), ADMIN_ONLY),
    ("POST", "/team/block"): (lambda w: Req("/team/block", {"team_id": w.fresh_team()}), ADMIN_ONLY),
    ("POST", "/team/unblock"): (
        lambda w: Req("/team/unblock", {"team_id": w.fresh_team(blocked=True)}),
        ADMIN_ONLY,
    ),
    ("GET", "/team/info"): (lambda w: Req("/team/info", params={"team_id": w.team}), TEAM_READ),
    ("GET", "/team/list"): (lambda w: Req("/team/list"), ADMIN_READ),
    ("POST", "/team/member_add"): (
        lambda w: Req("/team/member_add", {"team_id": w.team, "member": {"user_id": w.fresh_user()}}),
        TEAM_WRITE,
    ),
    ("POST", "/team/member_delete"): (
        lambda w: Req("/team/member_delete", {"team_id": w.team, "user_id": w.fresh_user(w.team)}),
        TEAM_WRITE,
    ),
    # Users.
    ("POST", "/user/new"): (lambda w: Req("/user/new", {}), ADMIN_ONLY),
    ("POST", "/user/update"): (
        lambda w: Req("/user/update", {"user_id": w.fresh_user(), "metadata": {"by": "matrix"}}),
        ADMIN_ONLY,
    ),
    ("POST", "/user/delete"): (lambda w: Req("/user/delete", {"user_ids": [w.fresh_user()]}), ADMIN_ONLY),
    # Only the internal user's own user (and admins) may read it.
    ("GET", "/user/info"): (
        lambda w: Req("/user/info", params={"user_id": w.internal_user}),
        keyed(403, 403, 200, 200, 200),
    ),
    ("GET", "/v2/user/info"): (
        lambda w: Req("/v2/user/info", params={"user_id": w.internal_user}),
        keyed(403, 403, 200, 200, 200),
    ),
    ("GET", "/v2/team/list"): (lambda w: Req("/v2/team/list"), ADMIN_READ),
    ("GET", "/user/list"): (lambda w: Req("/user/list"), ADMIN_READ),
    # Spend.
    ("GET", "/spend/logs"): (lambda w: Req("/spend/logs"), TEAM_READ),
    ("GET", "/spend/tags"): (lambda w: Req("/spend/tags"), TEAM_READ),
    ("GET", "/global/spend/report"): (lambda w: Req("/global/spend/report"), ADMIN_READ),
    # Budgets: proxy admins write, admins and viewers read.
    ("POST", "/budget/new"): (lambda w: Req("/budget/new", {"max_budget": 1.5}), ADMIN_ONLY),
    ("POST", "/budget/update"): (
        lambda w: Req("/budget/update", {"budget_id": w.fresh_budget(), "max_budget": 2}),
        ADMIN_ONLY,
    ),
    ("POST", "/budget/delete"): (lambda w: Req("/budget/delete", {"id": w.fresh_budget()}), ADMIN_ONLY),
    ("POST", "/budget/info"): (lambda w: Req("/budget/info", {"budgets": [w.fresh_budget()]}), ADMIN_READ),
    ("GET", "/budget/list"): (lambda w: Req("/budget/list"), ADMIN_READ),
    ("GET", "/global/spend"): (lambda w: Req("/global/spend"), ADMIN_READ),
    ("GET", "/global/spend/logs"): (lambda w: Req("/global/spend/logs"), ADMIN_READ),
    ("GET", "/global/spend/keys"): (lambda w: Req("/global/spend/keys"), ADMIN_READ),
    ("GET", "/global/spend/models"): (lambda w: Req("/global/spend/models"), ADMIN_READ),
    ("GET", "/global/spend/teams"): (lambda w: Req("/global/spend/teams"), ADMIN_READ),
    # Models in the database: proxy admins write; every key reads (the models it may use).
    ("POST", "/model/new"): (
        lambda w: Req(
            "/model/new", {"model_name": unique("mx-model"), "litellm_params": {"model": "openai/x"}}
        ),
        ADMIN_ONLY,
    ),
    ("POST", "/model/update"): (
        lambda w: Req("/model/update", {"id": w.fresh_model(), "litellm_params": {"rpm": 10}}),
        ADMIN_ONLY,
    ),
    ("POST", "/model/delete"): (lambda w: Req("/model/delete", {"id": w.fresh_model()}), ADMIN_ONLY),
    ("GET", "/model/info"): (lambda w: Req("/model/info"), ANY_KEY),
    ("GET", "/v1/model/info"): (lambda w: Req("/v1/model/info"), ANY_KEY),
    ("GET", "/model_group/info"): (lambda w: Req("/model_group/info"), ANY_KEY),
}


def _customer_rows(prefix: str) -> dict[tuple[str, str], tuple[Callable[[World], Req], tuple[int, ...]]]:
    """Customers (LiteLLM's end users), under ``/customer`` and ``/end_user``: proxy admins write,
    admins and viewers read."""

    def fresh(w: World) -> str:
        return str(_admin(w.gw, f"{prefix}/new", {"user_id": unique("mx-customer")})["user_id"])

    return {
        ("POST", f"{prefix}/new"): (lambda w: Req(f"{prefix}/new", {"user_id": unique("mx-c")}), ADMIN_ONLY),
        ("POST", f"{prefix}/update"): (
            lambda w: Req(f"{prefix}/update", {"user_id": fresh(w), "alias": "matrix"}),
            ADMIN_ONLY,
        ),
        ("POST", f"{prefix}/delete"): (
            lambda w: Req(f"{prefix}/delete", {"user_ids": [fresh(w)]}),
            ADMIN_ONLY,
        ),
        ("POST", f"{prefix}/block"): (lambda w: Req(f"{prefix}/block", {"user_ids": [fresh(w)]}), ADMIN_ONLY),
        ("POST", f"{prefix}/unblock"): (
            lambda w: Req(f"{prefix}/unblock", {"user_ids": [fresh(w)]}),
            ADMIN_ONLY,
        ),
        ("GET", f"{prefix}/info"): (
            lambda w: Req(f"{prefix}/info", params={"end_user_id": fresh(w)}),
            ADMIN_READ,
        ),
        ("GET", f"{prefix}/list"): (lambda w: Req(f"{prefix}/list"), ADMIN_READ),
    }


MATRIX.update(_customer_rows("/customer"))
MATRIX.update(_customer_rows("/end_user"))


def _organization_rows() -> dict[tuple[str, str], tuple[Callable[[World], Req], tuple[int, ...]]]:
    """Organizations: proxy admins write, admins and viewers read. Update and member_update answer
    PATCH (LiteLLM's) and POST, delete and member_delete DELETE (LiteLLM's) and POST."""

    def fresh(w: World) -> str:
        return str(
            _admin(w.gw, "/organization/new", {"organization_alias": unique("mx-org")})["organization_id"]
        )

    def with_member(w: World) -> dict[str, str]:
        org, user = fresh(w), w.fresh_user()
        member = {"user_id": user, "role": "internal_user"}
        _admin(w.gw, "/organization/member_add", {"organization_id": org, "member": member})
        return {"organization_id": org, "user_id": user}

    rows: dict[tuple[str, str], tuple[Callable[[World], Req], tuple[int, ...]]] = {
        ("POST", "/organization/new"): (
            lambda w: Req("/organization/new", {"organization_alias": unique("mx-org")}),
            ADMIN_ONLY,
        ),
        # Keys with a user list the organizations whose org_admin they are (none here).
        ("GET", "/organization/list"): (lambda w: Req("/organization/list"), keyed(403, 200, 200, 200, 200)),
        ("GET", "/organization/info"): (
            lambda w: Req("/organization/info", params={"organization_id": fresh(w)}),
            ADMIN_READ,
        ),
        ("POST", "/organization/info"): (
            lambda w: Req("/organization/info", {"organizations": [fresh(w)]}),
            ADMIN_READ,
        ),
        ("POST", "/organization/member_add"): (
            lambda w: Req(
                "/organization/member_add",
                {"organization_id": fresh(w), "member": {"user_id": w.fresh_user(), "role": "internal_user"}},
            ),
            ADMIN_ONLY,
        ),
    }
    for method in ("PATCH", "POST"):
        rows[(method, "/organization/update")] = (
            lambda w: Req(
                "/organization/update", {"organization_id": fresh(w), "metadata": {"by": "matrix"}}
            ),
            ADMIN_ONLY,
        )
        rows[(method, "/organization/member_update")] = (
            lambda w: Req("/organization/member_update", {**with_member(w), "role": "internal_user_viewer"}),
            ADMIN_ONLY,
        )
    for method in ("DELETE", "POST"):
        rows[(method, "/organization/delete")] = (
            lambda w: Req("/organization/delete", {"organization_ids": [fresh(w)]}),
            ADMIN_ONLY,
        )
        rows[(method, "/organization/member_delete")] = (
            lambda w: Req("/organization/member_delete", with_member(w)),
            ADMIN_ONLY,
        )
    return rows


MATRIX.update(_organization_rows())


def _walk(routes: Sequence[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's wrapper of an included router
        if included is not None:
            yield from _walk(included.routes, prefix + route.include_context.prefix)
        elif getattr(route, "routes", None) is not None and not hasattr(route, "methods"):  # a Mount
            yield from _walk(route.routes, prefix + route.path)
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET route
                yield method, prefix + route.path


def app_routes() -> set[tuple[str, str]]:
    return set(_walk(create_app().routes))


def test_every_route_has_a_row() -> None:
    served = app_routes()
    assert not served - MATRIX.keys(), f"routes without a row in MATRIX: {sorted(served - MATRIX.keys())}"
    assert not MATRIX.keys() - served, (
        f"rows for routes the app does not serve: {sorted(MATRIX.keys() - served)}"
    )


def _sql(url: str, query: str, *args: Any) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(query, *args)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def world(gateway: GatewayProcess, database_url: str) -> Iterator[World]:
    def admin(path: str, body: Any) -> Any:
        return _admin(gateway, path, body)

    team_admin, internal = unique("mx-admin"), unique("mx-user")
    team = admin(
        "/team/new",
        {
            "team_alias": unique("mx-a"),
            "members_with_roles": [
                {"role": "admin", "user_id": team_admin},
                {"role": "user", "user_id": internal},
            ],
        },
    )["team_id"]
    blocked_team_admin = unique("mx-blocked-admin")
    blocked_team = admin(
        "/team/new", {"members_with_roles": [{"role": "admin", "user_id": blocked_team_admin}]}
    )["team_id"]
    other_team = admin("/team/new", {"team_alias": unique("mx-b")})["team_id"]
    viewer, boss, blocked_boss = unique("mx-viewer"), unique("mx-boss"), unique("mx-blocked-boss")
    for user_id, role in (
        (viewer, "proxy_admin_viewer"),
        (boss, "proxy_admin"),
        (blocked_boss, "proxy_admin"),
    ):
        admin("/user/new", {"user_id": user_id, "user_role": role, "auto_create_key": False})

    def key(**body: Any) -> str:
        return str(admin("/key/generate", body)["key"])

    expired = key(team_id=team)
    _sql(
        database_url,
        "UPDATE virtual_keys SET expires = now() - interval '1 hour' WHERE token_hash = $1",
        hashlib.sha256(expired.encode()).hexdigest(),
    )
    blocked = key(team_id=team, blocked=True)
    of_blocked_team = key(team_id=blocked_team, user_id=blocked_team_admin)
    admin("/team/block", {"team_id": blocked_team})
    of_blocked_user = key(user_id=blocked_boss)
    admin("/user/update", {"user_id": blocked_boss, "blocked": True})
    keys = {
        "wrong key": "sk-no-such-key-anywhere-0000",
        "expired key": expired,
        "blocked key": blocked,
        "key of a blocked team": of_blocked_team,
        "key of a blocked user": of_blocked_user,
        "key of another team": key(team_id=other_team),
        "team admin": key(team_id=team, user_id=team_admin),
        "internal user": key(team_id=team, user_id=internal),
        "proxy_admin_viewer": key(user_id=viewer),
        "proxy admin": key(user_id=boss),
        "master key": MASTER_KEY,
    }
    headers = {"no key": {}, "malformed header": {"Authorization": f"Basic {MASTER_KEY}"}}
    headers.update({name: _bearer(k) for name, k in keys.items()})
    assert list(headers) == list(CALLERS)
    yield World(gateway, team, internal, headers)


@pytest.mark.parametrize("route", sorted(MATRIX), ids=lambda r: f"{r[0]} {r[1]}")
def test_route_answers_every_caller_as_the_table_says(world: World, route: tuple[str, str]) -> None:
    method, _ = route
    make, expected = MATRIX[route]
    wrong = []
    for caller, status in zip(CALLERS, expected, strict=True):
        req = make(world)
        response = httpx.request(
            method,
            world.gw.base_url + req.path,
            json=req.body,
            params=req.params,
            headers=world.headers[caller],
            timeout=30,
        )
        if response.status_code != status:
            wrong.append(f"{caller}: expected {status}, got {response.status_code} {response.text[:200]}")
        elif status >= 400 and "/messages" in req.path:
            assert response.json()["type"] == "error", (caller, response.text)
            assert set(response.json()["error"]) == {"type", "message"}, (caller, response.text)
        elif status >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, (caller, error)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/key/list", {"size": 0}),
        ("/user/list", {"page_size": 0}),
        ("/spend/logs", {"limit": 0}),
        ("/global/spend/report", {"group_by": "nothing"}),
    ],
)
def test_callers_are_identified_before_their_parameters_are_judged(
    world: World, path: str, params: dict[str, Any]
) -> None:
    """A caller without a key learns nothing about a route's parameters: 401 before any 400."""
    for caller, status in (("no key", 401), ("wrong key", 401), ("master key", 400)):
        headers = world.headers[caller]
        response = httpx.get(world.gw.base_url + path, params=params, headers=headers, timeout=30)
        assert response.status_code == status, (caller, response.text)
