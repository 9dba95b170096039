"""``KeyResolver`` backed by Postgres with a small in-process cache.

A cached key costs a SHA-256 and a dict lookup. A miss costs one primary-key query (the key joined
with its team, user and membership). Unknown keys are cached as negative entries for a short time so
a client retrying a wrong key does not reach the database again.

Invalidation: writes through the admin API in this process call ``invalidate``; other gateway
instances see the change when their entry's TTL (default 5 s) runs out.

Database outage: a key whose entry has expired is still served as it was last loaded, for up to
``stale_ttl`` (default 300 s) after that load, so traffic with known keys goes on; a key not seen within
that time (or never) gets a 503 ``database_unavailable``, never a 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from gateway.db.guarded_pool import GuardedPool
from gateway.db.outage import DatabaseUnavailable
from gateway.keys.denials import budget_exceeded, key_blocked, key_expired, model_not_allowed
from gateway.keys.policy import KeyPolicy, ModelBudget, SharedSoftBudget, parse_model_budgets, windowed_spend
from gateway.pipeline import LimitScope, Principal
from gateway.routing.wildcards import model_allowed

_LOOKUP = """
SELECT k.token_hash, k.key_alias, k.team_id, k.user_id, k.models, k.max_budget, k.spend, k.rpm_limit,
       k.tpm_limit, k.max_parallel_requests, k.model_rpm_limit, k.model_tpm_limit, k.expires, k.blocked,
       k.metadata, k.aliases, k.model_max_budget, k.soft_budget,
       t.id AS t_id, t.models AS t_models, t.max_budget AS t_max_budget, t.spend AS t_spend,
       t.rpm_limit AS t_rpm_limit, t.tpm_limit AS t_tpm_limit, t.max_parallel_requests AS t_max_parallel,
       t.model_rpm_limit AS t_model_rpm_limit, t.model_tpm_limit AS t_model_tpm_limit, t.blocked AS t_blocked,
       u.id AS u_id, u.max_budget AS u_max_budget, u.spend AS u_spend, u.rpm_limit AS u_rpm_limit,
       u.tpm_limit AS u_tpm_limit, u.max_parallel_requests AS u_max_parallel, u.blocked AS u_blocked,
       m.role AS member_role,
       kb.max_budget AS kb_max_budget, kb.soft_budget AS kb_soft_budget, kb.rpm_limit AS kb_rpm_limit,
       kb.tpm_limit AS kb_tpm_limit, kb.max_parallel_requests AS kb_max_parallel,
       tb.max_budget AS tb_max_budget, tb.rpm_limit AS tb_rpm_limit, tb.tpm_limit AS tb_tpm_limit,
       tb.max_parallel_requests AS tb_max_parallel, tb.soft_budget AS tb_soft_budget,
       ub.max_budget AS ub_max_budget, ub.rpm_limit AS ub_rpm_limit, ub.tpm_limit AS ub_tpm_limit,
       ub.max_parallel_requests AS ub_max_parallel, ub.soft_budget AS ub_soft_budget,
       o.id AS o_id, o.models AS o_models, o.spend AS o_spend,
       ob.max_budget AS ob_max_budget, ob.rpm_limit AS ob_rpm_limit, ob.tpm_limit AS ob_tpm_limit,
       ob.max_parallel_requests AS ob_max_parallel, ob.soft_budget AS ob_soft_budget
FROM virtual_keys k
LEFT JOIN teams t ON t.id = k.team_id
LEFT JOIN users u ON u.id = k.user_id
LEFT JOIN team_memberships m ON m.team_id = k.team_id AND m.user_id = k.user_id
LEFT JOIN budgets kb ON kb.id = k.budget_id
LEFT JOIN budgets tb ON tb.id = t.budget_id
LEFT JOIN budgets ub ON ub.id = u.budget_id
LEFT JOIN organizations o ON o.id = t.organization_id
LEFT JOIN budgets ob ON ob.id = o.budget_id
WHERE k.token_hash = $1
"""

# A key's spend per model since each model budget's window opened (whole UTC days).
_MODEL_SPEND = """
SELECT model, day, sum(spend) AS spend FROM daily_spend
WHERE key_hash = $1 AND model = ANY($2::text[]) GROUP BY model, day
"""

# LiteLLM's special entries in a key's model list.
_ALL_TEAM_MODELS = "all-team-models"
_ALL_PROXY_MODELS = "all-proxy-models"


@dataclass(slots=True)
class BudgetState:
    """A budget shared by every cached key that charges the same entity; spend is kept fresh by the sink."""

    max_budget: float | None
    spend: float

    def exceeded(self) -> bool:
        return self.max_budget is not None and self.spend >= self.max_budget


@dataclass(slots=True)
class _Entry:
    principal: Principal | None  # None: no such key (negative entry)
    fresh_until: float
    blocked: bool = False
    expires_at: float | None = None
    budgets: tuple[tuple[str, BudgetState], ...] = ()
    stale_until: float = 0.0  # served until then while the database is unreachable (never if negative)


def _as_float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _tighter(own: Any, linked: Any) -> Any:
    """The stricter of an entity's own limit and its budget row's (LiteLLM's ``budget_id``): a row
    can only hold an entity tighter, never loosen what was set on it. None: no limit."""
    if own is None:
        return linked
    return own if linked is None else min(own, linked)


def _scope(kind: str, owner: str, row: asyncpg.Record, own: str, linked: str) -> LimitScope | None:
    """``kind``'s rpm/tpm/parallel scope from its own columns (prefix ``own``) and its budget row's
    (prefix ``linked``, absent for organizations), or None when neither sets a limit."""
    names = ("rpm_limit", "tpm_limit", "max_parallel")
    values = [_tighter(row[f"{own}{n}"] if own else None, row[f"{linked}{n}"]) for n in names]
    if all(v is None for v in values):
        return None
    return LimitScope(kind, owner, *values)


def _allowed_models(key_models: list[str], team_models: list[str] | None) -> tuple[str, ...]:
    """Key access intersected with team access; empty means every model.

    Either side may list wildcard patterns (``anthropic/*``): a key's entry is kept when the team's
    list allows it, and a team entry when the key's list allows it, so the narrower of two
    overlapping entries survives (key ``anthropic/*`` in a team of ``anthropic/claude-x`` may use
    ``anthropic/claude-x``). Two patterns neither of which covers the other share nothing here.
    """
    key_set = [m for m in key_models if m not in (_ALL_TEAM_MODELS, _ALL_PROXY_MODELS)]
    team_set = list(team_models or [])
    if _ALL_PROXY_MODELS in team_set:
        team_set = []
    if not key_set:
        return tuple(team_set)
    if not team_set:
        return tuple(key_set)
    kept = [m for m in key_set if model_allowed(team_set, m)]
    kept += [m for m in team_set if m not in kept and model_allowed(key_set, m)]
    return tuple(kept) or ("__no_models__",)


def _model_scopes(kind: str, owner: str, rpm: dict[str, Any], tpm: dict[str, Any]) -> list[LimitScope]:
    scopes = []
    for model in sorted(set(rpm or {}) | set(tpm or {})):
        r, t = (rpm or {}).get(model), (tpm or {}).get(model)
        scopes.append(
            LimitScope(
                kind, f"{owner}:{model}", rpm=None if r is None else int(r), tpm=None if t is None else int(t)
            )
        )
    return scopes


class PostgresKeyResolver:
    """Resolves ``sk-...`` bearer keys to principals, enforcing blocked/expired/budget rules."""

    def __init__(
        self,
        pool: GuardedPool,
        *,
        ttl: float = 5.0,
        negative_ttl: float = 2.0,
        max_entries: int = 10_000,
        stale_ttl: float = 300.0,
    ) -> None:
        self._pool = pool
        self._ttl = ttl
        self._stale_ttl = stale_ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._budgets: dict[str, BudgetState] = {}
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}
        self.db_lookups = 0  # how many times the database was asked (tests and the benchmark read it)
        self.stale_hits = 0  # requests served from an expired entry during a database outage

    # -- the request path -------------------------------------------------------------------------
    async def resolve(self, token: str) -> Principal | None:
        token_hash = hashlib.sha256(token.encode()).hexdigest()
        entry = self._cache.get(token_hash)
        now = time.monotonic()
        if entry is None or entry.fresh_until < now:
            entry = await self._refresh(token_hash, entry, now)
        principal = entry.principal
        if principal is None:
            return None
        if entry.blocked:
            raise key_blocked()
        if entry.expires_at is not None and entry.expires_at <= time.time():
            raise key_expired()
        for kind, budget in entry.budgets:
            if budget.exceeded():
                raise budget_exceeded(kind, budget.spend, budget.max_budget or 0.0)
        return principal

    @staticmethod
    def check_model(principal: Principal, model: str) -> None:
        """Raise a 403 if ``principal`` may not call ``model`` (empty ``models`` allows all; a
        pattern allows every name it matches)."""
        if principal.models and not model_allowed(principal.models, model):
            raise model_not_allowed(model, principal.models)

    # -- cache maintenance ------------------------------------------------------------------------
    def invalidate(self, token_hash: str | None = None) -> None:
        """Forget one key (or every key) in this process, e.g. after an admin write."""
        if token_hash is None:
            self._cache.clear()
            self._budgets.clear()
        else:
            self._cache.pop(token_hash, None)

    def apply_spend(self, kind: str, entity_id: str, spend: float) -> None:
        """Update the cached spend of a key/team/user after the sink committed (kind: key|team|user)."""
        state = self._budgets.get(f"{kind}:{entity_id}")
        if state is not None:
            state.spend = spend
        if kind == "key":
            entry = self._cache.get(entity_id)
            if entry is not None and entry.principal is not None:
                policy = entry.principal.policy
                if policy is not None and policy.model_budgets:
                    # Its per-model spend changed too: reload it (with daily_spend) on its next request.
                    entry.fresh_until = 0.0

    def _budget(self, kind: str, entity_id: str, max_budget: Decimal | None, spend: Decimal) -> BudgetState:
        name = f"{kind}:{entity_id}"
        state = self._budgets.get(name)
        if state is None:
            if len(self._budgets) >= self._max_entries * 3:
                self._budgets.clear()  # rare; entries re-create their states on their next load
            state = self._budgets[name] = BudgetState(_as_float(max_budget), float(spend))
        else:
            state.max_budget, state.spend = _as_float(max_budget), float(spend)
        return state

    def _store(self, token_hash: str, entry: _Entry) -> _Entry:
        self._cache[token_hash] = entry
        self._cache.move_to_end(token_hash)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return entry

    async def _refresh(self, token_hash: str, cached: _Entry | None, now: float) -> _Entry:
        try:
            return await self._load(token_hash, now)
        except DatabaseUnavailable:
            if cached is not None and cached.principal is not None and now <= cached.stale_until:
                self.stale_hits += 1
                return cached
            raise DatabaseUnavailable(
                "The key store (database) is unreachable and this API key was not seen recently, so it "
                "cannot be checked now. Retry in a few seconds."
            ) from None

    async def _load(self, token_hash: str, now: float) -> _Entry:
        # Concurrent misses for the same key share one query (a burst of requests with a new key,
        # or a client hammering a wrong one, reaches the database once).
        pending = self._inflight.get(token_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._inflight[token_hash] = future
        try:
            self.db_lookups += 1
            row = await self._pool.fetchrow(_LOOKUP, token_hash)
            if row is None:
                entry = self._store(token_hash, _Entry(None, now + self._negative_ttl))
            else:
                budgets = parse_model_budgets(row["model_max_budget"] or {})
                spend = await self._model_spend(token_hash, budgets) if budgets else {}
                entry = self._store(token_hash, self._entry_from_row(row, now, budgets, spend))
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) get it; nobody else must
            raise
        finally:
            del self._inflight[token_hash]

    async def _model_spend(self, token_hash: str, budgets: dict[str, ModelBudget]) -> dict[str, float]:
        rows = await self._pool.fetch(_MODEL_SPEND, token_hash, list(budgets))
        days = ((r["model"], r["day"], float(r["spend"])) for r in rows)
        return windowed_spend(days, budgets, datetime.now(UTC))

    def _policy(
        self,
        row: asyncpg.Record,
        key_budget: BudgetState,
        budgets: dict[str, ModelBudget],
        model_spend: dict[str, float],
        shared: list[tuple[str, BudgetState]],
    ) -> KeyPolicy | None:
        """The key's LiteLLM request rules, or None when it sets none (the common case costs nothing).

        ``shared``: the key's team, organization and user budgets, whose budget rows' ``soft_budget``
        warn as the key's own does."""
        aliases = dict(row["aliases"] or {})
        tags = (row["metadata"] or {}).get("tags") or []
        soft = _tighter(row["soft_budget"], row["kb_soft_budget"])
        linked = {"team": "tb_soft_budget", "organization": "ob_soft_budget", "user": "ub_soft_budget"}
        shared_soft = tuple(
            SharedSoftBudget(kind, state, float(row[linked[kind]]))
            for kind, state in shared
            if row[linked[kind]] is not None
        )
        if not (aliases or budgets or tags or soft is not None or shared_soft):
            return None
        return KeyPolicy(
            key_hash=row["token_hash"],
            key_alias=row["key_alias"],
            aliases=aliases,
            tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
            model_budgets=budgets,
            model_spend=model_spend,
            soft_budget=_as_float(soft),
            key_budget=key_budget,
            shared_soft=shared_soft,
        )

    @staticmethod
    def _models(row: asyncpg.Record) -> tuple[str, ...]:
        """The key's models within its team's, within the team's organization's."""
        models = _allowed_models(list(row["models"] or []), None if row["t_id"] is None else row["t_models"])
        if row["o_id"] is not None and row["o_models"]:
            models = _allowed_models(list(models), row["o_models"])
        return models

    def _entry_from_row(
        self,
        row: asyncpg.Record,
        now: float,
        model_budgets: dict[str, ModelBudget],
        model_spend: dict[str, float],
    ) -> _Entry:
        token_hash: str = row["token_hash"]
        team_id, user_id, org_id = row["t_id"], row["u_id"], row["o_id"]
        # Each of key, user, team and organization is held to its own limits and to its budget
        # row's (``budget_id``), whichever is stricter; an organization has only its budget row's.
        limits: list[LimitScope] = []
        key_scope = LimitScope(
            "key",
            token_hash,
            _tighter(row["rpm_limit"], row["kb_rpm_limit"]),
            _tighter(row["tpm_limit"], row["kb_tpm_limit"]),
            _tighter(row["max_parallel_requests"], row["kb_max_parallel"]),
        )
        if (
            key_scope.rpm is not None
            or key_scope.tpm is not None
            or key_scope.max_parallel_requests is not None
        ):
            limits.append(key_scope)
        limits += _model_scopes("key_model", token_hash, row["model_rpm_limit"], row["model_tpm_limit"])
        key_max = _tighter(row["max_budget"], row["kb_max_budget"])
        key_budget = self._budget("key", token_hash, key_max, row["spend"])
        budgets = [("key", key_budget)]
        if team_id is not None:
            limits += filter(None, [_scope("team", team_id, row, "t_", "tb_")])
            limits += _model_scopes("team_model", team_id, row["t_model_rpm_limit"], row["t_model_tpm_limit"])
            team_max = _tighter(row["t_max_budget"], row["tb_max_budget"])
            budgets.append(("team", self._budget("team", team_id, team_max, row["t_spend"])))
        if org_id is not None:
            limits += filter(None, [_scope("org", org_id, row, "", "ob_")])
            budgets.append(
                ("organization", self._budget("org", org_id, row["ob_max_budget"], row["o_spend"]))
            )
        if user_id is not None:
            limits += filter(None, [_scope("user", user_id, row, "u_", "ub_")])
            user_max = _tighter(row["u_max_budget"], row["ub_max_budget"])
            budgets.append(("user", self._budget("user", user_id, user_max, row["u_spend"])))
        principal = Principal(
            kind="virtual",
            key_hash=token_hash,
            key_alias=row["key_alias"],
            team_id=team_id,
            user_id=user_id,
            models=self._models(row),
            limits=tuple(limits),
            team_admin=row["member_role"] == "admin",
            metadata=dict(row["metadata"] or {}),
            policy=self._policy(row, key_budget, model_budgets, model_spend, budgets[1:]),
        )
        expires: datetime | None = row["expires"]
        return _Entry(
            principal=principal,
            fresh_until=now + self._ttl,
            stale_until=now + self._stale_ttl,
            # A blocked key, team or user: the key is refused (the admin API refuses it the same way).
            blocked=bool(row["blocked"]) or bool(row["t_blocked"]) or bool(row["u_blocked"]),
            expires_at=None if expires is None else expires.timestamp(),
            budgets=tuple(budgets),
        )
