"""Who is calling the admin API, and what they may touch.

The master key (and local mode, where no master key is configured) may do everything, as may keys
whose user has the ``proxy_admin`` role. A key whose user is an ``admin`` member of the key's team
manages that team's keys. Any other key may read only its own ``/key/info``.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

import asyncpg

from gateway.auth import token_from_headers
from gateway.errors import GatewayError
from gateway.keys import store
from gateway.keys.records import KeyRecord
from gateway.keys.tokens import hash_key


@dataclass(frozen=True, slots=True)
class Caller:
    actor: str  # what the audit log records: "master", "local", "key:<hash prefix>"
    admin: bool
    key: KeyRecord | None = None
    admin_of_team: str | None = None  # the team whose keys this caller manages


def forbidden(message: str) -> GatewayError:
    return GatewayError(403, message, code="forbidden")


async def identify(
    conn: asyncpg.Connection, master_key: str | None, authorization: str | None, api_key: str | None
) -> Caller:
    """The caller behind the request's bearer token (401 for a missing, unknown, blocked or expired key)."""
    if master_key is None:
        return Caller(actor="local", admin=True)
    token = token_from_headers(authorization, api_key)
    if not token:
        raise GatewayError(
            401, "Missing API key: pass it as 'Authorization: Bearer <key>'", code="missing_api_key"
        )
    if hmac.compare_digest(token.encode(), master_key.encode()):
        return Caller(actor="master", admin=True)
    record = await store.get_key(conn, hash_key(token))
    if record is None:
        raise GatewayError(401, "Invalid API key", code="invalid_api_key")
    if record.blocked:
        raise GatewayError(401, "This key is blocked", code="key_blocked")
    if record.expires is not None and record.expires.timestamp() <= time.time():
        raise GatewayError(401, "This key has expired", code="key_expired")
    actor = f"key:{record.token_hash[:16]}"
    if record.user_id is not None:
        role = await conn.fetchval("SELECT role FROM users WHERE id = $1", record.user_id)
        if role == "proxy_admin":
            return Caller(actor=actor, admin=True, key=record)
        if record.team_id is not None:
            member_role = await conn.fetchval(
                "SELECT role FROM team_memberships WHERE team_id = $1 AND user_id = $2",
                record.team_id,
                record.user_id,
            )
            if member_role == "admin":
                return Caller(actor=actor, admin=False, key=record, admin_of_team=record.team_id)
    return Caller(actor=actor, admin=False, key=record)


def require_admin(caller: Caller) -> None:
    if not caller.admin:
        raise forbidden("only the master key (or a proxy admin) may do this")


def require_team_manager(caller: Caller, team_id: str | None) -> None:
    """Admins, or the admin of ``team_id``."""
    if caller.admin:
        return
    if caller.admin_of_team is not None and team_id == caller.admin_of_team:
        return
    raise forbidden("you may only manage the keys of a team you administer")
