"""``GET /health``: probe every deployment now and report which answer.

Each deployment gets one tiny request, all concurrently, under a short timeout: ``GET
{api_base}/models`` for OpenAI-compatible upstreams (free, no tokens), a 1-token completion for
the others (e.g. the local engine). The answer has LiteLLM's shape (``healthy_endpoints``,
``unhealthy_endpoints``, counts) and never carries a key: endpoints are described by model
name, provider model, api_base (without any password in it) and deployment id, and error
text is scrubbed of every configured secret.
A wildcard deployment (``model: anthropic/*``) has no model of its own to ask for: the full probe
checks it where no model is needed (an OpenAI-compatible ``/models``) and otherwise lists it under
``skipped_endpoints``; ``?model=<a name it serves>`` probes it with that name as its model.
Deployments that start disabled (their provider is not available: ``GatewayConfig.disabled``)
are listed as unhealthy, with the reason, and never probed.
When the gateway requires keys, only the master key (an admin) may call it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import request_token
from gateway.errors import GatewayError, as_gateway_error
from gateway.routing.wildcards import WILDCARD
from providers.errors import ProviderError
from providers.http import shared_client
from providers.redaction import call_scrubber, scrub
from providers.registry import OPENAI_COMPATIBLE_PROVIDERS

if TYPE_CHECKING:
    from gateway.config import DisabledDeployment
    from gateway.routing.deployment import Deployment
    from gateway.routing.router import Router

DEFAULT_PROBE_TIMEOUT_S = 5.0
MAX_PROBE_TIMEOUT_S = 30.0
_MAX_ERROR_CHARS = 300


def _describe(dep: Deployment) -> dict[str, Any]:
    return {
        "model_name": dep.model_name,
        "model": dep.provider_model,
        "api_base": dep.api_base and _clean(dep.api_base, dep),
        "id": dep.id,
    }


def _clean(text: str, dep: Deployment) -> str:
    # The deployment's own credentials (what the probed upstream was sent, in every form it
    # may echo, an api_base's password included), then every other configured secret.
    return scrub(call_scrubber(dep.api_key, dep.params)(text))


def _scrub(message: str, dep: Deployment) -> str:
    return _clean(message, dep)[:_MAX_ERROR_CHARS]  # scrubbed before the cut to length


async def _probe_openai(dep: Deployment, limit_s: float) -> None:
    url = (dep.api_base or "https://api.openai.com/v1").rstrip("/") + "/models"
    headers = {"accept": "application/json"}
    if dep.api_key:
        headers["authorization"] = f"Bearer {dep.api_key}"
    resp = await shared_client().get(url, headers=headers, timeout=limit_s)
    if resp.status_code >= 400:
        raise ProviderError.from_upstream(
            resp.status_code, resp.content, resp.headers, lambda text: _clean(text, dep)
        )


async def _probe_completion(router: Router, dep: Deployment, limit_s: float) -> None:
    provider = router.providers.get(dep.provider)
    body = {"model": dep.model_name, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    call = dep.provider_call(body, "health-probe")
    call.timeout = limit_s
    await provider.chat(call)


async def probe_one(router: Router, dep: Deployment, limit_s: float) -> tuple[bool, dict[str, Any]]:
    """Probe one deployment: (healthy, endpoint description)."""
    info = _describe(dep)
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit_s):
            if dep.provider in OPENAI_COMPATIBLE_PROVIDERS:
                await _probe_openai(dep, limit_s)
            else:
                await _probe_completion(router, dep, limit_s)
    except TimeoutError:
        info["error"] = f"no answer within {limit_s:g}s"
        return False, info
    except ProviderError as exc:
        info["error"] = _scrub(f"HTTP {exc.status_code}: {exc.message}", dep)
        return False, info
    except Exception as exc:
        # Connection refused, DNS failure, a provider that cannot load...: unhealthy, not a 500.
        info["error"] = _scrub(f"{type(exc).__name__}: {exc}", dep)
        return False, info
    info["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    return True, info


def _deployments_for(router: Router, model: str | None) -> list[Deployment]:
    """The deployments serving ``model`` (all when None); a name only a wildcard entry serves
    gets that entry's deployments with the name filled into their upstream model."""
    if model is None:
        return list(router.deployments)
    exact = [d for d in router.deployments if d.model_name == model]
    if exact or router.wildcards is None:
        return exact
    found: dict[str, Deployment] = {}
    for operation in router.serving:
        group = router.wildcards.group(model, operation)
        if group is not None and group.concrete is not None:
            for dep_id, dep in group.concrete.items():
                found.setdefault(dep_id, dep)
    return list(found.values())


def _probeable(dep: Deployment) -> bool:
    # A completion probe needs a concrete upstream model; ``/models`` needs none.
    return WILDCARD not in dep.upstream_model or dep.provider in OPENAI_COMPATIBLE_PROVIDERS


async def probe_all(router: Router, limit_s: float, model: str | None = None) -> dict[str, Any]:
    """Probe every deployment (or every deployment of ``model``) concurrently."""
    deps = _deployments_for(router, model)
    skipped = [
        {**_describe(d), "reason": "wildcard deployment: probe it with /health?model=<a name it serves>"}
        for d in deps
        if not _probeable(d)
    ]
    deps = [d for d in deps if _probeable(d)]
    results = await asyncio.gather(*(probe_one(router, d, limit_s) for d in deps))
    now = time.time()
    cooling = {s.id: s.cooldown_until - now for s in router.states if s.cooldown_until > now}
    healthy, unhealthy = [], []
    for ok, info in results:
        if info["id"] in cooling:
            info["cooldown_remaining_s"] = round(cooling[info["id"]], 1)
        (healthy if ok else unhealthy).append(info)
    report: dict[str, Any] = {
        "healthy_endpoints": healthy,
        "unhealthy_endpoints": unhealthy,
        "healthy_count": len(healthy),
        "unhealthy_count": len(unhealthy),
    }
    if skipped:
        report["skipped_endpoints"] = skipped
    return report


def add_disabled(report: dict[str, Any], disabled: Sequence[DisabledDeployment]) -> None:
    """List the config's disabled deployments as unhealthy endpoints in ``report``."""
    for d in disabled:
        report["unhealthy_endpoints"].append(
            {"model_name": d.model_name, "model": d.model, "error": f"disabled at start: {d.reason}"}
        )
    report["unhealthy_count"] = len(report["unhealthy_endpoints"])


async def health(request: Request) -> Response:
    """``GET /health[?model=name&timeout=seconds]``: admin only when the gateway requires keys."""
    services = request.app.state.services
    try:
        if services is None:
            raise GatewayError(503, "gateway is starting", code="starting")
        token = request_token(request.headers.get)
        principal = await services.auth.authenticate(token)
        if not principal.is_admin:
            raise GatewayError(403, "/health needs the master key", "permission_error", "admin_only")
        model = request.query_params.get("model") or None
        if model is not None and not services.router.has_model(model):
            raise GatewayError(404, f"model {model!r} not found", code="model_not_found", param="model")
        try:
            timeout = float(request.query_params.get("timeout", DEFAULT_PROBE_TIMEOUT_S))
        except ValueError:
            raise GatewayError(400, "timeout must be a number of seconds", param="timeout") from None
        timeout = min(max(timeout, 0.05), MAX_PROBE_TIMEOUT_S)
        report = await probe_all(services.router, timeout, model)
        if model is None:
            add_disabled(report, services.config.disabled)
    except Exception as exc:
        err = as_gateway_error(exc)
        return Response(err.body(), err.status, headers=err.headers, media_type="application/json")
    return Response(orjson.dumps(report), media_type="application/json")
