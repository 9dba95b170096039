"""Structured request log: one JSON line per finished request, written with the spend batch.

On when ``general_settings.json_logs`` is set (LiteLLM's ``litellm_settings.json_logs`` moves there).
Lines are written when the batch that holds the request commits, off the request path. They carry
what an operator joins on (request id, key alias, team, model, deployment) and what the request cost;
never a prompt, a completion or a key (the key's hash is not logged either: the alias names it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from decimal import Decimal

from gateway.pipeline import UsageEvent

log = logging.getLogger("switchyard.requests")


def enable() -> None:
    """Send the lines to stderr, bare (the gateway configures no root handler; only uvicorn's own
    loggers have one). Idempotent."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def record(e: UsageEvent, cost: Decimal) -> dict[str, object]:
    """The fields one request is logged with (also what the webhook sends)."""
    p, u = e.principal, e.usage
    return {
        "event": "request",
        "request_id": e.request_id,
        "key_alias": p.key_alias,
        "team_id": p.team_id,
        "user_id": p.user_id,
        "model": e.model,
        "deployment_id": e.deployment_id,
        "operation": e.operation,
        "status": e.status,
        "error_code": e.error_code,
        "stream": e.stream,
        "cache_hit": e.cache_hit,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "cached_tokens": u.cache_read_tokens,
        "latency_ms": round((e.ended_at - e.started_at) * 1000, 3),
        "cost_usd": float(cost),
    }


def write(rows: Iterable[tuple[UsageEvent, Decimal]]) -> None:
    """One JSON line per row (``event``, its cost in US dollars)."""
    for e, cost in rows:
        log.info("%s", json.dumps(record(e, cost), separators=(",", ":")))
