"""Provider adapters seen through tracing: every upstream attempt is a CLIENT span.

``instrument(registry)`` makes the registry hand out each adapter wrapped (only when tracing is
on, so the untraced path holds no wrapper). The router calls the wrapper exactly as it calls the
adapter, once per attempt, so retries and fallbacks show as sibling spans. Attributes follow the
OpenTelemetry GenAI semantic conventions (gen_ai.operation.name, gen_ai.system,
gen_ai.request.model, gen_ai.usage.input_tokens...). Adapters that run work of their own (the local
engine) report its phases through ``ProviderCall.on_phase``; each becomes a child span with the
times the engine measured.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from gateway import tracing
from providers.contract import ChatProvider, ProviderCall, ProviderResponse, capabilities_of
from providers.registry import ProviderRegistry
from providers.schema import GenerationRequest, GenerationResponse, StreamEvent, UsageReport
from providers.usage import Usage
from providers.usage_tap import UsageTap

T = TypeVar("T", ProviderResponse, GenerationResponse)

# Our provider prefixes -> the GenAI conventions' well-known gen_ai.system values (others: the prefix).
GEN_AI_SYSTEMS = {
    "bedrock": "aws.bedrock",
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "cohere_chat": "cohere",
    "ollama_chat": "ollama",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "local": "switchyard",
}
_REQUEST_PARAMS = (
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
)


def instrument(registry: ProviderRegistry) -> None:
    """Wrap every adapter ``registry`` hands out from now on (tracing must be on)."""
    registry.wrap_with(wrap)


def wrap(name: str, provider: ChatProvider) -> ChatProvider:
    # An adapter that counts tokens keeps the method (``isinstance`` checks look for it).
    if hasattr(provider, "count_tokens"):
        return _TracedCounter(name, provider)
    return TracedProvider(name, provider)


class TracedProvider:
    """``provider`` with a span around each call; everything else passes through."""

    def __init__(self, name: str, provider: ChatProvider) -> None:
        self.name = name
        self.inner: Any = provider
        self.capabilities = capabilities_of(provider)
        self.system = GEN_AI_SYSTEMS.get(name, name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    # ---- the contract, each call traced ----------------------------------------------------

    async def chat(self, call: ProviderCall) -> ProviderResponse:
        return await self._call("chat", call, None, lambda: self.inner.chat(call))

    async def completions(self, call: ProviderCall) -> ProviderResponse:
        return await self._call("text_completion", call, None, lambda: self.inner.completions(call))

    async def embeddings(self, call: ProviderCall) -> ProviderResponse:
        return await self._call("embeddings", call, None, lambda: self.inner.embeddings(call))

    async def generate(self, request: GenerationRequest, call: ProviderCall) -> GenerationResponse:
        return await self._call("chat", call, request, lambda: self.inner.generate(request, call))

    def chat_stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        return self._stream("chat", call, None, lambda: self.inner.chat_stream(call))

    def completions_stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        return self._stream("text_completion", call, None, lambda: self.inner.completions_stream(call))

    def generate_stream(self, request: GenerationRequest, call: ProviderCall) -> AsyncIterator[StreamEvent]:
        return self._stream("chat", call, request, lambda: self.inner.generate_stream(request, call))

    # ---- spans -----------------------------------------------------------------------------

    def _open(self, operation: str, call: ProviderCall, request: GenerationRequest | None) -> Span:
        t = tracing.tracer
        if t is None:  # turned off while the gateway runs (tests): a span that records nothing
            return trace.INVALID_SPAN
        model = call.upstream_model
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.system": self.system,
            "gen_ai.provider.name": self.system,
            "gen_ai.request.model": model,
            "switchyard.provider": self.name,
        }
        if call.api_base:
            parts = urlsplit(call.api_base)
            if parts.hostname:
                attrs["server.address"] = parts.hostname
            if parts.port:
                attrs["server.port"] = parts.port
        source: Any = (
            call.body if request is None else {n: getattr(request, n, None) for n, _ in _REQUEST_PARAMS}
        )
        for field, attr in _REQUEST_PARAMS:
            value = source.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attrs[attr] = value
        span = t.start_span(f"{operation} {model}", kind=SpanKind.CLIENT, attributes=attrs)
        ctx = trace.set_span_in_context(span)
        # The upstream continues this trace (a copy: the deployment's headers are shared).
        headers = dict(call.extra_headers)
        propagate.inject(headers, context=ctx)
        call.extra_headers = headers
        call.on_phase = _PhaseRecorder(t, ctx).record
        return span

    async def _call(
        self,
        operation: str,
        call: ProviderCall,
        request: GenerationRequest | None,
        run: Callable[[], Awaitable[T]],
    ) -> T:
        span = self._open(operation, call, request)
        try:
            response = await run()
        except BaseException as exc:
            _failed(span, exc)
            span.end()
            raise
        _succeeded(span, response.usage)
        if isinstance(response, GenerationResponse):
            span.set_attributes(
                {
                    "gen_ai.response.id": response.id,
                    "gen_ai.response.model": response.model,
                    "gen_ai.response.finish_reasons": [response.finish_reason],
                }
            )
        span.end()
        return response

    async def _stream(
        self,
        operation: str,
        call: ProviderCall,
        request: GenerationRequest | None,
        open_events: Callable[[], AsyncIterator[Any]],
    ) -> AsyncIterator[Any]:
        span = self._open(operation, call, request)
        tap = UsageTap() if request is None else None
        usage: Usage | None = None
        events: AsyncIterator[Any] | None = None
        failed = False
        try:
            events = open_events()
            async for event in events:
                if tap is not None:
                    tap.inspect(event)
                elif isinstance(event, UsageReport):
                    usage = event.usage
                yield event
        except GeneratorExit:
            span.set_attribute("switchyard.stream_closed_early", True)  # the caller stopped reading
            raise
        except BaseException as exc:
            failed = True
            _failed(span, exc)
            raise
        finally:
            closer = getattr(events, "aclose", None) if events is not None else None
            try:
                if closer is not None:
                    await closer()
            finally:
                if not failed:
                    _succeeded(span, tap.usage if tap is not None else usage)
                span.end()


class _TracedCounter(TracedProvider):
    """A traced adapter that also counts prompt tokens exactly (``count_tokens`` passes through)."""

    async def count_tokens(self, request: GenerationRequest, call: ProviderCall) -> int:
        result: int = await self.inner.count_tokens(request, call)
        return result


def _succeeded(span: Span, usage: Usage | None) -> None:
    span.set_attributes(tracing.usage_attributes(usage))


def _failed(span: Span, exc: BaseException) -> None:
    span.set_attribute("error.type", tracing.error_type(exc))
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        span.set_attribute("http.response.status_code", status)
    span.record_exception(exc)
    span.set_status(StatusCode.ERROR, str(exc)[:200])


class _PhaseRecorder:
    """``ProviderCall.on_phase`` for one attempt: each phase a child span at the times measured."""

    __slots__ = ("_ctx", "_offset_ns", "_tracer")

    def __init__(self, t: trace.Tracer, ctx: Any) -> None:
        self._tracer = t
        self._ctx = ctx
        # Phases are measured on the monotonic clock; spans carry wall-clock nanoseconds.
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def record(self, name: str, start: float, end: float, attributes: dict[str, Any]) -> None:
        start_ns = int(start * 1e9) + self._offset_ns
        span = self._tracer.start_span(name, context=self._ctx, start_time=start_ns, attributes=attributes)
        span.end(end_time=max(start_ns, int(end * 1e9) + self._offset_ns))
