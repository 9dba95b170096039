"""OpenTelemetry traces of the request path, exported over OTLP/HTTP when configured.

Tracing is on when ``general_settings.otel`` or ``otel_endpoint`` is set (LiteLLM's
``litellm_settings.callbacks: ["otel"]`` maps to ``otel``), or when the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` is in the environment;
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off. It needs the ``otel``
extra (``opentelemetry-sdk`` and the OTLP/HTTP exporter); configured without it, the gateway
serves as usual and says so in one warning line.

Off, ``tracer`` is None and the request path creates nothing: the conductor tests it once per
request and ``step`` hands back the awaitable it was given. On, a request is:

    POST /v1/chat/completions      SERVER: status, gen_ai.* (operation, model, usage), deployment
      auth                         the key lookup
      rate_limits                  admission against every limit scope
      cache_lookup                 the response cache (when the request is cacheable)
      chat <upstream model>        CLIENT, one per upstream attempt (``gateway.traced_provider``)
        engine.queue / engine.prefill / engine.decode    local models: the engine's phases

A ``traceparent`` header from the caller continues its trace, and each upstream attempt sends one
on to the upstream.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from gateway.config import GeneralSettings
    from providers.usage import Usage

log = logging.getLogger("switchyard.tracing")

T = TypeVar("T")

# None: tracing is off (the request path checks this and nothing else).
tracer: Tracer | None = None
# The provider ``configure`` built (shut down, so flushed, when the gateway stops).
_owned: TracerProvider | None = None

_TRACES_PATH = "/v1/traces"
SERVICE_NAME = "switchyard"
# The door's operation -> GenAI semantic conventions' gen_ai.operation.name.
GEN_AI_OPERATIONS = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}


def endpoint_for(settings: GeneralSettings, env: Mapping[str, str] = os.environ) -> str | None:
    """The OTLP/HTTP traces URL the settings and environment ask for, or None (tracing off)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    if settings.otel_endpoint:
        return _traces_url(settings.otel_endpoint)
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]  # the full URL, as the standard says
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return _traces_url(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    if settings.otel:
        # LiteLLM's variable for its otel callback, else the collector's default on this host.
        return _traces_url(env.get("OTEL_ENDPOINT") or "http://localhost:4318")
    return None


def _traces_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith(_TRACES_PATH) else base + _TRACES_PATH


def configure(settings: GeneralSettings) -> None:
    """Start exporting spans if the settings or environment ask for it (once per process)."""
    global _owned
    url = endpoint_for(settings)
    if url is None or _owned is not None:
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OpenTelemetry tracing is configured (%s) but its packages are not installed: "
            "pip install 'switchyard[otel]'; serving without traces",
            url,
        )
        return
    service = os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    _owned = provider
    use(provider)
    log.info("OpenTelemetry traces go to %s (service.name %s)", url, service)


def use(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` from now on (None: stop tracing). Tests pass one with an in-memory
    exporter; ``configure`` passes the OTLP one."""
    global tracer
    tracer = provider.get_tracer("switchyard") if provider is not None else None


def shutdown() -> None:
    """Flush and stop the exporter ``configure`` started (blocks up to the exporter's timeout)."""
    global _owned
    provider, _owned = _owned, None
    if provider is not None:
        use(None)
        provider.shutdown()


def step(name: str, aw: Awaitable[T]) -> Awaitable[T]:
    """``aw`` run inside a span ``name`` when tracing is on; ``aw`` itself when it is off."""
    t = tracer
    if t is None:
        return aw
    return _in_span(t, name, aw)


async def _in_span(t: Tracer, name: str, aw: Awaitable[T]) -> T:
    with t.start_as_current_span(name) as span:
        try:
            return await aw
        except Exception as exc:
            span.set_attribute("error.type", error_type(exc))
            raise


def error_type(exc: BaseException) -> str:
    """``error.type``: the error's code when it has one (GatewayError, ProviderError), else its class."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else type(exc).__name__


def usage_attributes(usage: Usage | None) -> dict[str, int]:
    """GenAI semantic-convention token counts for ``usage`` (none when it is unknown)."""
    if usage is None:
        return {}
    attrs = {
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
    }
    if usage.cache_read_tokens:
        attrs["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read_tokens
    return attrs


@dataclass(slots=True)
class RequestSpan:
    """The server span of one request, current in its task until ``end``."""

    span: Span
    token: object

    def end(
        self,
        model: str,
        status: int,
        error: str | None,
        usage: Usage | None,
        deployment: Any,
        cache_hit: bool,
    ) -> None:
        from opentelemetry import context
        from opentelemetry.trace import StatusCode

        span = self.span
        attrs: dict[str, Any] = {"http.response.status_code": status, "switchyard.cache_hit": cache_hit}
        if model:
            attrs["gen_ai.request.model"] = model[:256]  # the caller's text: bounded
        if deployment is not None:
            attrs["switchyard.deployment"] = deployment.id
            attrs["switchyard.provider_model"] = deployment.provider_model
        attrs.update(usage_attributes(usage))
        if error is not None:
            attrs["error.type"] = error
        span.set_attributes(attrs)
        if status >= 500:
            span.set_status(StatusCode.ERROR)  # a 4xx is the caller's error, not the server's
        context.detach(self.token)  # type: ignore[arg-type]
        span.end()


def start_request(scope: Mapping[str, Any], operation: str, request_id: str) -> RequestSpan:
    """Open the server span of a door's request (tracing must be on) and make it current."""
    from opentelemetry import context, trace

    assert tracer is not None
    path = scope.get("path", "")
    span = tracer.start_span(
        f"POST {path}",
        context=_caller_context(scope),
        kind=trace.SpanKind.SERVER,
        attributes={
            "http.request.method": "POST",
            "url.path": path,
            "http.route": path,
            "gen_ai.operation.name": GEN_AI_OPERATIONS.get(operation, operation),
            "switchyard.operation": operation,
            "switchyard.request_id": request_id,
        },
    )
    return RequestSpan(span, context.attach(trace.set_span_in_context(span)))


def _caller_context(scope: Mapping[str, Any]) -> Context | None:
    """The caller's trace (W3C ``traceparent``/``tracestate``), when it sent one."""
    carrier = {}
    for key, value in scope.get("headers", ()):
        if key in (b"traceparent", b"tracestate"):
            carrier[key.decode("latin-1")] = value.decode("latin-1")
    if not carrier:
        return None
    from opentelemetry import propagate

    return propagate.extract(carrier)
