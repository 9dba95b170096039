"""A virtual key's per-request rules from LiteLLM's key fields: ``aliases``, ``model_max_budget``,
``soft_budget`` and ``tags``.

The resolver builds one ``KeyPolicy`` per loaded key that sets any of them (keys that set none carry
no policy, so the request path pays nothing) and hangs it on the ``Principal``. The conductor asks it,
once the door has read the body, which model serves the request (``serve``: the alias target, after
refusing a model whose budget on this key is spent), which headers the answer carries
(``annotate``), and what the spend row records (``spend_metadata``).

Spend figures are live in this process: the key's total is the resolver's shared ``BudgetState``
(updated after each spend batch commits), and a key with model budgets is reloaded after each batch
that charged it, so its per-model spend (summed from ``daily_spend``) is never older than one batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from prometheus_client import Counter

from gateway.errors import GatewayError
from gateway.keys.durations import parse_duration

log = logging.getLogger(__name__)

SOFT_BUDGET_HEADER = "x-switchyard-soft-budget-exceeded"

SOFT_BUDGET_EXCEEDED = Counter(
    "switchyard_key_soft_budget_exceeded_total",
    "Requests served to a virtual key whose spend has reached its soft_budget (a warning: they are "
    "served). Each key's crossing is also logged once per process.",
)
SHARED_SOFT_BUDGET_EXCEEDED = Counter(
    "switchyard_soft_budget_exceeded_total",
    "Requests served while a soft_budget other than the key's own had been reached: its team's, "
    "organization's or user's budget row, or its customer's (a warning: they are served).",
    ["kind"],
)
# Keys whose crossing has been logged (a policy is rebuilt on each reload of its key).
_warned: set[str] = set()


@dataclass(frozen=True, slots=True)
class SharedSoftBudget:
    """The soft budget of a budget row linked to the key's team, organization or user; ``state`` is the
    resolver's live ``BudgetState`` of that entity."""

    kind: str
    state: Any
    soft_budget: float

    def exceeded(self) -> bool:
        return self.state.spend >= self.soft_budget


@dataclass(frozen=True, slots=True)
class ModelBudget:
    """One entry of ``model_max_budget``; ``period`` None: counted over the key's whole life."""

    max_budget: float
    period: timedelta | None = None

    def window_start(self, now: datetime) -> datetime | None:
        return None if self.period is None else now - self.period


def parse_model_budgets(raw: Mapping[str, Any]) -> dict[str, ModelBudget]:
    """``model_max_budget`` as stored: LiteLLM's ``{"m": 5.0}`` or ``{"m": {"budget_limit": 5.0,
    "time_period": "30d"}}`` (also spelled ``max_budget`` / ``budget_duration``)."""
    budgets: dict[str, ModelBudget] = {}
    for model, value in raw.items():
        if isinstance(value, Mapping):
            limit = value.get("budget_limit", value.get("max_budget"))
            period = value.get("time_period", value.get("budget_duration"))
            if limit is None:
                continue  # only rpm/tpm given: not a budget
            budgets[model] = ModelBudget(float(limit), parse_duration(period) if period else None)
        else:
            budgets[model] = ModelBudget(float(value))
    return budgets


def windowed_spend(
    rows: Iterable[tuple[str, date, float]], budgets: Mapping[str, ModelBudget], now: datetime
) -> dict[str, float]:
    """Each budgeted model's spend within its budget's window, from (model, UTC day, spend) rows: a
    window counts whole days, from the day it opened."""
    spend = dict.fromkeys(budgets, 0.0)
    for model, day, amount in rows:
        budget = budgets.get(model)
        if budget is None:
            continue
        start = budget.window_start(now)
        if start is None or day >= start.date():
            spend[model] += amount
    return spend


@dataclass(slots=True)
class KeyPolicy:
    """The rules of one loaded key (see the module docstring); shared by its concurrent requests."""

    key_hash: str
    key_alias: str | None
    aliases: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    model_budgets: dict[str, ModelBudget] = field(default_factory=dict)
    model_spend: dict[str, float] = field(default_factory=dict)  # within each budget's window
    soft_budget: float | None = None
    key_budget: Any = None  # the resolver's BudgetState of this key: ``.spend`` is kept fresh
    shared_soft: tuple[SharedSoftBudget, ...] = ()

    def serve(self, model: str) -> str:
        """The model that serves a request for ``model``; a 400 when its budget here is spent."""
        target = self.aliases.get(model, model)
        budget = self.model_budgets.get(target)
        if budget is not None:
            spent = self.model_spend.get(target, 0.0)
            if spent >= budget.max_budget:
                # LiteLLM's status and type for a spent budget (its message names key and model).
                raise GatewayError(
                    400,
                    f"Budget has been exceeded for model={target}! Key spend on it: {spent:.6f}, "
                    f"max budget: {budget.max_budget:.6f}",
                    type="budget_exceeded",
                    code="budget_exceeded",
                    param="model",
                )
        return target

    def soft_budget_exceeded(self) -> bool:
        return (
            self.soft_budget is not None
            and self.key_budget is not None
            and self.key_budget.spend >= self.soft_budget
        )

    def annotate(self, headers: dict[str, str]) -> None:
        """Add the soft-budget warning to an answer's headers once the key's spend has reached it (else
        once its team's, organization's or user's has reached that budget row's)."""
        if not self.soft_budget_exceeded():
            for shared in self.shared_soft:
                if shared.exceeded():
                    headers[SOFT_BUDGET_HEADER] = (
                        f"{shared.kind}; spend={shared.state.spend:.6f}; soft_budget={shared.soft_budget:.6f}"
                    )
                    SHARED_SOFT_BUDGET_EXCEEDED.labels(shared.kind).inc()
                    return
            return
        spend = self.key_budget.spend
        headers[SOFT_BUDGET_HEADER] = f"spend={spend:.6f}; soft_budget={self.soft_budget:.6f}"
        SOFT_BUDGET_EXCEEDED.inc()
        if self.key_hash not in _warned:
            if len(_warned) >= 100_000:
                _warned.clear()  # bounded; at worst a key is warned about again
            _warned.add(self.key_hash)
            log.warning(
                "key %s (alias %r) crossed its soft budget: spend %.6f >= soft_budget %.6f",
                self.key_hash[:16],
                self.key_alias,
                spend,
                self.soft_budget,
            )

    def spend_metadata(self) -> dict[str, Any]:
        """What the spend row's ``metadata`` records for this key (its tags, for spend by tag)."""
        return {"tags": list(self.tags)} if self.tags else {}
