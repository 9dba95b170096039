"""The admin REST API, on LiteLLM's paths and payloads so existing scripts work.

Keys: /key/generate, /key/update, /key/delete, /key/info, /key/list, /key/regenerate, /key/block,
/key/unblock. Teams: /team/new, /team/update, /team/delete, /team/info, /team/list,
/team/member_add, /team/member_delete. Users: /user/new, /user/info, /user/update, /user/delete,
/user/list. Spend: /spend/logs, /spend/tags, /global/spend/report.

Every handler first checks the caller's role against its row of ``access.ACCESS`` (before reading
the body), then the objects it touches against the caller's scope. Every write runs in one
transaction with its audit-log row, and invalidates this process's key cache for the keys it touched.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from gateway.admin import schemas
from gateway.admin.access import (
    Caller,
    Scope,
    check_key_owner,
    check_new_member,
    check_team,
    forbidden,
    grant,
    identify,
)
from gateway.admin.organization_rules import check_team_in_organization
from gateway.auth import request_token
from gateway.errors import GatewayError, bad_request
from gateway.keys import store
from gateway.keys.durations import next_reset, parse_duration
from gateway.keys.policy import parse_model_budgets, windowed_spend
from gateway.keys.records import KeyRecord, TeamRecord, UserRecord
from gateway.keys.tokens import display_name, generate_key, hash_key
from gateway.server.body import ClientGone, check_json_depth, read_body

router = APIRouter(tags=["admin"])
Body = TypeVar("Body", bound=BaseModel)


# ---- plumbing ---------------------------------------------------------------------------------------


def _plane(request: Request) -> Any:
    """The ``ControlPlane`` the app started (``gateway.db.control_plane``)."""
    state = request.app.state
    plane = getattr(state, "control_plane", None)
    if plane is None:
        services = getattr(state, "services", None)
        plane = getattr(services, "extras", {}).get("control_plane") if services is not None else None
    if plane is None:
        raise GatewayError(503, "the control plane (database) is not available", code="no_database")
    return plane


log = logging.getLogger(__name__)

# OFFSET is a bigint: (page - 1) * size must stay far inside it, or asyncpg fails with a 500.
_MAX_PAGE = 1_000_000


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, default=str), status, media_type="application/json")


async def _parse(request: Request, model: type[Body]) -> Body:
    """The request body as ``model``; a 400 naming the first bad field otherwise.

    The caller is authenticated first, so a request without a valid key gets 401, not a 400.
    """
    async with _plane(request).db.pool.acquire() as conn:
        await _caller(request, conn)
    raw = await _body(request)
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise bad_request("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = [str(p) for p in err["loc"]]
        # Drop pydantic's type tags in unions (e.g. "constrained-str") from the field path.
        param = (
            ".".join(p for p in loc if not p.endswith("]") and "-" not in p and not p[:1].isupper()) or None
        )
        msg = err["msg"].removeprefix("Value error, ")
        raise bad_request(f"{param}: {msg}" if param else msg, param=param) from None


async def _body(request: Request) -> bytes:
    """The raw body: bounded (``max_request_body_mb``), its nesting checked before any parser runs.

    Read only once the caller is known, so a stranger's body is never read.
    """
    limit = request.app.state.config.max_request_body_bytes
    try:
        raw = await read_body(request.receive, request.headers.get("content-length"), limit)
    except ClientGone:
        raise bad_request("the client disconnected before sending the whole body") from None
    check_json_depth(raw)
    return raw


async def _caller(request: Request, conn: asyncpg.Connection) -> Caller:
    """Who is calling (identified once per request)."""
    caller: Caller | None = getattr(request.state, "admin_caller", None)
    if caller is None:
        plane = _plane(request)
        caller = await identify(conn, plane.master_key, request_token(request.headers.get))
        request.state.admin_caller = caller
    return caller


async def _allow(request: Request, route: str) -> Scope:
    """Identify the caller and check its role against ``route``'s row, before any body is read."""
    async with _plane(request).db.pool.acquire() as conn:
        return grant(await _caller(request, conn), route)


@asynccontextmanager
async def _write(request: Request) -> AsyncIterator[tuple[asyncpg.Connection, Caller]]:
    plane = _plane(request)
    async with plane.db.pool.acquire() as conn:
        caller = await _caller(request, conn)
        try:
            async with conn.transaction():
                yield conn, caller
        except asyncpg.UniqueViolationError as exc:
            raise _unique_error(exc) from None
        except asyncpg.ForeignKeyViolationError as exc:
            raise bad_request(f"referenced object does not exist: {exc.detail or exc}") from None
        except asyncpg.DataError:
            raise _unstorable() from None


@asynccontextmanager
async def _read(request: Request) -> AsyncIterator[tuple[asyncpg.Connection, Caller]]:
    plane = _plane(request)
    async with plane.db.pool.acquire() as conn:
        caller = await _caller(request, conn)
        try:
            yield conn, caller
        except asyncpg.DataError:
            raise _unstorable() from None


def _unstorable() -> GatewayError:
    # A backstop: the schemas bound every field, so reaching this means a query parameter (or a field
    # we missed) held a value the column cannot store; that is the caller's 400, never a 500.
    log.warning("admin request rejected by the database as out of range or unstorable")
    return bad_request("a value is out of range or cannot be stored")


def _unique_error(exc: asyncpg.UniqueViolationError) -> GatewayError:
    constraint = exc.constraint_name or ""
    for column, param in (
        ("key_alias", "key_alias"),
        ("alias", "team_alias"),
        ("email", "user_email"),
        ("token_hash", "key"),
        ("pkey", "id"),
    ):
        if column in constraint:
            if param == "id":
                param = {"teams_pkey": "team_id", "users_pkey": "user_id"}.get(constraint, "id")
            return bad_request(f"{param}: already exists", param=param, code="duplicate")
    return bad_request("already exists", code="duplicate")


def _invalidate(request: Request, *hashes: str) -> None:
    resolver = _plane(request).resolver
    for h in hashes:
        resolver.invalidate(h)


def _invalidate_all(request: Request) -> None:
    _plane(request).resolver.invalidate()


def _ref_hash(ref: str) -> str:
    """LiteLLM accepts either the key itself or its hash (``token``) wherever a key is named."""
    return hash_key(ref) if ref.startswith("sk-") else ref


def _money(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _now() -> datetime:
    return datetime.now(UTC)


async def _audit(
    conn: asyncpg.Connection,
    caller: Caller,
    action: str,
    object_type: str,
    object_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    await store.write_audit(
        conn,
        actor=caller.actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        before=before,
        after=after,
    )


_COMMON_LIMITS = ("rpm_limit", "tpm_limit", "max_parallel_requests")


def _model_max_budget(budgets: dict[str, Any]) -> dict[str, Any]:
    """``model_max_budget`` as stored: LiteLLM's short form stays a number, the long form a dict."""
    return {
        model: b if isinstance(b, float) else b.model_dump(exclude_none=True) for model, b in budgets.items()
    }


def _key_columns(
    body: schemas.KeyFields, fields: set[str], metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Request fields that were sent -> virtual_keys columns (``metadata``: the key's current one,
    which ``tags`` alone changes)."""
    values: dict[str, Any] = {}
    for name in (
        "key_alias",
        "team_id",
        "user_id",
        *_COMMON_LIMITS,
        "blocked",
        "models",
        "metadata",
        "model_rpm_limit",
        "model_tpm_limit",
        "aliases",
        "permissions",
        "config",
        "budget_id",
    ):
        if name in fields:
            values[name] = getattr(body, name)
    for name in ("max_budget", "spend", "soft_budget"):
        if name in fields:
            values[name] = _money(getattr(body, name))
    if "model_max_budget" in fields:
        values["model_max_budget"] = _model_max_budget(body.model_max_budget)
    if "tags" in fields:
        # LiteLLM keeps a key's tags in its metadata; sent with metadata, they win over its "tags".
        tagged = dict(values.get("metadata", metadata or {}))
        if body.tags is None:
            tagged.pop("tags", None)
        else:
            tagged["tags"] = body.tags
        values["metadata"] = tagged
    if "budget_duration" in fields:
        values["budget_duration"] = body.budget_duration
        values["budget_reset_at"] = next_reset(body.budget_duration, _now())
    if "duration" in fields:
        values["expires"] = _now() + parse_duration(body.duration) if body.duration else None
    return values


async def _check_key_refs(conn: asyncpg.Connection, values: dict[str, Any]) -> TeamRecord | None:
    """Unknown teams are refused; unknown users are created (as LiteLLM does).

    Only a proxy admin reaches this with an unknown user: ``check_key_owner`` runs first and refuses
    team admins any user that is not already a member of their team.
    """
    team = None
    if values.get("team_id") is not None:
        team = await store.get_team(conn, values["team_id"])
        if team is None:
            raise bad_request(f"team_id: no team {values['team_id']!r}", param="team_id", code="unknown_team")
        if team.models and values.get("models"):
            outside = [m for m in values["models"] if m not in team.models and m not in ("all-team-models",)]
            if outside and "all-proxy-models" not in team.models:
                raise bad_request(
                    f"models: not allowed for team {team.id}: {', '.join(outside)}", param="models"
                )
    if values.get("user_id") is not None:
        await conn.execute(
            "INSERT INTO users (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", values["user_id"]
        )
    return team


def _key_response(key: str, record: KeyRecord) -> dict[str, Any]:
    out = record.to_api()
    out.update({"key": key, "token_id": record.token_hash})
    return out


async def _load_key(conn: asyncpg.Connection, ref: str, *, for_update: bool = False) -> KeyRecord:
    record = await store.get_key(conn, _ref_hash(ref), for_update=for_update)
    if record is None:
        raise GatewayError(404, "no such key", code="key_not_found", param="key")
    return record


async def _check_key_move(
    conn: asyncpg.Connection, caller: Caller, scope: Scope, before: KeyRecord, values: dict[str, Any]
) -> None:
    """A key moved to another team or user must end with owners the caller may give it."""
    if "team_id" in values or "user_id" in values:
        team_id = values.get("team_id", before.team_id)
        await check_key_owner(conn, caller, scope, team_id, values.get("user_id", before.user_id))


# ---- keys -------------------------------------------------------------------------------------------


@router.post("/key/generate")
async def key_generate(request: Request) -> Response:
    scope = await _allow(request, "/key/generate")
    body = await _parse(request, schemas.GenerateKeyRequest)
    async with _write(request) as (conn, caller):
        if body.team_id is None and scope is Scope.TEAM:
            body.team_id = caller.team_id  # a team admin's keys land in its team
            body.model_fields_set.add("team_id")
        await check_key_owner(conn, caller, scope, body.team_id, body.user_id)
        key = body.key or generate_key()
        values = _key_columns(body, set(body.model_fields_set))
        await _check_key_refs(conn, values)
        values.update(token_hash=hash_key(key), key_name=display_name(key), created_by=caller.actor)
        record = await store.insert_key(conn, values)
        await _audit(conn, caller, "key.generate", "key", record.token_hash, None, record.to_api())
    _invalidate(request, record.token_hash)  # a negative cache entry for a caller-chosen key
    return _json(_key_response(key, record))


@router.post("/key/update")
async def key_update(request: Request) -> Response:
    scope = await _allow(request, "/key/update")
    body = await _parse(request, schemas.UpdateKeyRequest)
    async with _write(request) as (conn, caller):
        before = await _load_key(conn, body.key, for_update=True)
        await check_key_owner(conn, caller, scope, before.team_id, before.user_id)
        values = _key_columns(body, set(body.model_fields_set) - {"key"}, before.metadata)
        await _check_key_move(conn, caller, scope, before, values)
        await _check_key_refs(
            conn, {"team_id": before.team_id, "models": values.get("models", before.models), **values}
        )
        record = await store.update_key(conn, before.token_hash, values)
        assert record is not None
        await _audit(conn, caller, "key.update", "key", record.token_hash, before.to_api(), record.to_api())
    _invalidate(request, record.token_hash)
    return _json(record.to_api())


@router.post("/key/delete")
async def key_delete(request: Request) -> Response:
    scope = await _allow(request, "/key/delete")
    body = await _parse(request, schemas.DeleteKeysRequest)
    async with _write(request) as (conn, caller):
        hashes = [_ref_hash(k) for k in body.keys or []]
        for alias in body.key_aliases or []:
            found = await store.key_hash_for_alias(conn, alias)
            if found is None:
                raise GatewayError(
                    404, f"no key with alias {alias!r}", code="key_not_found", param="key_aliases"
                )
            hashes.append(found)
        records = []
        for h in hashes:
            record = await store.get_key(conn, h, for_update=True)
            if record is None:
                raise GatewayError(404, "no such key", code="key_not_found", param="keys")
            await check_key_owner(conn, caller, scope, record.team_id, record.user_id)
            records.append(record)
        deleted = await store.delete_keys(conn, hashes)
        for record in deleted:
            await _audit(conn, caller, "key.delete", "key", record.token_hash, record.to_api(), None)
    _invalidate(request, *hashes)
    return _json({"deleted_keys": body.keys or body.key_aliases})


@router.get("/key/info")
async def key_info(request: Request, key: str | None = None) -> Response:
    scope = await _allow(request, "/key/info")
    async with _read(request) as (conn, caller):
        if key is None:
            if caller.key is None:
                raise bad_request("key: required", param="key")
            record = caller.key
        else:
            record = await _load_key(conn, key)
        own = caller.key is not None and caller.key.token_hash == record.token_hash
        if not own:
            if scope is Scope.SELF:
                raise forbidden("you may only read your own key", param="key")
            check_team(caller, scope, record.team_id, "key")
        last_active = await store.key_last_active(conn, record.token_hash)
        days = await store.key_model_days(conn, record.token_hash)
    return _json({"key": key or record.token_hash, "info": _key_info(record, last_active, days)})


def _key_info(
    record: KeyRecord, last_active: datetime | None, days: list[tuple[str, date, float]]
) -> dict[str, Any]:
    """LiteLLM's ``info``: the key's row without its hash, with its status, when it was last used,
    its spend per model, and (with model budgets) each budgeted model's spend in its budget's window."""
    model_spend: dict[str, float] = {}
    for model, _, amount in days:
        model_spend[model] = model_spend.get(model, 0.0) + amount
    info = record.to_api()
    del info["token"]
    info.update(
        status=record.status(_now()),
        last_active=None if last_active is None else last_active.isoformat(),
        model_spend=model_spend,
    )
    if record.model_max_budget:
        budgets = parse_model_budgets(record.model_max_budget)
        current = windowed_spend(days, budgets, _now())
        info["model_max_budget_usage"] = {
            model: {"current_spend": current[model], "budget_limit": budget.max_budget}
            for model, budget in budgets.items()
        }
    return info


@router.get("/key/list")
async def key_list(
    request: Request,
    page: int = 1,
    size: int = 100,
    team_id: str | None = None,
    user_id: str | None = None,
    key_alias: str | None = None,
    key_hash: str | None = None,
    organization_id: str | None = None,
    return_full_object: bool = False,
) -> Response:
    scope = await _allow(request, "/key/list")
    if not 1 <= page <= _MAX_PAGE:
        raise bad_request(f"page: must be between 1 and {_MAX_PAGE}", param="page")
    if not 1 <= size <= 1000:
        raise bad_request("size: must be between 1 and 1000", param="size")
    async with _read(request) as (conn, caller):
        if scope is Scope.TEAM:
            check_team(caller, scope, team_id or caller.team_id)
            team_id = caller.team_id
        records, total = await store.list_keys(
            conn,
            team_id=team_id,
            user_id=user_id,
            key_alias=key_alias,
            token_hash=None if key_hash is None else _ref_hash(key_hash),
            organization_id=organization_id,
            page=page,
            size=size,
        )
    keys: list[Any] = [r.to_api() if return_full_object else r.token_hash for r in records]
    return _json(
        {
            "keys": keys,
            "total_count": total,
            "current_page": page,
            "total_pages": max(1, math.ceil(total / size)),
        }
    )


async def _regenerate(request: Request, ref: str | None) -> Response:
    body = await _parse(request, schemas.RegenerateKeyRequest) if ref is None else None
    if ref is not None:
        raw = await _body(request)
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise bad_request("the request body is not valid JSON") from None
        try:
            body = schemas.RegenerateKeyRequest.model_validate(
                {**(data if isinstance(data, dict) else {}), "key": ref}
            )
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            raise bad_request(f"{param}: {err['msg']}", param=param) from None
    assert body is not None
    async with _write(request) as (conn, caller):
        scope = grant(caller, "/key/regenerate")  # checked before the body too, by the handlers
        before = await _load_key(conn, body.key, for_update=True)
        await check_key_owner(conn, caller, scope, before.team_id, before.user_id)
        key = body.new_key or generate_key()
        record = await store.replace_key_hash(conn, before.token_hash, hash_key(key), display_name(key))
        assert record is not None
        values = _key_columns(body, set(body.model_fields_set) - {"key", "new_key"}, record.metadata)
        await _check_key_move(conn, caller, scope, before, values)
        if values:
            await _check_key_refs(
                conn, {"team_id": record.team_id, "models": values.get("models", record.models), **values}
            )
            record = await store.update_key(conn, record.token_hash, values)
            assert record is not None
        await _audit(
            conn, caller, "key.regenerate", "key", record.token_hash, before.to_api(), record.to_api()
        )
    _invalidate(request, before.token_hash)
    return _json(_key_response(key, record))


@router.post("/key/regenerate")
async def key_regenerate(request: Request) -> Response:
    await _allow(request, "/key/regenerate")
    return await _regenerate(request, None)


@router.post("/key/{key}/regenerate")
async def key_regenerate_path(request: Request, key: str) -> Response:
    await _allow(request, "/key/regenerate")
    return await _regenerate(request, key)


async def _set_blocked(request: Request, blocked: bool) -> Response:
    scope = await _allow(request, "/key/block" if blocked else "/key/unblock")
    body = await _parse(request, schemas.KeyRef)
    async with _write(request) as (conn, caller):
        before = await _load_key(conn, body.key, for_update=True)
        await check_key_owner(conn, caller, scope, before.team_id, before.user_id)
        record = await store.update_key(conn, before.token_hash, {"blocked": blocked})
        assert record is not None
        await _audit(
            conn,
            caller,
            "key.block" if blocked else "key.unblock",
            "key",
            record.token_hash,
            before.to_api(),
            record.to_api(),
        )
    _invalidate(request, record.token_hash)
    return _json(record.to_api())


@router.post("/key/block")
async def key_block(request: Request) -> Response:
    return await _set_blocked(request, True)


@router.post("/key/unblock")
async def key_unblock(request: Request) -> Response:
    return await _set_blocked(request, False)


# ---- teams ------------------------------------------------------------------------------------------


def _team_columns(body: schemas.TeamFields, fields: set[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "team_alias" in fields:
        values["alias"] = body.team_alias
    for name in (
        *_COMMON_LIMITS,
        "blocked",
        "models",
        "metadata",
        "model_rpm_limit",
        "model_tpm_limit",
        "budget_id",
        "organization_id",
    ):
        if name in fields:
            values[name] = getattr(body, name)
    if "max_budget" in fields:
        values["max_budget"] = _money(body.max_budget)
    if "budget_duration" in fields:
        values["budget_duration"] = body.budget_duration
        values["budget_reset_at"] = next_reset(body.budget_duration, _now())
    return values


async def _member_user_id(conn: asyncpg.Connection, member: schemas.Member, *, create: bool) -> str | None:
    """The member's user id; an unknown user is created when ``create`` (proxy admins, as LiteLLM
    does), else None (team admins never create users)."""
    if member.user_id is None:
        assert member.user_email is not None
        found = await store.user_id_for_email(conn, member.user_email)
        if found is not None or not create:
            return found
        user_id = str(uuid.uuid4())
        await store.insert_user(conn, {"id": user_id, "email": member.user_email})
        return user_id
    if not create:
        return member.user_id if await store.get_user(conn, member.user_id) is not None else None
    await conn.execute(
        "INSERT INTO users (id, email) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        member.user_id,
        member.user_email,
    )
    return member.user_id


async def _team_view(conn: asyncpg.Connection, team: TeamRecord) -> dict[str, Any]:
    out = team.to_api()
    out["members_with_roles"] = [m.to_api() for m in await store.team_members(conn, team.id)]
    return out


async def _load_team(conn: asyncpg.Connection, team_id: str, param: str = "team_id") -> TeamRecord:
    team = await store.get_team(conn, team_id)
    if team is None:
        raise GatewayError(404, f"no team {team_id!r}", code="team_not_found", param=param)
    return team


@router.post("/team/new")
async def team_new(request: Request) -> Response:
    await _allow(request, "/team/new")
    body = await _parse(request, schemas.NewTeamRequest)
    async with _write(request) as (conn, caller):
        values = _team_columns(body, set(body.model_fields_set))
        values["id"] = body.team_id or str(uuid.uuid4())
        team = await store.insert_team(conn, values)
        await check_team_in_organization(conn, team)
        for member in body.members_with_roles:
            user_id = await _member_user_id(conn, member, create=True)
            assert user_id is not None
            await store.upsert_member(conn, team.id, user_id, member.role)
        view = await _team_view(conn, team)
        await _audit(conn, caller, "team.new", "team", team.id, None, view)
    return _json(view)


@router.post("/team/update")
async def team_update(request: Request) -> Response:
    await _allow(request, "/team/update")
    body = await _parse(request, schemas.UpdateTeamRequest)
    async with _write(request) as (conn, caller):
        before = await _load_team(conn, body.team_id)
        team = await store.update_team(conn, body.team_id, _team_columns(body, set(body.model_fields_set)))
        assert team is not None
        await check_team_in_organization(conn, team)
        view = await _team_view(conn, team)
        await _audit(conn, caller, "team.update", "team", team.id, before.to_api(), view)
    _invalidate_all(request)  # team limits/models live in every cached key of the team
    return _json(view)


@router.post("/team/delete")
async def team_delete(request: Request) -> Response:
    await _allow(request, "/team/delete")
    body = await _parse(request, schemas.DeleteTeamsRequest)
    async with _write(request) as (conn, caller):
        for team_id in body.team_ids:
            await _load_team(conn, team_id, "team_ids")
        deleted = await store.delete_teams(conn, body.team_ids)
        for team in deleted:
            await _audit(conn, caller, "team.delete", "team", team.id, team.to_api(), None)
    _invalidate_all(request)
    return _json({"deleted_teams": [t.id for t in deleted]})


async def _set_team_blocked(request: Request, blocked: bool) -> Response:
    await _allow(request, "/team/block" if blocked else "/team/unblock")
    body = await _parse(request, schemas.TeamRef)
    async with _write(request) as (conn, caller):
        before = await _load_team(conn, body.team_id)
        team = await store.update_team(conn, body.team_id, {"blocked": blocked})
        assert team is not None
        view = await _team_view(conn, team)
        action = "team.block" if blocked else "team.unblock"
        await _audit(conn, caller, action, "team", team.id, before.to_api(), view)
    _invalidate_all(request)  # every cached key of the team
    return _json(view)


@router.post("/team/block")
async def team_block(request: Request) -> Response:
    return await _set_team_blocked(request, True)


@router.post("/team/unblock")
async def team_unblock(request: Request) -> Response:
    return await _set_team_blocked(request, False)


@router.get("/team/info")
async def team_info(request: Request, team_id: str | None = None) -> Response:
    scope = await _allow(request, "/team/info")
    async with _read(request) as (conn, caller):
        if team_id is None:
            raise bad_request("team_id: required", param="team_id")
        check_team(caller, scope, team_id)
        team = await _load_team(conn, team_id)
        view = await _team_view(conn, team)
        keys, _ = await store.list_keys(conn, team_id=team_id, size=1000)
    return _json({"team_id": team.id, "team_info": view, "keys": [k.to_api() for k in keys]})


@router.get("/team/list")
async def team_list(
    request: Request, user_id: str | None = None, organization_id: str | None = None
) -> Response:
    await _allow(request, "/team/list")
    async with _read(request) as (conn, _):
        teams = await store.list_teams(conn, user_id=user_id, organization_id=organization_id)
        views = [await _team_view(conn, t) for t in teams]
    return _json(views)


@router.post("/team/member_add")
async def team_member_add(request: Request) -> Response:
    scope = await _allow(request, "/team/member_add")
    body = await _parse(request, schemas.TeamMemberAddRequest)
    members = body.member if isinstance(body.member, list) else [body.member]
    async with _write(request) as (conn, caller):
        check_team(caller, scope, body.team_id)
        before = await _team_view(conn, await _load_team(conn, body.team_id))
        for member in members:
            user_id = await _member_user_id(conn, member, create=scope is Scope.ALL)
            await check_new_member(conn, scope, body.team_id, user_id)
            assert user_id is not None  # only proxy admins pass without one, and they create it
            # A team admin holds "admin" in this team, so any member role is within what it holds.
            await store.upsert_member(conn, body.team_id, user_id, member.role)
        view = await _team_view(conn, await _load_team(conn, body.team_id))
        await _audit(conn, caller, "team.member_add", "team", body.team_id, before, view)
    _invalidate_all(request)
    return _json(view)


@router.post("/team/member_delete")
async def team_member_delete(request: Request) -> Response:
    scope = await _allow(request, "/team/member_delete")
    body = await _parse(request, schemas.TeamMemberDeleteRequest)
    async with _write(request) as (conn, caller):
        check_team(caller, scope, body.team_id)
        before = await _team_view(conn, await _load_team(conn, body.team_id))
        user_id = body.user_id
        if user_id is None and body.user_email is not None:
            user_id = await store.user_id_for_email(conn, body.user_email)
        if user_id is None or not await store.delete_member(conn, body.team_id, user_id):
            raise GatewayError(
                404, "that user is not a member of the team", code="member_not_found", param="user_id"
            )
        view = await _team_view(conn, await _load_team(conn, body.team_id))
        await _audit(conn, caller, "team.member_delete", "team", body.team_id, before, view)
    _invalidate_all(request)
    return _json(view)


# ---- users ------------------------------------------------------------------------------------------


def _user_columns(body: schemas.UserFields, fields: set[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for src, dst in (("user_email", "email"), ("user_alias", "alias"), ("user_role", "role")):
        if src in fields:
            values[dst] = getattr(body, src)
    for name in (*_COMMON_LIMITS, "models", "metadata", "blocked", "budget_id"):
        if name in fields:
            values[name] = getattr(body, name)
    if "max_budget" in fields:
        values["max_budget"] = _money(body.max_budget)
    if "budget_duration" in fields:
        values["budget_duration"] = body.budget_duration
        values["budget_reset_at"] = next_reset(body.budget_duration, _now())
    return values


@router.post("/user/new")
async def user_new(request: Request) -> Response:
    await _allow(request, "/user/new")
    body = await _parse(request, schemas.NewUserRequest)
    async with _write(request) as (conn, caller):
        values = _user_columns(body, set(body.model_fields_set))
        values["id"] = body.user_id or str(uuid.uuid4())
        user = await store.insert_user(conn, values)
        for team_id in body.teams or []:
            if await store.get_team(conn, team_id) is None:
                raise bad_request(f"teams: no team {team_id!r}", param="teams", code="unknown_team")
            await store.upsert_member(conn, team_id, user.id, "user")
        out = user.to_api()
        if body.auto_create_key:
            # LiteLLM's /user/new also issues a key for the new user.
            key = generate_key()
            record = await store.insert_key(
                conn,
                {
                    "token_hash": hash_key(key),
                    "key_name": display_name(key),
                    "key_alias": body.key_alias,
                    "user_id": user.id,
                    "models": user.models,
                    "created_by": caller.actor,
                },
            )
            out.update(key=key, token=record.token_hash, key_alias=record.key_alias)
            await _audit(conn, caller, "key.generate", "key", record.token_hash, None, record.to_api())
        await _audit(conn, caller, "user.new", "user", user.id, None, user.to_api())
    return _json(out)


async def _readable_user(
    conn: asyncpg.Connection, scope: Scope, caller: Caller, user_id: str | None
) -> UserRecord:
    """The user ``/user/info`` names (the caller's own by default), if the caller may read it."""
    if user_id is None:
        if caller.user_id is None:
            raise bad_request("user_id: required", param="user_id")
        user_id = caller.user_id
    if scope is not Scope.ALL and user_id != caller.user_id:
        raise forbidden("you may only read your own user", param="user_id")
    user = await store.get_user(conn, user_id)
    if user is None:
        raise GatewayError(404, f"no user {user_id!r}", code="user_not_found", param="user_id")
    return user


@router.get("/user/info")
async def user_info(request: Request, user_id: str | None = None) -> Response:
    scope = await _allow(request, "/user/info")
    async with _read(request) as (conn, caller):
        user = await _readable_user(conn, scope, caller, user_id)
        keys, _ = await store.list_keys(conn, user_id=user.id, size=1000)
        teams = [m.to_api() for m in await store.user_memberships(conn, user.id)]
    return _json(
        {"user_id": user.id, "user_info": user.to_api(), "keys": [k.to_api() for k in keys], "teams": teams}
    )


@router.get("/v2/user/info")
async def user_info_v2(request: Request, user_id: str | None = None) -> Response:
    """LiteLLM's lightweight form: the user object alone, on the same terms as ``/user/info``."""
    scope = await _allow(request, "/user/info")
    async with _read(request) as (conn, caller):
        user = await _readable_user(conn, scope, caller, user_id)
    return _json(user.to_api())


@router.post("/user/update")
async def user_update(request: Request) -> Response:
    await _allow(request, "/user/update")
    body = await _parse(request, schemas.UpdateUserRequest)
    async with _write(request) as (conn, caller):
        user_id = body.user_id
        if user_id is None and body.user_email is not None:
            user_id = await store.user_id_for_email(conn, body.user_email)
        before = await store.get_user(conn, user_id) if user_id else None
        if before is None:
            raise GatewayError(404, "no such user", code="user_not_found", param="user_id")
        fields = set(body.model_fields_set) - {"user_id"}
        if body.user_id is None:
            fields.discard("user_email")
        values = _user_columns(body, fields)
        if "spend" in fields:
            values["spend"] = _money(body.spend)
        user = await store.update_user(conn, before.id, values)
        assert user is not None
        await _audit(conn, caller, "user.update", "user", user.id, before.to_api(), user.to_api())
    _invalidate_all(request)
    return _json(user.to_api())


@router.post("/user/delete")
async def user_delete(request: Request) -> Response:
    await _allow(request, "/user/delete")
    body = await _parse(request, schemas.DeleteUsersRequest)
    async with _write(request) as (conn, caller):
        deleted = await store.delete_users(conn, body.user_ids)
        for user in deleted:
            await _audit(conn, caller, "user.delete", "user", user.id, user.to_api(), None)
    _invalidate_all(request)
    return _json({"deleted_users": [u.id for u in deleted]})


@router.get("/user/list")
async def user_list(
    request: Request, page: int = 1, page_size: int = 25, role: str | None = None
) -> Response:
    await _allow(request, "/user/list")
    if not 1 <= page <= _MAX_PAGE:
        raise bad_request(f"page: must be between 1 and {_MAX_PAGE}", param="page")
    if not 1 <= page_size <= 1000:
        raise bad_request("page_size: must be between 1 and 1000", param="page_size")
    async with _read(request) as (conn, _):
        users, total = await store.list_users(conn, page=page, size=page_size, role=role)
    return _json(
        {
            "users": [u.to_api() for u in users],
            "total": total,
            "page": page,
            "page_size": page_size,
            "total_pages": max(1, math.ceil(total / page_size)),
        }
    )


# ---- spend ------------------------------------------------------------------------------------------


def _date(value: str | None, param: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise bad_request(f"{param}: expected YYYY-MM-DD", param=param) from None


@router.get("/spend/logs")
async def spend_logs(
    request: Request,
    api_key: str | None = None,
    user_id: str | None = None,
    team_id: str | None = None,
    request_id: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    limit: int = 1000,
) -> Response:
    scope = await _allow(request, "/spend/logs")
    if not 1 <= limit <= 10_000:
        raise bad_request("limit: must be between 1 and 10000", param="limit")
    start, end = _date(start_date, "start_date"), _date(end_date, "end_date")
    key_hash = _ref_hash(api_key) if api_key else None
    async with _read(request) as (conn, caller):
        if scope is Scope.TEAM:
            check_team(caller, scope, team_id or caller.team_id)
            team_id = caller.team_id
        rows = await conn.fetch(
            "SELECT id, request_id, key_hash, team_id, user_id, model, deployment_id, provider_model, "
            "prompt_tokens, completion_tokens, total_tokens, spend, status, cache_hit, stream, error_code, "
            "start_time, end_time, metadata, end_user FROM spend_logs "
            "WHERE ($1::text IS NULL OR key_hash = $1) AND ($2::text IS NULL OR user_id = $2) "
            "AND ($3::text IS NULL OR team_id = $3) AND ($4::text IS NULL OR request_id = $4) "
            "AND ($5::date IS NULL OR start_time >= $5::date) "
            "AND ($6::date IS NULL OR start_time < $6::date + 1) "
            "ORDER BY start_time DESC, id LIMIT $7",
            key_hash,
            user_id,
            team_id,
            request_id,
            start,
            end,
            limit,
        )
    return _json(
        [
            {
                "request_id": r["request_id"],
                "api_key": r["key_hash"],
                "spend": float(r["spend"]),
                "startTime": r["start_time"].isoformat(),
                "endTime": r["end_time"].isoformat(),
                "model": r["model"],
                "model_id": r["deployment_id"],
                "model_group": r["model"],
                "custom_llm_provider": r["provider_model"],
                "user": r["user_id"],
                "team_id": r["team_id"],
                "prompt_tokens": r["prompt_tokens"],
                "completion_tokens": r["completion_tokens"],
                "total_tokens": r["total_tokens"],
                "cache_hit": str(r["cache_hit"]),
                "status": r["status"],
                "error_code": r["error_code"],
                "metadata": r["metadata"],
                # The key's tags (``gateway.keys.policy``), under LiteLLM's name for them.
                "request_tags": (r["metadata"] or {}).get("tags", []),
                "end_user": r["end_user"],  # the customer the request named (gateway.keys.customers)
            }
            for r in rows
        ]
    )


@router.get("/spend/tags")
async def spend_tags(
    request: Request, start_date: str | None = None, end_date: str | None = None
) -> Response:
    """LiteLLM's spend per tag: every tag on the spend rows (a key's ``tags``), with its row count
    and total spend, largest first; a team admin sees its team's rows only."""
    start, end = _date(start_date, "start_date"), _date(end_date, "end_date")
    scope = await _allow(request, "/spend/tags")
    async with _read(request) as (conn, caller):
        team_id = caller.team_id if scope is Scope.TEAM else None
        rows = await conn.fetch(
            "SELECT tag, count(*) AS log_count, sum(spend) AS total_spend FROM spend_logs, "
            "jsonb_array_elements_text(CASE WHEN jsonb_typeof(metadata -> 'tags') = 'array' "
            "THEN metadata -> 'tags' ELSE '[]'::jsonb END) AS tag "
            "WHERE ($1::text IS NULL OR team_id = $1) AND ($2::date IS NULL OR start_time >= $2::date) "
            "AND ($3::date IS NULL OR start_time < $3::date + 1) "
            "GROUP BY tag ORDER BY total_spend DESC, tag",
            team_id,
            start,
            end,
        )
    return _json(
        [
            {
                "individual_request_tag": r["tag"],
                "log_count": r["log_count"],
                "total_spend": float(r["total_spend"]),
            }
            for r in rows
        ]
    )


_GROUPS = {
    "team": ("team_id", "teams", "team_name"),
    "api_key": ("key_hash", "api_keys", "api_key"),
    "customer": ("user_id", "customers", "customer"),
    "user": ("user_id", "users", "user"),
}


@router.get("/global/spend/report")
async def global_spend_report(
    request: Request, start_date: str | None = None, end_date: str | None = None, group_by: str = "team"
) -> Response:
    await _allow(request, "/global/spend/report")
    if group_by not in _GROUPS:
        raise bad_request(f"group_by: one of {', '.join(_GROUPS)}", param="group_by")
    column, plural, label = _GROUPS[group_by]
    start, end = _date(start_date, "start_date"), _date(end_date, "end_date")
    async with _read(request) as (conn, _):
        rows = await conn.fetch(
            f"SELECT day, {column} AS grp, model, sum(spend) AS spend, "
            "sum(prompt_tokens + completion_tokens) AS tokens, sum(requests) AS requests "
            "FROM daily_spend WHERE ($1::date IS NULL OR day >= $1) AND ($2::date IS NULL OR day <= $2) "
            f"GROUP BY day, {column}, model ORDER BY day, {column}, model",
            start,
            end,
        )
    days: dict[date, dict[str, dict[str, Any]]] = {}
    for r in rows:
        group = days.setdefault(r["day"], {}).setdefault(
            r["grp"], {label: r["grp"] or None, "total_spend": Decimal(0), "metadata": []}
        )
        group["total_spend"] += r["spend"]
        group["metadata"].append(
            {
                "model": r["model"],
                "spend": float(r["spend"]),
                "total_tokens": int(r["tokens"]),
                "requests": int(r["requests"]),
            }
        )
    report = []
    for day, groups in days.items():
        entries = [{**g, "total_spend": float(g["total_spend"])} for g in groups.values()]
        report.append({"group_by_day": day.isoformat(), plural: entries})
    return _json(report)
