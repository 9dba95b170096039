"""Budget admin bodies, LiteLLM's names and fields (``litellm/proxy/_types.py``)."""

from __future__ import annotations

from pydantic import Field

from gateway.admin.schemas import Duration, Limit, Money, Ref, _Body

MAX_LIST = 1000


class BudgetNewRequest(_Body):
    """LiteLLM's ``BudgetNewRequest`` (``tpd_limit`` and ``model_max_budget`` accepted, not stored)."""

    budget_id: Ref | None = None
    max_budget: Money | None = None
    soft_budget: Money | None = None
    max_parallel_requests: Limit | None = None
    tpm_limit: Limit | None = None
    rpm_limit: Limit | None = None
    budget_duration: Duration | None = None


class BudgetRequest(_Body):
    budgets: list[Ref] = Field(max_length=MAX_LIST)


class BudgetDeleteRequest(_Body):
    id: Ref
