"""Gateway-wide limit defaults (config ``limit_settings``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ScopeLimits(BaseModel):
    """RPM / TPM / parallel-request limits for one scope; ``None`` means unlimited."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_parallel_requests: int | None = Field(default=None, ge=1)


class LimitSettings(BaseModel):
    """``limit_settings`` in the gateway config.

    ``rpm``/``tpm``/``max_parallel_requests`` cap the whole gateway (all callers together);
    ``key_*`` are the defaults for every caller key whose control-plane record sets none;
    ``model_limits`` caps each model gateway-wide. Per-key, per-team, per-user and per-model
    within a key or team limits come from the control plane (``Principal.limits``).
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_parallel_requests: int | None = Field(default=None, ge=1)
    key_rpm: int | None = Field(default=None, ge=1)
    key_tpm: int | None = Field(default=None, ge=1)
    key_max_parallel_requests: int | None = Field(default=None, ge=1)
    model_limits: dict[str, ScopeLimits] = Field(default_factory=dict)
    # The sliding window (seconds); RPM/TPM mean "per window", 60 s unless you change it.
    window_seconds: int = Field(default=60, ge=1, le=3600)
    # A parallel-request slot held by a process that died is freed after this long; live
    # holders renew their leases every third of it.
    lease_ttl_seconds: float = Field(default=120.0, gt=0)
    # Redis keys start with this (lets several gateways or test runs share one Redis).
    key_prefix: str = "sy"
    # Behind Redis Cluster (or a cluster proxy): one script call per scope, since a script may
    # only touch one slot (see gateway.limits.redis_limiter). Off: one call for all scopes.
    redis_cluster: bool = False
    # redis_failure_mode divide: each instance heartbeats into Redis this often; an instance
    # silent for 3 intervals no longer counts (see gateway.limits.instances).
    instance_heartbeat_seconds: float = Field(default=2.0, gt=0, le=60)
