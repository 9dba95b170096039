"""Budgets on LiteLLM's paths and payloads: ``/budget/new``, ``/budget/update``, ``/budget/delete``,
``/budget/info``, ``/budget/list``.

A budget is a named set of limits (``max_budget``, ``soft_budget``, ``budget_duration``, rpm/tpm,
``max_parallel_requests``) that teams and keys point at by ``budget_id``. Writes are the proxy
admin's; proxy admins and viewers read. Every answer is LiteLLM's ``LiteLLM_BudgetTable`` row:
``budget_id`` and the limits, ``budget_reset_at`` set from ``budget_duration`` when it is given.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.admin.budget_schemas import MAX_LIST, BudgetDeleteRequest, BudgetNewRequest, BudgetRequest
from gateway.admin.router import _allow, _audit, _invalidate_all, _json, _money, _parse, _read, _write
from gateway.db import budgets as budgets_sql
from gateway.errors import GatewayError, bad_request
from gateway.keys.durations import next_reset

router = APIRouter(tags=["admin"])


def _columns(body: BudgetNewRequest, now: datetime) -> dict[str, Any]:
    """The columns the body sets: only the fields it sent (an update leaves the others alone)."""
    sent = body.model_fields_set - {"budget_id"}
    values: dict[str, Any] = {}
    for name in sent:
        value = getattr(body, name)
        values[name] = _money(value) if name in ("max_budget", "soft_budget") else value
    if "budget_duration" in sent:
        values["budget_reset_at"] = next_reset(body.budget_duration, now)
    return values


def _view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "budget_id": row["id"],
        **{name: _number(row[name]) for name in budgets_sql.COLUMNS},
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _number(value: Any) -> Any:
    # Money columns are NUMERIC; LiteLLM answers floats.
    return float(value) if value is not None and not isinstance(value, (int, str, datetime)) else value


def _not_found(budget_id: str, param: str) -> GatewayError:
    return GatewayError(404, f"budget {budget_id!r} not found", code="not_found", param=param)


@router.post("/budget/new")
async def budget_new(request: Request) -> Response:
    await _allow(request, "/budget/new")
    body = await _parse(request, BudgetNewRequest)
    now = datetime.now(UTC)
    budget_id = body.budget_id or str(uuid.uuid4())
    async with _write(request) as (conn, caller):
        if await budgets_sql.fetch(conn, [budget_id]):
            raise bad_request(f"Budget with id '{budget_id}' already exists.", param="budget_id")
        row = await budgets_sql.insert(conn, budget_id, _columns(body, now), now)
        view = _view(row)
        await _audit(conn, caller, "budget.new", "budget", budget_id, None, view)
    return _json(view)


@router.post("/budget/update")
async def budget_update(request: Request) -> Response:
    await _allow(request, "/budget/update")
    body = await _parse(request, BudgetNewRequest)
    if not body.budget_id:
        raise bad_request("budget_id is required", param="budget_id")
    now = datetime.now(UTC)
    async with _write(request) as (conn, caller):
        before = await budgets_sql.fetch(conn, [body.budget_id])
        row = await budgets_sql.update(conn, body.budget_id, _columns(body, now), now)
        if row is None or not before:
            raise _not_found(body.budget_id, "budget_id")
        view = _view(row)
        await _audit(conn, caller, "budget.update", "budget", body.budget_id, _view(before[0]), view)
    _invalidate_all(request)  # the keys of teams, users and keys linked to it hold new limits now
    return _json(view)


@router.post("/budget/delete")
async def budget_delete(request: Request) -> Response:
    await _allow(request, "/budget/delete")
    body = await _parse(request, BudgetDeleteRequest)
    async with _write(request) as (conn, caller):
        row = await budgets_sql.delete(conn, body.id)
        if row is None:
            raise _not_found(body.id, "id")
        view = _view(row)
        await _audit(conn, caller, "budget.delete", "budget", body.id, view, None)
    _invalidate_all(request)
    return _json(view)


@router.post("/budget/info")
async def budget_info(request: Request) -> Response:
    await _allow(request, "/budget/info")
    body = await _parse(request, BudgetRequest)
    if not body.budgets:
        raise bad_request("Specify list of budget id's to query.", param="budgets")
    async with _read(request) as (conn, _):
        rows = await budgets_sql.fetch(conn, body.budgets)
    return _json([_view(r) for r in rows])


@router.get("/budget/list")
async def budget_list(request: Request) -> Response:
    await _allow(request, "/budget/list")
    async with _read(request) as (conn, _):
        rows = await budgets_sql.fetch_all(conn, MAX_LIST)
    return _json([_view(r) for r in rows])
