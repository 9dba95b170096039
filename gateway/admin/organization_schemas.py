"""Organization admin bodies, LiteLLM's names and fields (``NewOrganizationRequest``,
``LiteLLM_OrganizationTableUpdate``, ``DeleteOrganizationRequest``, ``OrganizationRequest``,
``OrganizationMemberAddRequest``, ``OrganizationMemberUpdateRequest``, ``OrganizationMemberDeleteRequest``).

The budget fields describe the organization's own ``budgets`` row (every organization has one, as in
LiteLLM); ``budget_id`` points at an existing row instead, so giving both is refused.
``model_rpm_limit``, ``model_tpm_limit``, ``object_permission`` and ``max_budget_in_organization`` are
accepted and ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gateway.admin.customer_schemas import BUDGET_FIELDS
from gateway.admin.schemas import Duration, Limit, ModelName, Money, Name, Ref, _Body

MAX_LIST = 1000
OrgRole = Literal["org_admin", "internal_user", "internal_user_viewer"]


class OrganizationFields(_Body):
    organization_alias: Ref | None = None
    models: list[ModelName] = Field(default_factory=list, max_length=1000)
    budget_id: Ref | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    max_budget: Money | None = None
    soft_budget: Money | None = None
    budget_duration: Duration | None = None
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None

    @field_validator("organization_alias", mode="before")
    @classmethod
    def _alias_kept(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be cleared; it is required")
        return value

    @model_validator(mode="after")
    def _one_budget(self) -> OrganizationFields:
        given = [f for f in BUDGET_FIELDS if f in self.model_fields_set]
        if self.budget_id is not None and given:
            raise ValueError(f"Set either 'budget_id' or the budget's fields ({', '.join(given)}), not both.")
        return self


class OrganizationNewRequest(OrganizationFields):
    organization_id: Name | None = None
    organization_alias: Ref


class OrganizationUpdateRequest(OrganizationFields):
    organization_id: Ref

    @model_validator(mode="before")
    @classmethod
    def _flatten_budget(cls, data: Any) -> Any:
        """LiteLLM's UI sends the budget nested as ``litellm_budget_table``; its budget fields count as
        if sent at the top level (and win there), as LiteLLM's update reads them."""
        if isinstance(data, dict) and isinstance(data.get("litellm_budget_table"), dict):
            nested = data["litellm_budget_table"]
            data = {k: v for k, v in data.items() if k != "litellm_budget_table"}
            data.update({k: v for k, v in nested.items() if k in BUDGET_FIELDS})
        return data


class OrganizationDeleteRequest(_Body):
    organization_ids: list[Ref] = Field(min_length=1, max_length=MAX_LIST)


class OrganizationInfoRequest(_Body):
    organizations: list[Ref] = Field(min_length=1, max_length=MAX_LIST)


_EMAIL = r"^[^@\s]+@[^@\s]+$"


class OrgMember(_Body):
    role: OrgRole
    user_id: Name | None = None
    user_email: Ref | None = Field(default=None, pattern=_EMAIL)

    @model_validator(mode="after")
    def _someone(self) -> OrgMember:
        if self.user_id is None and self.user_email is None:
            raise ValueError("give user_id or user_email")
        return self


class OrganizationMemberAddRequest(_Body):
    organization_id: Ref
    member: OrgMember | list[OrgMember]


class OrganizationMemberRef(_Body):
    organization_id: Ref
    user_id: Name | None = None
    user_email: Ref | None = Field(default=None, pattern=_EMAIL)

    @model_validator(mode="after")
    def _someone(self) -> OrganizationMemberRef:
        if self.user_id is None and self.user_email is None:
            raise ValueError("give user_id or user_email")
        return self


class OrganizationMemberUpdateRequest(OrganizationMemberRef):
    role: OrgRole | None = None  # None: unchanged (LiteLLM also takes max_budget_in_organization)
