"""Global spend on LiteLLM's paths and shapes, over the last 30 days of ``spend_logs``:

- ``GET /global/spend``: ``{"spend", "max_budget"}`` (Switchyard has no proxy-wide budget: null).
- ``GET /global/spend/logs[?api_key=]``: ``[{"date", "spend"}]`` per day, optionally for one key hash.
- ``GET /global/spend/keys[?limit=]``: ``[{"api_key", "key_alias", "key_name", "total_spend"}]``, top first.
- ``GET /global/spend/models[?limit=]``: ``[{"model", "total_spend"}]``, top first.
- ``GET /global/spend/teams``: ``{"daily_spend": [{"date", <team>: spend...}], "teams": [...],
  "total_spend_per_team": [{"team_id", "total_spend"}]}`` (a team named by its alias, else its id; top 10).

Proxy admins and viewers read them (LiteLLM: admin-only).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.admin.router import _allow, _json, _read
from gateway.db import global_spend as spend_sql
from gateway.errors import bad_request

router = APIRouter(tags=["admin"])

MAX_LIMIT = 10_000
TOP_TEAMS = 10  # LiteLLM's total_spend_per_team holds the top ten


def _limit(limit: int | None) -> int | None:
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise bad_request(f"limit: between 1 and {MAX_LIMIT}", param="limit")
    return limit


def _rows(records: list[Any]) -> list[dict[str, Any]]:
    return [{k: float(v) if isinstance(v, Decimal) else v for k, v in dict(r).items()} for r in records]


@router.get("/global/spend")
async def global_spend(request: Request) -> Response:
    await _allow(request, "/global/spend")
    async with _read(request) as (conn, _):
        spend = await spend_sql.total(conn)
    return _json({"spend": spend, "max_budget": None})


@router.get("/global/spend/logs")
async def global_spend_logs(request: Request, api_key: str | None = None) -> Response:
    await _allow(request, "/global/spend/logs")
    async with _read(request) as (conn, _):
        rows = await spend_sql.per_day(conn, api_key)
    return _json(_rows(rows))


@router.get("/global/spend/keys")
async def global_spend_keys(request: Request, limit: int | None = None) -> Response:
    await _allow(request, "/global/spend/keys")
    limit = _limit(limit)
    async with _read(request) as (conn, _):
        rows = await spend_sql.per_key(conn, limit)
    return _json(_rows(rows))


@router.get("/global/spend/models")
async def global_spend_models(request: Request, limit: int = 10) -> Response:
    await _allow(request, "/global/spend/models")
    limit = _limit(limit)
    async with _read(request) as (conn, _):
        rows = await spend_sql.per_model(conn, limit)
    return _json(_rows(rows))


@router.get("/global/spend/teams")
async def global_spend_teams(request: Request) -> Response:
    await _allow(request, "/global/spend/teams")
    async with _read(request) as (conn, _):
        rows = await spend_sql.per_team_day(conn)
    days: dict[Any, dict[str, Any]] = {}
    totals: dict[str, float] = {}
    for r in rows:
        name = r["team_alias"] or r["team_id"]
        spend = float(r["total_spend"])
        days.setdefault(r["date"], {"date": r["date"]})[name] = spend
        totals[name] = totals.get(name, 0.0) + spend
    top = sorted(totals.items(), key=lambda item: item[1], reverse=True)[:TOP_TEAMS]
    return _json(
        {
            "daily_spend": list(days.values()),
            "teams": sorted(totals),
            "total_spend_per_team": [{"team_id": name, "total_spend": spend} for name, spend in top],
        }
    )
