"""Customer admin bodies, LiteLLM's names and fields (``NewCustomerRequest``, ``UpdateCustomerRequest``,
``DeleteCustomerRequest``, ``BlockUsers`` in ``litellm/proxy/_types.py``).

The budget fields (``max_budget``, ``soft_budget``, ``budget_duration``, rpm/tpm, parallel) describe the
customer's own ``budgets`` row, as LiteLLM's do; ``budget_id`` points at an existing one instead, so
giving both is refused (LiteLLM refuses ``max_budget`` with ``budget_id``). ``object_permission`` and
``tpd_limit`` are accepted and ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.admin.schemas import Duration, Limit, ModelName, Money, Ref, _Body

MAX_LIST = 1000
BUDGET_FIELDS = (
    "max_budget",
    "soft_budget",
    "budget_duration",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
)


class CustomerFields(_Body):
    alias: Ref | None = None
    blocked: bool = False
    budget_id: Ref | None = None
    allowed_model_region: Literal["eu", "us"] | None = None
    default_model: ModelName | None = None
    models: list[ModelName] = Field(default_factory=list, max_length=1000)
    max_budget: Money | None = None
    soft_budget: Money | None = None
    budget_duration: Duration | None = None
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None

    @model_validator(mode="after")
    def _one_budget(self) -> CustomerFields:
        given = [f for f in BUDGET_FIELDS if f in self.model_fields_set]
        if self.budget_id is not None and given:
            raise ValueError(f"Set either 'budget_id' or the budget's fields ({', '.join(given)}), not both.")
        return self


class CustomerNewRequest(CustomerFields):
    user_id: Ref
    spend: Money | None = None


class CustomerUpdateRequest(CustomerFields):
    user_id: Ref


class CustomerDeleteRequest(_Body):
    user_ids: list[Ref] = Field(min_length=1, max_length=MAX_LIST)


class CustomerBlockRequest(_Body):
    user_ids: list[Ref] = Field(min_length=1, max_length=MAX_LIST)
