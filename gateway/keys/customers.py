"""Customers (LiteLLM's end users) on the request path: who a request names, and whether it may go on.

A request names its customer the way LiteLLM reads it, first match wins: the ``x-litellm-customer-id``
or ``x-litellm-end-user-id`` header, else the body's ``user``, ``litellm_metadata.user``,
``metadata.user_id`` or ``safety_identifier`` (the Messages door's ``metadata.user_id`` arrives as the
request's ``user``). A customer in the ``customers`` table is refused when blocked (403), when the
model is outside its ``models`` (403) or when its spend has reached its budget row's ``max_budget``
(400 ``budget_exceeded``); its row's rpm/tpm/parallel limits join the request's limit scopes, and its
``soft_budget`` adds the warning header. A customer without a budget row of its own (in the table or
not) is held to ``general_settings.max_end_user_budget`` / ``max_end_user_budget_id`` when set
(LiteLLM's ``litellm_settings`` of those names), else to nothing. A customer's first charge creates its
row (as LiteLLM upserts end users).

Rows are cached per process like keys (``ttl``, 5 s; unknown ids too), and the spend writer keeps a
cached customer's spend current after each batch. While the database is unreachable a customer seen
within ``stale_ttl`` is checked as last loaded; any other gets the same 503 an unseen key gets.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from gateway.db import budgets as budgets_sql
from gateway.db import customers as customers_sql
from gateway.db.guarded_pool import GuardedPool
from gateway.db.outage import DatabaseUnavailable
from gateway.errors import GatewayError, bad_request
from gateway.keys.policy import SHARED_SOFT_BUDGET_EXCEEDED, SOFT_BUDGET_HEADER
from gateway.pipeline import LimitScope, Principal
from gateway.routing.wildcards import model_allowed

if TYPE_CHECKING:
    from gateway.doors.base import DoorRequest

log = logging.getLogger(__name__)

CUSTOMER_HEADERS = (b"x-litellm-customer-id", b"x-litellm-end-user-id")
MAX_CUSTOMER_ID = 512


def _checked(value: str, param: str) -> str:
    # The id is stored (spend rows, the customers table): text Postgres cannot hold would poison a
    # whole spend batch, so it is refused here, in the caller's format.
    if len(value) > MAX_CUSTOMER_ID:
        raise bad_request(f"{param}: at most {MAX_CUSTOMER_ID} characters", param=param)
    if "\x00" in value:
        raise bad_request(f"{param}: must not contain NUL characters", param=param)
    try:
        value.encode()
    except UnicodeEncodeError:
        raise bad_request(f"{param}: must be valid Unicode", param=param) from None
    return value


def _nested(body: Mapping[str, Any], outer: str, inner: str) -> Any:
    value = body.get(outer)
    return value.get(inner) if isinstance(value, Mapping) else None


def customer_id(
    headers: Mapping[bytes, bytes], body: Mapping[str, Any] | None, user: str | None
) -> str | None:
    """The customer a request names (``body``: the raw JSON body when the door kept it; ``user``: the
    parsed request's ``user``), or None."""
    for header in CUSTOMER_HEADERS:
        raw = headers.get(header)
        if raw:
            return _checked(raw.decode("latin-1"), header.decode())
    if body is not None:
        for param, value in (
            ("user", body.get("user")),
            ("litellm_metadata.user", _nested(body, "litellm_metadata", "user")),
            ("metadata.user_id", _nested(body, "metadata", "user_id")),
            ("safety_identifier", body.get("safety_identifier")),
        ):
            if isinstance(value, str) and value:
                return _checked(value, param)
    return _checked(user, "user") if user else None


@dataclass(slots=True)
class Customer:
    """One customer row with its budget row's limits; ``spend`` is kept fresh by the spend writer."""

    id: str
    blocked: bool
    models: tuple[str, ...]
    spend: float
    max_budget: float | None
    soft_budget: float | None
    scope: LimitScope | None  # its rpm/tpm/parallel limits, None when it has none
    has_budget: bool = True  # False: no budget row of its own (the configured default then applies)

    def check(self, model: str) -> None:
        """Refuse the request (blocked, model not allowed, budget spent) in LiteLLM's terms."""
        if self.blocked:
            raise GatewayError(
                403,
                f"End User={self.id} is blocked. Let admin know, if you believe this is a mistake.",
                type="permission_error",
                code="customer_blocked",
                param="user",
            )
        if self.models and not model_allowed(self.models, model):
            raise GatewayError(
                403,
                f"End User={self.id} may not use model {model!r}; allowed: {', '.join(self.models)}",
                type="permission_error",
                code="model_not_allowed",
                param="model",
            )
        if self.max_budget is not None and self.spend >= self.max_budget:
            raise GatewayError(
                400,
                f"ExceededBudget: End User={self.id} over budget. "
                f"Spend={self.spend}, Budget={self.max_budget}",
                type="budget_exceeded",
                code="budget_exceeded",
            )

    def annotate(self, headers: dict[str, str]) -> None:
        """The soft-budget warning once its spend has reached its row's ``soft_budget``."""
        if (
            self.soft_budget is not None
            and self.spend >= self.soft_budget
            and SOFT_BUDGET_HEADER not in headers
        ):
            headers[SOFT_BUDGET_HEADER] = (
                f"customer={self.id}; spend={self.spend:.6f}; soft_budget={self.soft_budget:.6f}"
            )
            SHARED_SOFT_BUDGET_EXCEEDED.labels("customer").inc()


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _from_row(row: Any) -> Customer:
    limits = (row["rpm_limit"], row["tpm_limit"], row["max_parallel_requests"])
    return Customer(
        id=row["id"],
        blocked=row["blocked"],
        models=tuple(row["models"] or ()),
        spend=float(row["spend"]),
        max_budget=_float(row["max_budget"]),
        soft_budget=_float(row["soft_budget"]),
        scope=None if all(v is None for v in limits) else LimitScope("customer", row["id"], *limits),
        has_budget=row["budget_id"] is not None,
    )


@dataclass(frozen=True, slots=True)
class DefaultBudget:
    """What holds a customer without a budget row of its own, known or not yet seen: LiteLLM's
    ``max_end_user_budget`` (an amount) and ``max_end_user_budget_id`` (a ``budgets`` row, all its
    limits); with both, the stricter budget."""

    max_budget: float | None = None
    budget_id: str | None = None


@dataclass(slots=True)
class _Entry:
    customer: Customer | None  # None: no such customer
    fresh_until: float
    stale_until: float


class CustomerResolver:
    """Cached customer rows for the request path (see the module docstring)."""

    def __init__(
        self,
        pool: GuardedPool,
        *,
        ttl: float = 5.0,
        stale_ttl: float = 300.0,
        max_entries: int = 10_000,
        default: DefaultBudget | None = None,
    ) -> None:
        self._pool = pool
        self._ttl = ttl
        self._stale_ttl = stale_ttl
        self._max_entries = max_entries
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._default = (
            default
            if default is not None and (default.max_budget, default.budget_id) != (None, None)
            else None
        )
        self._default_row: Any = None
        self._default_fresh_until = 0.0
        self._default_missing_logged = False

    async def get(self, customer: str) -> Customer | None:
        entry = self._cache.get(customer)
        now = time.monotonic()
        if entry is None or entry.fresh_until < now:
            try:
                row = await customers_sql.for_request(self._pool, customer)
            except DatabaseUnavailable:
                if entry is not None and now <= entry.stale_until:
                    return entry.customer
                raise DatabaseUnavailable(
                    "The customer store (database) is unreachable and this customer was not seen recently, "
                    "so it cannot be checked now. Retry in a few seconds."
                ) from None
            entry = _Entry(None if row is None else _from_row(row), now + self._ttl, now + self._stale_ttl)
            self._cache[customer] = entry
            self._cache.move_to_end(customer)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        found = entry.customer
        if self._default is None or (found is not None and found.has_budget):
            return found
        return await self._with_default(customer, found)

    async def _with_default(self, name: str, found: Customer | None) -> Customer:
        """``found`` (or a customer not yet in the table) held to the configured default budget."""
        assert self._default is not None
        row = await self._default_budget_row()
        max_budget = self._default.max_budget
        soft_budget = limits = None
        if row is not None:
            row_max = _float(row["max_budget"])
            if row_max is not None:
                max_budget = row_max if max_budget is None else min(max_budget, row_max)
            soft_budget = _float(row["soft_budget"])
            limits = (row["rpm_limit"], row["tpm_limit"], row["max_parallel_requests"])
        scope = (
            None
            if limits is None or all(v is None for v in limits)
            else LimitScope("customer", name, *limits)
        )
        base = found or Customer(name, False, (), 0.0, None, None, None, has_budget=False)
        return replace(base, max_budget=max_budget, soft_budget=soft_budget, scope=scope)

    async def _default_budget_row(self) -> Any:
        """The default ``budgets`` row, re-read every ``ttl`` (kept as last read while the database is
        unreachable); None when none is configured or it does not exist."""
        assert self._default is not None
        if self._default.budget_id is None:
            return None
        now = time.monotonic()
        if self._default_fresh_until < now:
            try:
                self._default_row = await budgets_sql.for_request(self._pool, self._default.budget_id)
            except DatabaseUnavailable:
                pass  # the circuit logs the outage; the last row read still holds
            if self._default_row is None and not self._default_missing_logged:
                log.warning("max_end_user_budget_id %r names no budget row", self._default.budget_id)
            self._default_missing_logged = self._default_row is None
            self._default_fresh_until = now + self._ttl
        return self._default_row

    def invalidate(self, customer: str | None = None) -> None:
        """Forget one customer (or all) in this process, e.g. after an admin write."""
        if customer is None:
            self._cache.clear()
        else:
            self._cache.pop(customer, None)

    def apply_spend(self, kind: str, entity_id: str, spend: float) -> None:
        """The spend writer's (and budget reset's) news: a cached customer's spend now."""
        if kind != "customer":
            return
        entry = self._cache.get(entity_id)
        if entry is None:
            return
        if entry.customer is None:
            del self._cache[entity_id]  # its first charge created it: load the row next time
        else:
            entry.customer.spend = spend


async def admit_customer(
    customers: CustomerResolver, headers: Mapping[bytes, bytes], req: DoorRequest, principal: Principal
) -> tuple[Principal, Customer | None, str | None]:
    """The request's customer checked for ``req.model`` (once the key's alias is applied): the principal
    with the customer's limit scope added, the customer (None when not in the table) and its id."""
    name = customer_id(headers, req.body, req.request.user if req.request is not None else None)
    if name is None:
        return principal, None, None
    customer = await customers.get(name)
    if customer is None:
        return principal, None, name
    customer.check(req.model)
    if customer.scope is not None:
        principal = replace(principal, limits=(*principal.limits, customer.scope))
    return principal, customer, name
