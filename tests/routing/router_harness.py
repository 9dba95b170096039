"""Builds a real Router (real config parsing, real OpenAI-compatible adapter over loopback HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.pipeline import Principal
from gateway.routing.deployment import deployments_from_entries
from gateway.routing.router import Router
from providers.http import build_client
from providers.openai_compat import OpenAICompatProvider
from providers.registry import ProviderRegistry
from tests.support.misbehaving_upstream import MisbehavingUpstream


def entry(
    model_name: str, up: MisbehavingUpstream, dep_id: str | None = None, **params: Any
) -> dict[str, Any]:
    """A ``model_list`` entry pointing at a misbehaving upstream."""
    e: dict[str, Any] = {
        "model_name": model_name,
        "params": {
            "model": f"openai/{up.name}",
            "api_base": up.url,
            "api_key": "sk-upstream-secret",
            **params,
        },
    }
    e["model_info"] = {"id": dep_id or up.name}
    return e


@asynccontextmanager
async def router_for(
    model_list: list[dict[str, Any]], redis: Any = None, **router_settings: Any
) -> AsyncIterator[Router]:
    config = GatewayConfig.model_validate({"model_list": model_list, "router_settings": router_settings})
    client = build_client()
    registry = ProviderRegistry()
    registry.register_instance("openai", OpenAICompatProvider(client))
    deps = deployments_from_entries(config.model_list, config.router_settings.timeout or 600.0)
    try:
        yield Router(deps, config.router_settings, registry, redis)
    finally:
        await client.aclose()


def ctx() -> RequestContext:
    return RequestContext(request_id="req-test", principal=Principal(kind="anonymous"))


BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
