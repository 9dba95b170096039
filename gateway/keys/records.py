"""Typed rows of the control plane (dataclasses), and their LiteLLM-shaped API views."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(slots=True)
class TeamRecord:
    id: str
    alias: str | None
    models: list[str]
    max_budget: Decimal | None
    spend: Decimal
    budget_duration: str | None
    budget_reset_at: datetime | None
    rpm_limit: int | None
    tpm_limit: int | None
    max_parallel_requests: int | None
    model_rpm_limit: dict[str, int]
    model_tpm_limit: dict[str, int]
    blocked: bool
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    budget_id: str | None
    organization_id: str | None

    COLUMNS = (
        "id, alias, models, max_budget, spend, budget_duration, budget_reset_at, rpm_limit, tpm_limit, "
        "max_parallel_requests, model_rpm_limit, model_tpm_limit, blocked, metadata, created_at, updated_at, "
        "budget_id, organization_id"
    )

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> TeamRecord:
        values = dict(row)
        values["models"] = list(values["models"] or [])
        return cls(**values)

    def to_api(self) -> dict[str, Any]:
        return {
            "team_id": self.id,
            "team_alias": self.alias,
            "models": self.models,
            "max_budget": _money(self.max_budget),
            "spend": float(self.spend),
            "budget_duration": self.budget_duration,
            "budget_reset_at": _iso(self.budget_reset_at),
            "rpm_limit": self.rpm_limit,
            "tpm_limit": self.tpm_limit,
            "max_parallel_requests": self.max_parallel_requests,
            "model_rpm_limit": self.model_rpm_limit,
            "model_tpm_limit": self.model_tpm_limit,
            "blocked": self.blocked,
            "metadata": self.metadata,
            "budget_id": self.budget_id,
            "organization_id": self.organization_id,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


@dataclass(slots=True)
class UserRecord:
    id: str
    email: str | None
    alias: str | None
    role: str
    models: list[str]
    max_budget: Decimal | None
    spend: Decimal
    budget_duration: str | None
    budget_reset_at: datetime | None
    rpm_limit: int | None
    tpm_limit: int | None
    max_parallel_requests: int | None
    blocked: bool
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    budget_id: str | None

    COLUMNS = (
        "id, email, alias, role, models, max_budget, spend, budget_duration, budget_reset_at, rpm_limit, "
        "tpm_limit, max_parallel_requests, blocked, metadata, created_at, updated_at, budget_id"
    )

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> UserRecord:
        values = dict(row)
        values["models"] = list(values["models"] or [])
        return cls(**values)

    def to_api(self) -> dict[str, Any]:
        return {
            "user_id": self.id,
            "user_email": self.email,
            "user_alias": self.alias,
            "user_role": self.role,
            "models": self.models,
            "max_budget": _money(self.max_budget),
            "spend": float(self.spend),
            "budget_duration": self.budget_duration,
            "budget_reset_at": _iso(self.budget_reset_at),
            "rpm_limit": self.rpm_limit,
            "tpm_limit": self.tpm_limit,
            "max_parallel_requests": self.max_parallel_requests,
            "blocked": self.blocked,
            "metadata": self.metadata,
            "budget_id": self.budget_id,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


@dataclass(slots=True)
class MembershipRecord:
    team_id: str
    user_id: str
    role: str

    def to_api(self) -> dict[str, Any]:
        return {"team_id": self.team_id, "user_id": self.user_id, "role": self.role}


@dataclass(slots=True)
class KeyRecord:
    token_hash: str
    key_name: str
    key_alias: str | None
    team_id: str | None
    user_id: str | None
    models: list[str]
    max_budget: Decimal | None
    spend: Decimal
    budget_duration: str | None
    budget_reset_at: datetime | None
    rpm_limit: int | None
    tpm_limit: int | None
    max_parallel_requests: int | None
    model_rpm_limit: dict[str, int]
    model_tpm_limit: dict[str, int]
    expires: datetime | None
    blocked: bool
    metadata: dict[str, Any]
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    aliases: dict[str, str]
    model_max_budget: dict[str, Any]
    soft_budget: Decimal | None
    permissions: dict[str, Any]
    config: dict[str, Any]
    budget_id: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    COLUMNS = (
        "token_hash, key_name, key_alias, team_id, user_id, models, max_budget, spend, budget_duration, "
        "budget_reset_at, rpm_limit, tpm_limit, max_parallel_requests, model_rpm_limit, model_tpm_limit, "
        "expires, blocked, metadata, created_by, created_at, updated_at, aliases, model_max_budget, "
        "soft_budget, permissions, config, budget_id"
    )

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> KeyRecord:
        values = dict(row)
        values["models"] = list(values["models"] or [])
        return cls(**values)

    def to_api(self) -> dict[str, Any]:
        """LiteLLM's key info shape; ``token`` is the hash, the key itself is never stored."""
        return {
            "token": self.token_hash,
            "key_name": self.key_name,
            "key_alias": self.key_alias,
            "team_id": self.team_id,
            "user_id": self.user_id,
            "models": self.models,
            "max_budget": _money(self.max_budget),
            "spend": float(self.spend),
            "budget_duration": self.budget_duration,
            "budget_reset_at": _iso(self.budget_reset_at),
            "rpm_limit": self.rpm_limit,
            "tpm_limit": self.tpm_limit,
            "max_parallel_requests": self.max_parallel_requests,
            "model_rpm_limit": self.model_rpm_limit,
            "model_tpm_limit": self.model_tpm_limit,
            "expires": _iso(self.expires),
            "blocked": self.blocked,
            "metadata": self.metadata,
            "created_by": self.created_by,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "aliases": self.aliases,
            "tags": self.metadata.get("tags"),
            "model_max_budget": self.model_max_budget,
            "soft_budget": _money(self.soft_budget),
            "permissions": self.permissions,
            "config": self.config,
            "budget_id": self.budget_id,
        }

    def status(self, now: datetime) -> str:
        """LiteLLM's key status: "revoked" when blocked, "expired" past ``expires``, else "active"."""
        if self.blocked:
            return "revoked"
        return "expired" if self.expires is not None and self.expires <= now else "active"


@dataclass(frozen=True, slots=True)
class KeyStanding:
    """What decides a key's rights besides the key row: its user's role and membership, and blocks."""

    user_role: str | None  # None: the key has no user (or the user was deleted)
    member_role: str | None  # the user's role in the key's team, None when not a member
    user_blocked: bool
    team_blocked: bool
