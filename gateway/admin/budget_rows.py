"""A customer's or organization's own ``budgets`` row, as both write it and as LiteLLM nests it.

``budget_columns``: the budget fields a request sent, as the row's columns. ``budget_table``:
LiteLLM's ``litellm_budget_table`` from an answer row that joins the budget's columns beside its
own (the budget's timestamps as ``b_created_at`` / ``b_updated_at``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel

from gateway.admin.customer_schemas import BUDGET_FIELDS
from gateway.admin.router import _money
from gateway.keys.durations import next_reset


def money_out(value: Any) -> float | None:
    return None if value is None else float(value)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def budget_table(row: asyncpg.Record) -> dict[str, Any] | None:
    """The nested budget of ``row`` (None when it links no budget row)."""
    if row["budget_id"] is None:
        return None
    return {
        "budget_id": row["budget_id"],
        "max_budget": money_out(row["max_budget"]),
        "soft_budget": money_out(row["soft_budget"]),
        "max_parallel_requests": row["max_parallel_requests"],
        "tpm_limit": row["tpm_limit"],
        "rpm_limit": row["rpm_limit"],
        "model_max_budget": None,
        "budget_duration": row["budget_duration"],
        "budget_reset_at": iso(row["budget_reset_at"]),
        "created_at": iso(row["b_created_at"]),
        "updated_at": iso(row["b_updated_at"]),
    }


def budget_columns(body: BaseModel, now: datetime) -> dict[str, Any]:
    """The ``BUDGET_FIELDS`` ``body`` sent, as columns (a new ``budget_duration`` restarts its period)."""
    values: dict[str, Any] = {}
    for name in BUDGET_FIELDS:
        if name in body.model_fields_set:
            value = getattr(body, name)
            values[name] = _money(value) if name in ("max_budget", "soft_budget") else value
    if "budget_duration" in values:
        values["budget_reset_at"] = next_reset(body.budget_duration, now)
    return values
