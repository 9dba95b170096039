"""OpenTelemetry traces of the request path, read from an in-process span exporter.

The gateway runs in this process (uvicorn on loopback, ``create_app``) with a real Postgres, Redis
limits and cache, and the fake OpenAI upstream; the ``openai`` SDK calls it. The exporter is
opentelemetry-sdk's ``InMemorySpanExporter`` behind ``tracing.use``, the hook the OTLP exporter
goes through too (its own wiring is tested in ``test_tracing_export.py``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway import tracing
from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.support.fake_openai import Behavior, FakeOpenAI
from tests.support.gateway_app import MASTER_KEY, own_database
from tests.support.loopback_server import LoopbackServer
from tests.support.redis_server import redis_url  # noqa: F401  (a fixture)

MODEL = "gpt-traced"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.use(provider)
    try:
        yield memory
    finally:
        tracing.use(None)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def served(config: dict[str, Any]) -> LoopbackServer:
    return LoopbackServer(create_app(GatewayConfig.model_validate(config)), "gateway", log_level="warning")


def config_for(fake: FakeOpenAI, database_url: str, redis: str) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": MODEL,
                "params": {"model": "openai/fake-upstream", "api_base": fake.base_url, "api_key": "sk-up"},
                "model_info": {"id": "traced-1"},
            }
        ],
        "general_settings": {
            "master_key": MASTER_KEY,
            "database_url": database_url,
            "redis_url": redis,
            "spend_flush_interval_s": 0.1,
        },
        "router_settings": {"num_retries": 1, "allowed_fails": 1000, "cooldown_time": 0},
        "cache_settings": {"enabled": True},
        "limit_settings": {"key_prefix": f"sy-trace-{uuid.uuid4().hex[:8]}"},
    }


@pytest.fixture(scope="module")
def base_url(exporter: InMemorySpanExporter, fake: FakeOpenAI, redis_url: str) -> Iterator[str]:  # noqa: F811
    with own_database("switchyard_tracing") as database_url:
        server = served(config_for(fake, database_url, redis_url))
        port = server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


def client(base_url: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url + "/v1", api_key=MASTER_KEY, max_retries=0, default_headers=headers or None
    )


def trace_of(exporter: InMemorySpanExporter, request_id: str) -> list[ReadableSpan]:
    """Every span of the trace whose server span has ``request_id`` (waits for it to end)."""
    deadline = time.monotonic() + 10
    while True:
        spans = exporter.get_finished_spans()
        server = [s for s in spans if (s.attributes or {}).get("switchyard.request_id") == request_id]
        if server:
            trace_id = server[0].context.trace_id
            return [s for s in spans if s.context.trace_id == trace_id]
        assert time.monotonic() < deadline, "no server span"
        time.sleep(0.02)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def test_chat_request_is_one_trace_with_stage_and_upstream_spans(
    base_url: str, exporter: InMemorySpanExporter, fake: FakeOpenAI
) -> None:
    request_id = f"trace-{uuid.uuid4().hex}"
    reply = client(base_url, **{"x-request-id": request_id}).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"hello {request_id}"}], temperature=0.5
    )
    spans = trace_of(exporter, request_id)
    server = one(spans, "POST /v1/chat/completions")
    assert server.kind is SpanKind.SERVER
    attrs = dict(server.attributes or {})
    assert attrs["http.response.status_code"] == 200
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["switchyard.deployment"] == "traced-1"
    assert attrs["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert attrs["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens

    upstream = one(spans, "chat fake-upstream")
    assert upstream.kind is SpanKind.CLIENT
    up = dict(upstream.attributes or {})
    assert up["gen_ai.system"] == "openai"
    assert up["gen_ai.request.model"] == "fake-upstream"
    assert up["gen_ai.request.temperature"] == 0.5
    assert up["server.address"] == "127.0.0.1"
    assert up["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    for name in ("auth", "rate_limits", "cache_lookup", "chat fake-upstream"):
        span = one(spans, name)
        assert span.parent is not None and span.parent.span_id == server.context.span_id, name
        assert server.start_time <= span.start_time <= span.end_time <= server.end_time, name
    # The upstream got the attempt's span as its parent (W3C traceparent).
    sent = next(r for r in fake.requests if f"hello {request_id}" in str(r.body))
    version, trace_id, parent_id, _flags = sent.headers["traceparent"].split("-")
    assert (version, trace_id, parent_id) == (
        "00",
        f"{upstream.context.trace_id:032x}",
        f"{upstream.context.span_id:016x}",
    )


def test_a_retried_attempt_is_its_own_failed_span(
    base_url: str, exporter: InMemorySpanExporter, fake: FakeOpenAI
) -> None:
    fake.enqueue(Behavior(status=500, error_message="upstream broke"))
    request_id = f"retry-{uuid.uuid4().hex}"
    client(base_url, **{"x-request-id": request_id}).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": request_id}]
    )
    attempts = sorted(
        (s for s in trace_of(exporter, request_id) if s.name == "chat fake-upstream"),
        key=lambda s: s.start_time or 0,
    )
    assert len(attempts) == 2
    failed, ok = attempts
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})["http.response.status_code"] == 500
    assert "error.type" in (failed.attributes or {})
    assert ok.status.status_code is not StatusCode.ERROR
    assert (ok.attributes or {})["gen_ai.usage.input_tokens"] > 0


def test_stream_span_lasts_until_the_stream_ends_and_carries_usage(
    base_url: str, exporter: InMemorySpanExporter, fake: FakeOpenAI
) -> None:
    fake.enqueue(Behavior(chunks=5, chunk_delay_s=0.02))
    request_id = f"stream-{uuid.uuid4().hex}"
    stream = client(base_url, **{"x-request-id": request_id}).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": request_id}], stream=True
    )
    chunks = list(stream)
    assert chunks
    spans = trace_of(exporter, request_id)
    upstream = one(spans, "chat fake-upstream")
    # Five deltas 20 ms apart: the span covers them, not just the first event.
    assert (upstream.end_time or 0) - (upstream.start_time or 0) >= 80_000_000
    assert (upstream.attributes or {})["gen_ai.usage.output_tokens"] == 5


def test_caller_traceparent_continues_its_trace(base_url: str, exporter: InMemorySpanExporter) -> None:
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    request_id = f"caller-{uuid.uuid4().hex}"
    client(
        base_url, **{"x-request-id": request_id, "traceparent": f"00-{trace_id}-{parent_id}-01"}
    ).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": request_id}])
    server = one(trace_of(exporter, request_id), "POST /v1/chat/completions")
    assert f"{server.context.trace_id:032x}" == trace_id
    assert server.parent is not None and f"{server.parent.span_id:016x}" == parent_id


def test_refused_request_ends_its_span_with_the_error(base_url: str, exporter: InMemorySpanExporter) -> None:
    request_id = f"bad-{uuid.uuid4().hex}"
    with pytest.raises(openai.NotFoundError):
        client(base_url, **{"x-request-id": request_id}).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    server = one(trace_of(exporter, request_id), "POST /v1/chat/completions")
    attrs = dict(server.attributes or {})
    assert attrs["http.response.status_code"] == 404
    assert attrs["error.type"] == "model_not_found"


def test_messages_door_traces_the_typed_path(base_url: str, exporter: InMemorySpanExporter) -> None:
    request_id = f"messages-{uuid.uuid4().hex}"
    client = anthropic.Anthropic(
        base_url=base_url, api_key=MASTER_KEY, max_retries=0, default_headers={"x-request-id": request_id}
    )
    reply = client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    spans = trace_of(exporter, request_id)
    server = one(spans, "POST /v1/messages")
    assert (server.attributes or {})["switchyard.operation"] == "messages"
    assert (server.attributes or {})["gen_ai.operation.name"] == "chat"
    upstream = one(spans, "chat fake-upstream")
    attrs = dict(upstream.attributes or {})
    assert attrs["gen_ai.request.max_tokens"] == 20
    assert attrs["gen_ai.usage.output_tokens"] == reply.usage.output_tokens
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
