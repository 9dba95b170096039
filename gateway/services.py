"""The ONE place that decides which implementation each request-path stage uses.

``build_services(config)`` runs once in the app lifespan and returns ``Services``; the request
path only ever talks to the protocols in ``gateway.pipeline`` through it. Teams plug in real
stages by editing this builder only (look for the marked slots): the control plane (virtual
keys, spend), limits and cache (Redis-backed limiter and response cache), the router.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway import tracing
from gateway.auth import Authenticator, ChainKeyResolver, MasterKeyResolver
from gateway.config import GatewayConfig
from gateway.engine_metrics import watch_engines
from gateway.live_metrics import start_publishing
from gateway.null_stages import NullLimiter
from gateway.pipeline import KeyResolver, Limiter, SpendSink
from gateway.routing.deployment import deployments_from_entries
from gateway.routing.router import Router

if TYPE_CHECKING:
    from gateway.cache import ResponseCacheService
from providers.http import aclose_shared_client
from providers.registry import ProviderRegistry

log = logging.getLogger("switchyard.services")

Closer = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class Services:
    """Everything the request path needs, built from the config."""

    config: GatewayConfig
    providers: ProviderRegistry
    router: Router
    auth: Authenticator
    limiter: Limiter
    spend: SpendSink
    redis: Any = None
    # Run in reverse order at shutdown.
    closers: list[Closer] = field(default_factory=list)
    # Free-form slots for components that need to share objects (e.g. the db pool for the admin API).
    extras: dict[str, Any] = field(default_factory=dict)
    # The response cache with the full request-path API (plan, lookup, store, stream replay).
    response_cache: ResponseCacheService | None = None
    # Customers (LiteLLM's end users) named by requests: ``gateway.keys.customers.CustomerResolver``.
    customers: Any = None
    # Read once: the config's property recomputes it through pydantic on every request.
    max_body_bytes: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.max_body_bytes = self.config.max_request_body_bytes

    async def aclose(self) -> None:
        for closer in reversed(self.closers):
            try:
                await closer()
            except Exception:
                log.exception("error while shutting down %r", closer)
        self.closers.clear()


async def build_services(config: GatewayConfig) -> Services:
    """Build every stage from the config. Each ``# SLOT`` is where a team plugs in."""
    closers: list[Closer] = [aclose_shared_client]
    providers = ProviderRegistry.default()
    closers.append(providers.aclose)
    if tracing.tracer is not None:
        from gateway.traced_provider import instrument

        instrument(providers)  # each upstream attempt a span (gateway.tracing)
    watch_engines(providers)  # the local engines' numbers on /metrics
    publishing = start_publishing()  # scrape-time metrics under serve --workers N
    if publishing is not None:
        closers.append(publishing)

    # SLOT (limits & cache): the shared Redis pool when general_settings.redis_url is set.
    redis: Any = None
    gs = config.general_settings
    if gs.redis_url:
        from gateway.redis_pool import close_pools, get_pool

        redis = get_pool(
            gs.redis_url,
            failure_mode=gs.redis_failure_mode,
            socket_timeout=gs.redis_timeout_s,
            connect_timeout=gs.redis_timeout_s,
        )
        closers.append(close_pools)

    # SLOT (router): the router over every deployment.
    deployments = deployments_from_entries(config.model_list, config.router_settings.timeout or 600.0)
    router = Router(deployments, config.router_settings, providers, redis)

    # SLOT (control plane): append the virtual-key resolver when a database is configured.
    # The database is always there (DATABASE_URL, else an embedded server under data_dir); virtual
    # keys are only required once a master key is set (no master key = local mode).
    from gateway.db.control_plane import ControlPlane

    control_plane = await ControlPlane.open(config)
    closers.append(control_plane.close)
    # SLOT (control plane): the models stored through /model/new, served beside the config's.
    from gateway.admin.model_sync import start_model_sync

    model_sync = await start_model_sync(config, control_plane, router)
    closers.append(model_sync.close)
    # SLOT (router): engine replicas on Ray clusters (`model: ray/<app>` entries), learned from the
    # cluster at run time; after the stored models, so model_sync's snapshot of the config's
    # deployments holds no replica.
    if config.ray_engines:
        from gateway.routing.ray_discovery import start_ray_discovery

        discovery = await start_ray_discovery(
            config.ray_engines, router, config.router_settings.timeout or 600.0
        )
        closers.append(discovery.close)
    resolvers: list[KeyResolver] = []
    if config.general_settings.master_key:
        resolvers.append(MasterKeyResolver(config.general_settings.master_key))
        resolvers.append(control_plane.resolver)
    auth = Authenticator(ChainKeyResolver(resolvers) if resolvers else None)

    # SLOT (limits): a real limiter (key/team/model/global scopes from limit_settings).
    from gateway.limits import build_limiter

    limiter: Limiter = NullLimiter()
    if config.limit_settings.enabled:
        real_limiter = build_limiter(config.limit_settings, redis)
        closers.append(real_limiter.close)
        limiter = real_limiter

    # SLOT (cache): the response cache (Redis when redis_url is set, else in-process; an LRU in front).
    # The chat route drives it through ``response_cache`` (plan/lookup/store, streams included).
    from gateway.cache import build_cache

    response_cache = build_cache(config.cache_settings, redis) if config.cache_settings.enabled else None
    if response_cache is not None:
        closers.append(response_cache.close)

    # SLOT (control plane): the batching Postgres spend writer (flushed by control_plane.close).
    spend: SpendSink = control_plane.sink

    return Services(
        config=config,
        providers=providers,
        router=router,
        auth=auth,
        limiter=limiter,
        spend=spend,
        redis=redis,
        closers=closers,
        response_cache=response_cache,
        customers=control_plane.customers,
        extras={"control_plane": control_plane, "model_sync": model_sync},
    )
