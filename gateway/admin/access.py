"""Who is calling the admin API, and what they may touch: the role model, as one table.

Every key has exactly one role, the first that applies (README, "Roles and access"):

- ``proxy_admin``: the master key (and local mode, where no master key is configured), or a key whose
  user has the global role ``proxy_admin``. Everything.
- ``proxy_admin_viewer``: a key whose user has that global role. Reads everything, writes nothing.
- ``team_admin``: a key whose user (global role ``internal_user``) is an ``admin`` member of the key's
  own team. Manages that team's keys and members, within the rules of ``check_key_owner`` and
  ``check_new_member``.
- ``internal_user``: any other key with a user. Reads its own key and its own user.
- ``key``: a key without a user. Reads its own key.

Rights come only from the key, its user's global role and the user's membership in the key's team,
and a caller can never hand out more than it holds: user roles are set only by proxy admins, and a
team admin may attach keys only to existing members of its own team whose global role is no higher
than ``internal_user`` (so no key it makes or touches can carry admin rights it lacks, or charge spend
to a user outside its team). A blocked or expired key, or a key of a blocked team or user, is
refused (401) on every route that takes a key.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from gateway.errors import GatewayError
from gateway.keys import store
from gateway.keys.records import KeyRecord
from gateway.keys.tokens import hash_key


class Role(StrEnum):
    PROXY_ADMIN = "proxy_admin"
    PROXY_ADMIN_VIEWER = "proxy_admin_viewer"
    TEAM_ADMIN = "team_admin"
    INTERNAL_USER = "internal_user"
    KEY = "key"  # a key with no user


class Scope(StrEnum):
    """Which objects a role may touch on a route."""

    ALL = "all"
    TEAM = "team"  # the caller's own team and its keys
    SELF = "self"  # the calling key itself, or the calling key's user
    ORG = "org"  # organizations whose org_admin is the calling key's user (global role internal_user)


_PA, _PV, _TA, _IU, _KEY = Role
_ALL, _TEAM, _SELF, _ORG = Scope

# Route -> role -> scope. A role missing from a row is refused with 403. This is the README's table.
ACCESS: dict[str, dict[Role, Scope]] = {
    "/key/generate": {_PA: _ALL, _TA: _TEAM},
    "/key/update": {_PA: _ALL, _TA: _TEAM},
    "/key/delete": {_PA: _ALL, _TA: _TEAM},
    "/key/regenerate": {_PA: _ALL, _TA: _TEAM},
    "/key/block": {_PA: _ALL, _TA: _TEAM},
    "/key/unblock": {_PA: _ALL, _TA: _TEAM},
    "/key/info": {_PA: _ALL, _PV: _ALL, _TA: _TEAM, _IU: _SELF, _KEY: _SELF},
    "/key/list": {_PA: _ALL, _PV: _ALL, _TA: _TEAM},
    "/team/new": {_PA: _ALL},
    "/team/update": {_PA: _ALL},
    "/team/delete": {_PA: _ALL},
    "/team/block": {_PA: _ALL},
    "/team/unblock": {_PA: _ALL},
    "/team/info": {_PA: _ALL, _PV: _ALL, _TA: _TEAM},
    "/team/list": {_PA: _ALL, _PV: _ALL},
    "/team/member_add": {_PA: _ALL, _TA: _TEAM},
    "/team/member_delete": {_PA: _ALL, _TA: _TEAM},
    "/user/new": {_PA: _ALL},
    "/user/update": {_PA: _ALL},
    "/user/delete": {_PA: _ALL},
    "/user/info": {_PA: _ALL, _PV: _ALL, _TA: _SELF, _IU: _SELF},
    "/user/list": {_PA: _ALL, _PV: _ALL},
    "/spend/logs": {_PA: _ALL, _PV: _ALL, _TA: _TEAM},
    "/spend/tags": {_PA: _ALL, _PV: _ALL, _TA: _TEAM},
    "/global/spend/report": {_PA: _ALL, _PV: _ALL},
    "/budget/new": {_PA: _ALL},
    "/budget/update": {_PA: _ALL},
    "/budget/delete": {_PA: _ALL},
    "/budget/info": {_PA: _ALL, _PV: _ALL},
    "/budget/list": {_PA: _ALL, _PV: _ALL},
    "/global/spend": {_PA: _ALL, _PV: _ALL},
    "/global/spend/logs": {_PA: _ALL, _PV: _ALL},
    "/global/spend/keys": {_PA: _ALL, _PV: _ALL},
    "/global/spend/models": {_PA: _ALL, _PV: _ALL},
    "/global/spend/teams": {_PA: _ALL, _PV: _ALL},
    # Models in the database (gateway/admin/models.py); SELF: the models the calling key may use.
    "/model/new": {_PA: _ALL},
    "/model/update": {_PA: _ALL},
    "/model/delete": {_PA: _ALL},
    "/model/info": {_PA: _ALL, _PV: _ALL, _TA: _SELF, _IU: _SELF, _KEY: _SELF},
    "/model_group/info": {_PA: _ALL, _PV: _ALL, _TA: _SELF, _IU: _SELF, _KEY: _SELF},
    # Customers (LiteLLM's end users; also under /end_user/): proxy admins write, admins and viewers read.
    "/customer/new": {_PA: _ALL},
    "/customer/update": {_PA: _ALL},
    "/customer/delete": {_PA: _ALL},
    "/customer/block": {_PA: _ALL},
    "/customer/unblock": {_PA: _ALL},
    "/customer/info": {_PA: _ALL, _PV: _ALL},
    "/customer/list": {_PA: _ALL, _PV: _ALL},
    # Organizations: proxy admins write, admins and viewers read; an org_admin member (ORG) reads its
    # organizations and manages their members (gateway/admin/organizations.py).
    "/organization/new": {_PA: _ALL},
    "/organization/update": {_PA: _ALL},
    "/organization/delete": {_PA: _ALL},
    "/organization/member_add": {_PA: _ALL, _TA: _ORG, _IU: _ORG},
    "/organization/member_update": {_PA: _ALL, _TA: _ORG, _IU: _ORG},
    "/organization/member_delete": {_PA: _ALL, _TA: _ORG, _IU: _ORG},
    "/organization/info": {_PA: _ALL, _PV: _ALL, _TA: _ORG, _IU: _ORG},
    "/organization/list": {_PA: _ALL, _PV: _ALL, _TA: _ORG, _IU: _ORG},
}

# Global user roles a team admin may attach keys to (or add to its team): none above its own.
ATTACHABLE_USER_ROLES = frozenset({"internal_user", "internal_user_viewer"})


@dataclass(frozen=True, slots=True)
class Caller:
    actor: str  # what the audit log records: "master", "local", "key:<hash prefix>"
    role: Role
    key: KeyRecord | None = None
    team_id: str | None = None  # set for team admins: the team they administer

    @property
    def user_id(self) -> str | None:
        return None if self.key is None else self.key.user_id


def forbidden(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(403, message, code="forbidden", param=param)


def grant(caller: Caller, route: str) -> Scope:
    """The caller's scope on ``route`` (a row of ``ACCESS``), or 403."""
    scope = ACCESS[route].get(caller.role)
    if scope is None:
        raise forbidden(f"{caller.role} may not call {route}")
    return scope


def check_team(caller: Caller, scope: Scope, team_id: str | None, param: str = "team_id") -> None:
    """``team_id`` is within ``scope``: any team, or the team the caller administers."""
    if scope is Scope.ALL:
        return
    if scope is Scope.TEAM and team_id is not None and team_id == caller.team_id:
        return
    raise forbidden("you may only manage your own team", param=param)


async def check_key_owner(
    conn: asyncpg.Connection, caller: Caller, scope: Scope, team_id: str | None, user_id: str | None
) -> None:
    """May the caller create, keep or touch a key of ``team_id`` owned by ``user_id``?

    Team admins: only keys of their own team, whose user (if any) exists, is a member of that team
    and has a global role no higher than internal_user. Applied to a key before it is touched and to
    the team and user it ends up with, so a key a team admin can reach never carries more than it holds.
    """
    check_team(caller, scope, team_id)
    if scope is Scope.ALL or user_id is None:
        return
    assert team_id is not None  # check_team passed with a team scope
    user = await store.get_user(conn, user_id)
    member = await store.member_role(conn, team_id, user_id) if user is not None else None
    if user is None or member is None or user.role not in ATTACHABLE_USER_ROLES:
        raise forbidden(
            "user_id: a team admin may only use keys of existing members of its team "
            "whose role is internal_user",
            param="user_id",
        )


async def check_new_member(conn: asyncpg.Connection, scope: Scope, team_id: str, user_id: str | None) -> None:
    """May the caller add ``user_id`` to ``team_id`` (or change its member role)?

    Team admins add only existing users (``user_id`` None: not found) with a global role no higher
    than internal_user who belong to no other team: a user of another team would otherwise be
    pulled in and charged for the keys the team admin then attaches to them.
    """
    if scope is Scope.ALL:
        return
    user = await store.get_user(conn, user_id) if user_id is not None else None
    if user is None or user.role not in ATTACHABLE_USER_ROLES:
        raise forbidden(
            "member: a team admin may only add existing users whose role is internal_user",
            param="member",
        )
    if any(m.team_id != team_id for m in await store.user_memberships(conn, user.id)):
        raise forbidden("member: that user belongs to another team", param="member")


def _blocked(what: str) -> GatewayError:
    return GatewayError(401, f"{what} is blocked; ask an admin to unblock it", code="key_blocked")


async def identify(conn: asyncpg.Connection, master_key: str | None, token: str | None) -> Caller:
    """The caller behind the request's key (``gateway.auth.request_token``; 401 for a missing,
    unknown, blocked or expired key)."""
    if master_key is None:
        return Caller(actor="local", role=Role.PROXY_ADMIN)
    if not token:
        raise GatewayError(
            401,
            "Missing API key: pass it as 'Authorization: Bearer <key>' (or in x-litellm-api-key, "
            "api-key or x-api-key)",
            code="missing_api_key",
        )
    if hmac.compare_digest(token.encode(), master_key.encode()):
        return Caller(actor="master", role=Role.PROXY_ADMIN)
    record = await store.get_key(conn, hash_key(token))
    if record is None:
        raise GatewayError(401, "Invalid API key", code="invalid_api_key")
    if record.blocked:
        raise _blocked("This key")
    if record.expires is not None and record.expires.timestamp() <= time.time():
        raise GatewayError(401, "This key has expired", code="key_expired")
    standing = await store.key_standing(conn, record)
    if standing.team_blocked:
        raise _blocked("This key's team")
    if standing.user_blocked:
        raise _blocked("This key's user")
    actor = f"key:{record.token_hash[:16]}"
    if standing.user_role == "proxy_admin":
        return Caller(actor=actor, role=Role.PROXY_ADMIN, key=record)
    if standing.user_role == "proxy_admin_viewer":
        return Caller(actor=actor, role=Role.PROXY_ADMIN_VIEWER, key=record)
    if standing.member_role == "admin" and standing.user_role == "internal_user":
        return Caller(actor=actor, role=Role.TEAM_ADMIN, key=record, team_id=record.team_id)
    if standing.user_role is not None:
        return Caller(actor=actor, role=Role.INTERNAL_USER, key=record)
    return Caller(actor=actor, role=Role.KEY, key=record)
