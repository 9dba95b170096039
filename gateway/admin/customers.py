"""Customers on LiteLLM's paths and payloads: ``/customer/new``, ``/customer/update``, ``/customer/delete``,
``/customer/info``, ``/customer/list``, ``/customer/block``, ``/customer/unblock``, each also under
LiteLLM's older ``/end_user/`` prefix.

A customer (LiteLLM's end user) is whoever a request names in its ``user`` field (or LiteLLM's headers
and metadata fields: ``gateway.keys.customers``). Its limits live in a ``budgets`` row: ``budget_id``
points at an existing one, or the budget fields create (and later update) the customer's own, as
LiteLLM does. Answers are LiteLLM's ``CustomerResponse`` (the row with ``litellm_budget_table``
nested). Proxy admins write; proxy admins and viewers read.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.admin.budget_rows import budget_columns, budget_table
from gateway.admin.customer_schemas import (
    MAX_LIST,
    CustomerBlockRequest,
    CustomerDeleteRequest,
    CustomerFields,
    CustomerNewRequest,
    CustomerUpdateRequest,
)
from gateway.admin.router import _allow, _audit, _json, _money, _parse, _plane, _read, _write
from gateway.db import budgets as budgets_sql
from gateway.db import customers as customers_sql
from gateway.errors import GatewayError, bad_request

router = APIRouter(tags=["admin"])
PREFIXES = ("/customer", "/end_user")


def _view(row: asyncpg.Record) -> dict[str, Any]:
    """LiteLLM's ``CustomerResponse``."""
    return {
        "user_id": row["id"],
        "blocked": row["blocked"],
        "alias": row["alias"],
        "spend": float(row["spend"]),
        "allowed_model_region": row["allowed_model_region"],
        "default_model": row["default_model"],
        "models": list(row["models"] or []),
        "budget_id": row["budget_id"],
        "litellm_budget_table": budget_table(row),
        "object_permission_id": None,
        "object_permission": None,
    }


def _not_found(customer_ids: list[str], param: str) -> GatewayError:
    # LiteLLM's message and 404 for an unknown end user.
    return GatewayError(
        404, f"End User Id={', '.join(customer_ids)} does not exist in db", code="not_found", param=param
    )


def _check_default_model(request: Request, body: CustomerFields) -> None:
    if body.default_model is not None and not request.app.state.services.router.has_model(body.default_model):
        raise bad_request(
            f"default_model: {body.default_model!r} is not a model on this proxy", param="default_model"
        )


def _customer_columns(body: CustomerFields) -> dict[str, Any]:
    sent = body.model_fields_set
    return {name: getattr(body, name) for name in customers_sql.COLUMNS if name in sent and name != "spend"}


async def _one(conn: asyncpg.Connection, customer_id: str, param: str = "user_id") -> asyncpg.Record:
    rows = await customers_sql.fetch(conn, [customer_id])
    if not rows:
        raise _not_found([customer_id], param)
    return rows[0]


def _forget(request: Request, customer_ids: list[str]) -> None:
    customers = _plane(request).customers
    for customer_id in customer_ids:
        customers.invalidate(customer_id)


async def customer_new(request: Request) -> Response:
    await _allow(request, "/customer/new")
    body = await _parse(request, CustomerNewRequest)
    _check_default_model(request, body)
    now = datetime.now(UTC)
    async with _write(request) as (conn, caller):
        if await customers_sql.fetch(conn, [body.user_id]):
            raise bad_request(
                f"user_id: customer {body.user_id!r} already exists", param="user_id", code="duplicate"
            )
        values = _customer_columns(body)
        budget = budget_columns(body, now)
        if budget:
            values["budget_id"] = str(uuid.uuid4())
            await budgets_sql.insert(conn, values["budget_id"], budget, now)
        if body.spend is not None:
            values["spend"] = _money(body.spend)
        await customers_sql.insert(conn, body.user_id, values)
        view = _view(await _one(conn, body.user_id))
        await _audit(conn, caller, "customer.new", "customer", body.user_id, None, view)
    _forget(request, [body.user_id])
    return _json(view)


async def customer_update(request: Request) -> Response:
    await _allow(request, "/customer/update")
    body = await _parse(request, CustomerUpdateRequest)
    _check_default_model(request, body)
    now = datetime.now(UTC)
    async with _write(request) as (conn, caller):
        rows = await customers_sql.fetch(conn, [body.user_id], for_update=True)
        if not rows:
            raise _not_found([body.user_id], "user_id")
        before = _view(rows[0])
        values = _customer_columns(body)
        budget = budget_columns(body, now)
        if budget and before["budget_id"] is not None:
            # LiteLLM updates the row the customer points at (a shared tier changes for all its members).
            await budgets_sql.update(conn, before["budget_id"], budget, now)
        elif budget:
            values["budget_id"] = str(uuid.uuid4())
            await budgets_sql.insert(conn, values["budget_id"], budget, now)
        await customers_sql.update(conn, body.user_id, values)
        view = _view(await _one(conn, body.user_id))
        await _audit(conn, caller, "customer.update", "customer", body.user_id, before, view)
    _forget(request, [body.user_id])
    return _json(view)


async def customer_delete(request: Request) -> Response:
    await _allow(request, "/customer/delete")
    body = await _parse(request, CustomerDeleteRequest)
    async with _write(request) as (conn, caller):
        rows = await customers_sql.fetch(conn, body.user_ids, for_update=True)
        found = {r["id"]: r for r in rows}
        missing = [c for c in body.user_ids if c not in found]
        if missing:
            raise _not_found(missing, "user_ids")
        deleted = await customers_sql.delete(conn, list(found))
        for customer_id, row in found.items():
            await _audit(conn, caller, "customer.delete", "customer", customer_id, _view(row), None)
    _forget(request, list(found))
    return _json(
        {"deleted_customers": deleted, "message": f"Successfully deleted customers with ids: {body.user_ids}"}
    )


async def customer_info(request: Request, end_user_id: str | None = None) -> Response:
    await _allow(request, "/customer/info")
    if not end_user_id:
        raise bad_request("end_user_id is required", param="end_user_id")
    async with _read(request) as (conn, _):
        return _json(_view(await _one(conn, end_user_id, "end_user_id")))


async def customer_list(request: Request, page: int = 1, size: int = MAX_LIST) -> Response:
    await _allow(request, "/customer/list")
    if not 1 <= page <= 1_000_000:
        raise bad_request("page: must be 1 to 1000000", param="page")
    if not 1 <= size <= MAX_LIST:
        raise bad_request(f"size: must be 1 to {MAX_LIST}", param="size")
    async with _read(request) as (conn, _):
        rows = await customers_sql.fetch_page(conn, size, (page - 1) * size)
    return _json([_view(r) for r in rows])


async def _set_blocked(request: Request, route: str, blocked: bool) -> list[dict[str, Any]]:
    await _allow(request, route)
    body = await _parse(request, CustomerBlockRequest)
    async with _write(request) as (conn, caller):
        await customers_sql.set_blocked(conn, body.user_ids, blocked)
        views = [_view(r) for r in await customers_sql.fetch(conn, body.user_ids)]
        for view in views:
            action = "customer.block" if blocked else "customer.unblock"
            await _audit(conn, caller, action, "customer", view["user_id"], None, view)
    _forget(request, body.user_ids)
    return views


async def customer_block(request: Request) -> Response:
    """Refuse every request naming these customers (unknown ones are created blocked, as LiteLLM does)."""
    return _json({"blocked_users": await _set_blocked(request, "/customer/block", True)})


async def customer_unblock(request: Request) -> Response:
    """LiteLLM's answer: the ids that remain blocked after the call (none of these)."""
    views = await _set_blocked(request, "/customer/unblock", False)
    return _json({"blocked_users": [v["user_id"] for v in views if v["blocked"]]})


# LiteLLM serves each under /customer/ and its older /end_user/ name.
for _prefix in PREFIXES:
    router.add_api_route(f"{_prefix}/new", customer_new, methods=["POST"])
    router.add_api_route(f"{_prefix}/update", customer_update, methods=["POST"])
    router.add_api_route(f"{_prefix}/delete", customer_delete, methods=["POST"])
    router.add_api_route(f"{_prefix}/info", customer_info, methods=["GET"])
    router.add_api_route(f"{_prefix}/list", customer_list, methods=["GET"])
    router.add_api_route(f"{_prefix}/block", customer_block, methods=["POST"])
    router.add_api_route(f"{_prefix}/unblock", customer_unblock, methods=["POST"])
