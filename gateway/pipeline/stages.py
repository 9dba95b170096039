"""The stages every request passes through, as small protocols and the records they share.

The request path (``gateway.pipeline.conductor``) is: authenticate (``KeyResolver``) -> model
access -> admit (``Limiter``) -> cache lookup (``gateway.cache``) -> route and call a provider
(``gateway.routing``) -> settle limits, store in cache, record spend (``SpendSink``). The control
plane (Postgres), Redis and the router plug in real stages without the request path changing
shape (``gateway.services`` decides which).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# Re-exported: the stages below and their callers name it from here.
from providers.usage import Usage as Usage


@dataclass(frozen=True, slots=True)
class LimitScope:
    """One set of limits that applies to a request, e.g. the key's, its team's, or a model's within a key.

    ``scope`` names the kind ("key", "team", "user", "key_model", "team_model", "global");
    ``id`` identifies it (a key hash, team id, "<key hash>:<model>"...). ``None`` means no limit.
    """

    scope: str
    id: str
    rpm: int | None = None
    tpm: int | None = None
    max_parallel_requests: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as resolved from the bearer key.

    ``kind`` is "master" (the master key), "virtual" (a key from the control plane) or
    "anonymous" (local mode with no master key configured: everything is allowed).
    """

    kind: Literal["master", "virtual", "anonymous"]
    key_hash: str | None = None
    key_alias: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    # Model names this caller may use; empty means every model.
    models: tuple[str, ...] = ()
    limits: tuple[LimitScope, ...] = ()
    # Team admins may manage their own team's keys through the admin API.
    team_admin: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    # A virtual key's aliases, model budgets, soft budget and tags (``gateway.keys.policy.KeyPolicy``);
    # None when it sets none of them.
    policy: Any = None

    @property
    def is_admin(self) -> bool:
        return self.kind in ("master", "anonymous")

    @property
    def cache_scope(self) -> str:
        """The tenant a cache entry belongs to: the team, else the key, else everyone."""
        if self.team_id:
            return f"team:{self.team_id}"
        if self.key_hash:
            return f"key:{self.key_hash}"
        return "global"


@dataclass(slots=True)
class UsageEvent:
    """One finished request, as the spend stage sees it."""

    request_id: str
    principal: Principal
    model: str  # the model name the caller asked for
    deployment_id: str | None  # which deployment served it (None for cache hits and failures)
    provider_model: str | None  # e.g. "openai/gpt-4o-mini"
    usage: Usage
    cost: float
    status: Literal["success", "failure"]
    cache_hit: bool
    started_at: float  # unix seconds
    ended_at: float
    stream: bool
    error_code: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # The client API it came through ("chat", "embeddings", "completions", "messages", "responses").
    operation: str = "chat"
    # The customer (LiteLLM's end user) the request named, charged with its cost.
    end_user: str | None = None


class KeyResolver(Protocol):
    async def resolve(self, token: str) -> Principal | None:
        """The principal for a bearer token, or ``None`` if no such key exists.

        Raises ``gateway.errors.GatewayError`` for keys that exist but may not be used
        (blocked, expired, over budget).
        """
        ...


class Admission(Protocol):
    """A granted admission; ``settle`` must be called exactly once on every exit path."""

    headers: dict[str, str]

    async def settle(self, usage: Usage | None) -> None: ...


class Limiter(Protocol):
    async def admit(
        self, principal: Principal, model: str, estimated_tokens: int, *, instant: bool = False
    ) -> Admission:
        """Reserve a request (and ``estimated_tokens``) against every scope.

        Raises a 429 ``GatewayError`` when any scope is over its limit. ``instant``: the request is
        answered at once (a cache hit); it is counted and checked but holds nothing to settle.
        """
        ...


class SpendSink(Protocol):
    def record(self, event: UsageEvent) -> None:
        """Queue an event for accounting; must not block the request path."""
        ...

    async def close(self) -> None:
        """Flush everything queued (graceful shutdown)."""
        ...
