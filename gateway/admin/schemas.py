"""Request bodies of the admin API (LiteLLM's field names), validated at the edge.

Fields LiteLLM accepts that we do not use (``allowed_cache_controls``, ``guardrails``, ``key_type``...)
are accepted and ignored so existing scripts keep working. Keys take LiteLLM's ``aliases``,
``model_max_budget``, ``soft_budget`` and ``tags`` (enforced per request: ``gateway.keys.policy``), and
``permissions`` and ``config`` (stored and returned).

``null`` means "no value" only where the column may be empty (limits, budgets, aliases, ``team_id``,
``user_id``, ``duration``...): it clears it. For the fields stored in NOT NULL columns (``NOT_NULL``)
it is a 400 naming the field; omitting a field is how to leave it unchanged.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.keys.durations import parse_duration

MAX_METADATA_BYTES = 16 * 1024

# Aliases and ids: a letter or digit first, then a conservative set (LiteLLM's key alias rule). No ":"
# because limit scopes name per-model limits "<team or user id>:<model>".
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@/ \-]{0,127}$"
Name = Annotated[str, Field(pattern=_NAME)]
# Budgets and spend are stored as DECIMAL(24, 12): at most 12 integer digits.
MAX_MONEY = 1e12 - 1
Money = Annotated[float, Field(ge=0, le=MAX_MONEY, allow_inf_nan=False)]
# Limits are stored in INTEGER (int4) columns; anything larger would fail in the database, not here.
MAX_INT4 = 2**31 - 1
Limit = Annotated[int, Field(ge=0, le=MAX_INT4)]
ModelName = Annotated[str, Field(min_length=1, max_length=256)]
# Free-form references (keys, hashes, e-mail addresses, durations): bounded so nothing unbounded reaches SQL.
Ref = Annotated[str, Field(min_length=1, max_length=512)]
Duration = Annotated[str, Field(max_length=32)]
UserRole = Literal["proxy_admin", "proxy_admin_viewer", "internal_user", "internal_user_viewer"]

# Fields stored in NOT NULL columns: null is refused rather than guessed at (for ``models`` a guess of
# "empty" would mean "every model").
NOT_NULL = (
    "blocked",
    "models",
    "metadata",
    "model_rpm_limit",
    "model_tpm_limit",
    "spend",
    "user_role",
    "aliases",
    "model_max_budget",
    "permissions",
    "config",
)


def _text_problem(value: Any) -> str | None:
    """Why Postgres would refuse ``value`` (anywhere inside it), or None.

    ``text`` and ``jsonb`` cannot hold NUL, lone surrogates cannot be encoded as UTF-8, and ``jsonb``
    has no NaN or infinity; each would otherwise surface as a database error (a 500) after validation.
    """
    if isinstance(value, str):
        if "\x00" in value:
            return "must not contain NUL characters"
        try:
            value.encode()
        except UnicodeEncodeError:
            return "must be valid Unicode (no lone surrogates)"
        return None
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return "must not contain NaN or infinity"
    if isinstance(value, dict):
        for k, v in value.items():
            problem = _text_problem(k) or _text_problem(v)
            if problem:
                return problem
    elif isinstance(value, list):
        for v in value:
            problem = _text_problem(v)
            if problem:
                return problem
    return None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        problem = _text_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator(*NOT_NULL, mode="before", check_fields=False)
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null (omit the field to leave it unchanged)")
        return value

    @field_validator(
        "metadata",
        "model_rpm_limit",
        "model_tpm_limit",
        "aliases",
        "model_max_budget",
        "permissions",
        "config",
        check_fields=False,
    )
    @classmethod
    def _small_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, default=str)) > MAX_METADATA_BYTES:
            raise ValueError(f"too large (at most {MAX_METADATA_BYTES} bytes of JSON)")
        return value

    @field_validator("budget_duration", "duration", check_fields=False)
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value in (None, "", "permanent"):
            return None  # LiteLLM's spelling of "never"
        parse_duration(value)
        return value


class ModelBudgetEntry(_Body):
    """One model's budget in LiteLLM's long form (``budget_limit``/``time_period``, or
    ``max_budget``/``budget_duration``); ``tpm_limit``/``rpm_limit`` are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    budget_limit: Money = Field(validation_alias=AliasChoices("budget_limit", "max_budget"))
    time_period: Duration | None = Field(
        default=None, validation_alias=AliasChoices("time_period", "budget_duration")
    )

    @field_validator("time_period")
    @classmethod
    def _period(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


Tag = Annotated[str, Field(min_length=1, max_length=128)]


class KeyFields(_Body):
    key_alias: Name | None = None
    team_id: Name | None = None
    user_id: Name | None = None
    models: list[ModelName] = Field(default_factory=list)
    max_budget: Money | None = None
    budget_duration: Duration | None = None
    duration: Duration | None = None
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None
    model_rpm_limit: dict[ModelName, Limit] = Field(default_factory=dict)
    model_tpm_limit: dict[ModelName, Limit] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    blocked: bool = False
    spend: Money = 0.0
    # A request for an alias is served by its target (access is checked on the target, as LiteLLM does).
    aliases: dict[ModelName, ModelName] = Field(default_factory=dict)
    # Kept in ``metadata.tags`` (where LiteLLM keeps them); null clears them.
    tags: list[Tag] | None = Field(default=None, max_length=64)
    model_max_budget: dict[ModelName, Money | ModelBudgetEntry] = Field(default_factory=dict)
    soft_budget: Money | None = None
    permissions: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    # A budgets row (``/budget/new``) whose limits hold the key as well as its own.
    budget_id: Ref | None = None


class GenerateKeyRequest(KeyFields):
    key: str | None = Field(default=None, pattern=r"^sk-[A-Za-z0-9_\-]{16,256}$")


class UpdateKeyRequest(KeyFields):
    key: Ref


class KeyRef(_Body):
    key: Ref


class DeleteKeysRequest(_Body):
    keys: list[Ref] | None = None
    key_aliases: list[Ref] | None = None

    @model_validator(mode="after")
    def _something(self) -> DeleteKeysRequest:
        if not self.keys and not self.key_aliases:
            raise ValueError("give keys or key_aliases")
        return self


class RegenerateKeyRequest(KeyFields):
    key: Ref
    new_key: str | None = Field(default=None, pattern=r"^sk-[A-Za-z0-9_\-]{16,256}$")


class Member(_Body):
    role: Literal["admin", "user"] = "user"
    user_id: Name | None = None
    user_email: Annotated[str, Field(max_length=256, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None

    @model_validator(mode="after")
    def _someone(self) -> Member:
        if self.user_id is None and self.user_email is None:
            raise ValueError("give user_id or user_email")
        return self


class TeamFields(_Body):
    team_alias: Name | None = None
    models: list[ModelName] = Field(default_factory=list)
    max_budget: Money | None = None
    budget_duration: Duration | None = None
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None
    model_rpm_limit: dict[ModelName, Limit] = Field(default_factory=dict)
    model_tpm_limit: dict[ModelName, Limit] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    blocked: bool = False
    budget_id: Ref | None = None
    organization_id: Ref | None = None


class NewTeamRequest(TeamFields):
    team_id: Name | None = None
    members_with_roles: list[Member] = Field(default_factory=list)


class UpdateTeamRequest(TeamFields):
    team_id: Name


class TeamRef(_Body):
    team_id: Name


class DeleteTeamsRequest(_Body):
    team_ids: list[Ref] = Field(min_length=1)


class TeamMemberAddRequest(_Body):
    team_id: Name
    member: Member | list[Member]


class TeamMemberDeleteRequest(_Body):
    team_id: Name
    user_id: Name | None = None
    user_email: Ref | None = None

    @model_validator(mode="after")
    def _someone(self) -> TeamMemberDeleteRequest:
        if self.user_id is None and self.user_email is None:
            raise ValueError("give user_id or user_email")
        return self


class UserFields(_Body):
    user_email: Annotated[str, Field(max_length=256, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    user_alias: Name | None = None
    user_role: UserRole = "internal_user"
    models: list[ModelName] = Field(default_factory=list)
    max_budget: Money | None = None
    budget_duration: Duration | None = None
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    blocked: bool = False
    budget_id: Ref | None = None


class NewUserRequest(UserFields):
    user_id: Name | None = None
    teams: list[Name] | None = None
    auto_create_key: bool = True
    key_alias: Name | None = None


class UpdateUserRequest(UserFields):
    user_id: Name | None = None
    spend: Money = 0.0

    @model_validator(mode="after")
    def _someone(self) -> UpdateUserRequest:
        if self.user_id is None and self.user_email is None:
            raise ValueError("give user_id or user_email")
        return self


class DeleteUsersRequest(_Body):
    user_ids: list[Ref] = Field(min_length=1)
