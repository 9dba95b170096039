"""Organizations on LiteLLM's paths, methods and payloads: ``POST /organization/new``, ``PATCH
/organization/update``, ``DELETE /organization/delete``, ``GET /organization/list``, ``GET
/organization/info`` (``?organization_id=``) and ``POST /organization/info`` (``{"organizations"}``),
``POST /organization/member_add``, ``PATCH /organization/member_update``, ``DELETE
/organization/member_delete``. The PATCH and DELETE routes also answer POST (clients that cannot send
a body with DELETE).

An organization groups teams (``organization_id`` on ``/team/new``/``/team/update``): its ``models``
bound its teams' models, and its budget row (always one, as in LiteLLM: ``budget_id``, or the budget
fields, which create and later update the organization's own row) bounds its teams' budgets and holds
the summed spend of their keys (``gateway.keys.resolver``, ``gateway.spend.sink``). Answers are
LiteLLM's ``LiteLLM_OrganizationTableWithMembers``. Proxy admins write; admins and viewers read; an
``org_admin`` member (scope ORG) reads its organizations and manages their members within the rules of
``_check_member_target`` (README, "Roles and access").
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.admin.access import ATTACHABLE_USER_ROLES, Caller, Scope, forbidden
from gateway.admin.budget_rows import budget_columns, budget_table, iso
from gateway.admin.organization_rules import check_team_fits
from gateway.admin.organization_schemas import (
    MAX_LIST,
    OrganizationDeleteRequest,
    OrganizationFields,
    OrganizationInfoRequest,
    OrganizationMemberAddRequest,
    OrganizationMemberRef,
    OrganizationMemberUpdateRequest,
    OrganizationNewRequest,
    OrganizationUpdateRequest,
    OrgMember,
)
from gateway.admin.router import _allow, _audit, _invalidate_all, _json, _parse, _read, _write
from gateway.db import budgets as budgets_sql
from gateway.db import organizations as orgs_sql
from gateway.errors import GatewayError, bad_request
from gateway.keys import store

router = APIRouter(tags=["admin"])


async def _views(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    """LiteLLM's ``LiteLLM_OrganizationTableWithMembers`` for each row, members and teams included."""
    ids = [r["id"] for r in rows]
    members: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for m in await orgs_sql.members(conn, ids):
        members[m["organization_id"]].append(
            {
                "user_id": m["user_id"],
                "organization_id": m["organization_id"],
                "user_role": m["role"],
                "spend": 0.0,
                "budget_id": None,
                "user_email": m["email"],
                "created_at": iso(m["created_at"]),
                "updated_at": iso(m["created_at"]),
            }
        )
    teams: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for team in await orgs_sql.teams(conn, ids):
        assert team.organization_id is not None
        teams[team.organization_id].append(team.to_api())
    return [
        {
            "organization_id": r["id"],
            "organization_alias": r["alias"],
            "budget_id": r["budget_id"],
            "spend": float(r["spend"]),
            "metadata": r["metadata"],
            "models": list(r["models"] or []),
            "model_spend": {},
            "created_by": r["created_by"],
            "updated_by": r["updated_by"],
            "created_at": iso(r["created_at"]),
            "updated_at": iso(r["updated_at"]),
            "litellm_budget_table": budget_table(r),
            "members": members[r["id"]],
            "teams": teams[r["id"]],
            "object_permission": None,
            "object_permission_id": None,
        }
        for r in rows
    ]


async def _one(
    conn: asyncpg.Connection, organization_id: str, param: str, *, lock: bool = False
) -> asyncpg.Record:
    rows = await orgs_sql.fetch(conn, [organization_id], for_update=lock)
    if not rows:
        raise GatewayError(
            404,
            f"Organization not found for organization_id={organization_id}",
            code="not_found",
            param=param,
        )
    return rows[0]


def _org_columns(body: OrganizationFields) -> dict[str, Any]:
    sent = body.model_fields_set
    values = {name: getattr(body, name) for name in ("models", "budget_id", "metadata") if name in sent}
    if "organization_alias" in sent:
        values["alias"] = body.organization_alias
    return values


async def organization_new(request: Request) -> Response:
    await _allow(request, "/organization/new")
    body = await _parse(request, OrganizationNewRequest)
    now = datetime.now(UTC)
    organization_id = body.organization_id or str(uuid.uuid4())
    async with _write(request) as (conn, caller):
        if await orgs_sql.fetch(conn, [organization_id]):
            raise bad_request(
                f"organization_id: {organization_id!r} already exists",
                param="organization_id",
                code="duplicate",
            )
        values = {**_org_columns(body), "created_by": caller.actor, "updated_by": caller.actor}
        if body.budget_id is None:
            values["budget_id"] = str(uuid.uuid4())
            await budgets_sql.insert(conn, values["budget_id"], budget_columns(body, now), now)
        await orgs_sql.insert(conn, organization_id, values)
        (view,) = await _views(conn, [await _one(conn, organization_id, "organization_id")])
        await _audit(conn, caller, "organization.new", "organization", organization_id, None, view)
    return _json(view)


async def organization_update(request: Request) -> Response:
    await _allow(request, "/organization/update")
    body = await _parse(request, OrganizationUpdateRequest)
    now = datetime.now(UTC)
    async with _write(request) as (conn, caller):
        row = await _one(conn, body.organization_id, "organization_id", lock=True)
        (before,) = await _views(conn, [row])
        values = {**_org_columns(body), "updated_by": caller.actor}
        budget = budget_columns(body, now)
        if budget and row["budget_id"] is not None:
            await budgets_sql.update(conn, row["budget_id"], budget, now)  # its row, as LiteLLM does
        elif budget:
            values["budget_id"] = str(uuid.uuid4())
            await budgets_sql.insert(conn, values["budget_id"], budget, now)
        await orgs_sql.update(conn, body.organization_id, values)
        org = await _one(conn, body.organization_id, "organization_id")
        for team in await orgs_sql.teams(conn, [org["id"]]):
            check_team_fits(team.id, team.models, team.max_budget, org)
        (view,) = await _views(conn, [org])
        await _audit(conn, caller, "organization.update", "organization", org["id"], before, view)
    _invalidate_all(request)  # its models and budget live in every cached key of its teams
    return _json(view)


async def organization_delete(request: Request) -> Response:
    await _allow(request, "/organization/delete")
    body = await _parse(request, OrganizationDeleteRequest)
    async with _write(request) as (conn, caller):
        rows = await orgs_sql.fetch(conn, body.organization_ids, for_update=True)
        missing = sorted(set(body.organization_ids) - {r["id"] for r in rows})
        if missing:
            raise GatewayError(
                404,
                f"Organization not found for organization_id={', '.join(missing)}",
                code="not_found",
                param="organization_ids",
            )
        views = await _views(conn, rows)
        await orgs_sql.delete(conn, [r["id"] for r in rows])
        for view in views:
            await _audit(
                conn, caller, "organization.delete", "organization", view["organization_id"], view, None
            )
    _invalidate_all(request)
    return _json(views)


async def _check_org_admin(
    conn: asyncpg.Connection, caller: Caller, scope: Scope, organization_ids: list[str], param: str
) -> None:
    """Within ``scope``: any organization, or (ORG) only those whose org_admin is the caller's user."""
    if scope is Scope.ALL:
        return
    if not set(organization_ids) <= set(await orgs_sql.admin_of(conn, caller.user_id)):
        raise forbidden("you may only manage organizations whose org_admin you are", param=param)


async def organization_list(request: Request, page: int = 1, size: int = MAX_LIST) -> Response:
    scope = await _allow(request, "/organization/list")
    if not 1 <= page <= 1_000_000:
        raise bad_request("page: must be 1 to 1000000", param="page")
    if not 1 <= size <= MAX_LIST:
        raise bad_request(f"size: must be 1 to {MAX_LIST}", param="size")
    async with _read(request) as (conn, caller):
        if scope is Scope.ALL:
            rows = await orgs_sql.fetch_page(conn, size, (page - 1) * size)
        else:  # an org admin lists its own organizations
            mine = await orgs_sql.admin_of(conn, caller.user_id)
            rows = (await orgs_sql.fetch(conn, mine))[(page - 1) * size : page * size]
        return _json(await _views(conn, rows))


async def organization_info(request: Request, organization_id: str | None = None) -> Response:
    scope = await _allow(request, "/organization/info")
    if not organization_id:
        raise bad_request("organization_id is required", param="organization_id")
    async with _read(request) as (conn, caller):
        await _check_org_admin(conn, caller, scope, [organization_id], "organization_id")
        row = await _one(conn, organization_id, "organization_id")
        (view,) = await _views(conn, [row])
    return _json(view)


async def organization_info_many(request: Request) -> Response:
    """LiteLLM's older form: the organizations named in the body (unknown ids are a 404)."""
    scope = await _allow(request, "/organization/info")
    body = await _parse(request, OrganizationInfoRequest)
    async with _read(request) as (conn, caller):
        await _check_org_admin(conn, caller, scope, body.organizations, "organizations")
        rows = await orgs_sql.fetch(conn, body.organizations)
        missing = sorted(set(body.organizations) - {r["id"] for r in rows})
        if missing:
            raise GatewayError(
                404,
                f"Organization not found for organization_id={', '.join(missing)}",
                code="not_found",
                param="organizations",
            )
        return _json(await _views(conn, rows))


async def _member_user(
    conn: asyncpg.Connection, member: OrgMember | OrganizationMemberRef, create: bool
) -> str:
    """The member's user id; unknown users are created on add (as ``/team/member_add`` does for proxy
    admins), and are a 404 otherwise."""
    user_id = member.user_id
    if user_id is None:
        assert member.user_email is not None
        user_id = await store.user_id_for_email(conn, member.user_email)
        if user_id is None and create:
            user_id = str(uuid.uuid4())
    if user_id is not None and create:
        await conn.execute(
            "INSERT INTO users (id, email) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            user_id,
            member.user_email,
        )
    elif user_id is None or await store.get_user(conn, user_id) is None:
        raise GatewayError(404, "no such user", code="user_not_found", param="user_id")
    return user_id


async def _check_member_target(conn: asyncpg.Connection, scope: Scope, user_id: str) -> None:
    """An org admin adds, or changes the role of, only users whose global role is internal_user or
    internal_user_viewer: never a proxy admin or viewer, whose rights it does not hold. The roles it
    gives (org_admin at most) are no more than its own."""
    if scope is Scope.ALL:
        return
    user = await store.get_user(conn, user_id)
    if user is None or user.role not in ATTACHABLE_USER_ROLES:
        raise forbidden(
            "member: an org admin may only add existing users whose role is internal_user", param="member"
        )


async def organization_member_add(request: Request) -> Response:
    scope = await _allow(request, "/organization/member_add")
    body = await _parse(request, OrganizationMemberAddRequest)
    members = body.member if isinstance(body.member, list) else [body.member]
    async with _write(request) as (conn, caller):
        # An org admin learns nothing of organizations not its own: 403 before any 404.
        await _check_org_admin(conn, caller, scope, [body.organization_id], "organization_id")
        await _one(conn, body.organization_id, "organization_id", lock=True)
        for member in members:
            # Proxy admins create unknown users (as /team/member_add does); org admins never do.
            user_id = await _member_user(conn, member, create=scope is Scope.ALL)
            await _check_member_target(conn, scope, user_id)
            await orgs_sql.upsert_member(conn, body.organization_id, user_id, member.role)
        updated = await _member_rows(conn, body.organization_id)
        await _audit(
            conn,
            caller,
            "organization.member_add",
            "organization",
            body.organization_id,
            None,
            {"members": updated},
        )
        users = [(await store.get_user(conn, m["user_id"])) for m in updated]
    return _json(
        {
            "organization_id": body.organization_id,
            "updated_users": [u.to_api() for u in users if u is not None],
            "updated_organization_memberships": updated,
        }
    )


async def _member_rows(conn: asyncpg.Connection, organization_id: str) -> list[dict[str, Any]]:
    (view,) = await _views(conn, [await _one(conn, organization_id, "organization_id")])
    return list(view["members"])


async def organization_member_update(request: Request) -> Response:
    scope = await _allow(request, "/organization/member_update")
    body = await _parse(request, OrganizationMemberUpdateRequest)
    async with _write(request) as (conn, caller):
        # An org admin learns nothing of organizations not its own: 403 before any 404.
        await _check_org_admin(conn, caller, scope, [body.organization_id], "organization_id")
        await _one(conn, body.organization_id, "organization_id", lock=True)
        user_id = await _member_user(conn, body, create=False)
        await _check_member_target(conn, scope, user_id)
        current = {m["user_id"]: m for m in await _member_rows(conn, body.organization_id)}
        if user_id not in current:
            raise GatewayError(
                404, "that user is not a member of the organization", code="not_found", param="user_id"
            )
        if body.role is not None:
            await orgs_sql.upsert_member(conn, body.organization_id, user_id, body.role)
        after = {"user_id": user_id, "user_role": body.role or current[user_id]["user_role"]}
        await _audit(
            conn,
            caller,
            "organization.member_update",
            "organization",
            body.organization_id,
            current[user_id],
            after,
        )
    return _json(
        {
            "user_id": user_id,
            "user_email": current[user_id]["user_email"],
            "organization_id": body.organization_id,
            "user_role": after["user_role"],
            "max_budget_in_organization": None,
        }
    )


async def organization_member_delete(request: Request) -> Response:
    scope = await _allow(request, "/organization/member_delete")
    body = await _parse(request, OrganizationMemberRef)
    async with _write(request) as (conn, caller):
        # An org admin learns nothing of organizations not its own: 403 before any 404.
        await _check_org_admin(conn, caller, scope, [body.organization_id], "organization_id")
        await _one(conn, body.organization_id, "organization_id", lock=True)
        user_id = await _member_user(conn, body, create=False)
        if not await orgs_sql.delete_member(conn, body.organization_id, user_id):
            raise GatewayError(
                404, "that user is not a member of the organization", code="not_found", param="user_id"
            )
        await _audit(
            conn,
            caller,
            "organization.member_delete",
            "organization",
            body.organization_id,
            {"user_id": user_id},
            None,
        )
    return _json({"organization_id": body.organization_id, "user_id": user_id, "deleted": True})


# One route per method (FastAPI names each operation after its route's first method).
for _path, _handler, _methods in (
    ("/organization/new", organization_new, ("POST",)),
    ("/organization/update", organization_update, ("PATCH", "POST")),
    ("/organization/delete", organization_delete, ("DELETE", "POST")),
    ("/organization/list", organization_list, ("GET",)),
    ("/organization/info", organization_info, ("GET",)),
    ("/organization/info", organization_info_many, ("POST",)),
    ("/organization/member_add", organization_member_add, ("POST",)),
    ("/organization/member_update", organization_member_update, ("PATCH", "POST")),
    ("/organization/member_delete", organization_member_delete, ("DELETE", "POST")),
):
    for _method in _methods:
        router.add_api_route(_path, _handler, methods=[_method])
