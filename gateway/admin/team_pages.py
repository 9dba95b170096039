"""``GET /v2/team/list``: LiteLLM's paged team list (its client's ``teams.list_v2``), on the terms of
``/team/list`` (proxy admins and viewers).

Filters ``user_id`` (teams the user belongs to), ``organization_id``, ``team_id`` and ``team_alias`` (a
case-insensitive part of the alias); ``page`` from 1, ``page_size`` 1 to 100 (default 10); ``sort_by``
``team_id``, ``team_alias``, ``created_at`` or ``spend``, ``sort_order`` ``asc`` or ``desc``. Answers
LiteLLM's ``TeamListResponse``: ``teams``, ``total``, ``page``, ``page_size``, ``total_pages``.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.admin.router import _allow, _json, _read, _team_view
from gateway.errors import bad_request
from gateway.keys import store

router = APIRouter(tags=["admin"])
MAX_PAGE = 1_000_000


@router.get("/v2/team/list")
async def team_list_v2(
    request: Request,
    user_id: str | None = None,
    organization_id: str | None = None,
    team_id: str | None = None,
    team_alias: str | None = None,
    page: int = 1,
    page_size: int = 10,
    sort_by: str | None = None,
    sort_order: str = "asc",
) -> Response:
    await _allow(request, "/team/list")
    if not 1 <= page <= MAX_PAGE:
        raise bad_request(f"page: must be 1 to {MAX_PAGE}", param="page")
    if not 1 <= page_size <= 100:
        raise bad_request("page_size: must be 1 to 100", param="page_size")
    if sort_by is not None and sort_by not in store.TEAM_SORTS:
        raise bad_request(f"sort_by: one of {', '.join(store.TEAM_SORTS)}", param="sort_by")
    if sort_order not in ("asc", "desc"):
        raise bad_request("sort_order: 'asc' or 'desc'", param="sort_order")
    async with _read(request) as (conn, _):
        teams, total = await store.page_teams(
            conn,
            user_id=user_id,
            organization_id=organization_id,
            team_id=team_id,
            alias_part=team_alias,
            sort_by=sort_by or "created_at",
            descending=sort_order == "desc",
            page=page,
            size=page_size,
        )
        views = [await _team_view(conn, t) for t in teams]
    return _json(
        {
            "teams": views,
            "total": total,
            "page": page,
            "page_size": page_size,
            "total_pages": math.ceil(total / page_size),
        }
    )
