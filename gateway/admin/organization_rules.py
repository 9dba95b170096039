"""What a team inside an organization must respect (checked on team and organization writes alike)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg

from gateway.db import organizations as orgs_sql
from gateway.errors import bad_request
from gateway.keys.records import TeamRecord


def check_team_fits(team_id: str, models: list[str], max_budget: Decimal | None, org: Any) -> None:
    """The models a team lists lie within its organization's (when that lists any), and a team budget
    is no larger than the organization's budget row's, as LiteLLM checks. A team that lists no models
    or sets no budget is still bounded at request time: its keys' models are cut to the
    organization's, and the organization's budget holds the spend of all its teams."""
    org_models = list(org["models"] or [])
    if org_models and "all-proxy-models" not in org_models:
        outside = [m for m in models if m not in org_models]
        if outside:
            raise bad_request(
                f"models: team {team_id} may only use organization {org['id']}'s models; "
                f"not allowed: {', '.join(outside)}",
                param="models",
            )
    if org["max_budget"] is not None and max_budget is not None and max_budget > org["max_budget"]:
        raise bad_request(
            f"max_budget: team {team_id}'s budget ({float(max_budget)}) exceeds organization {org['id']}'s "
            f"({float(org['max_budget'])})",
            param="max_budget",
        )


async def check_team_in_organization(conn: asyncpg.Connection, team: TeamRecord) -> None:
    """Refuse (in the caller's transaction) a team that does not fit its organization."""
    if team.organization_id is None:
        return
    rows = await orgs_sql.fetch(conn, [team.organization_id])
    if not rows:
        raise bad_request(
            f"organization_id: no organization {team.organization_id!r}", param="organization_id"
        )
    check_team_fits(team.id, team.models, team.max_budget, rows[0])
