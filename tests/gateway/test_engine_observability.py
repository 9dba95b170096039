"""The local engine seen from the gateway: its queue, prefill and decode as spans under the upstream
attempt, and its numbers on ``/metrics``.

A real gateway in this process (uvicorn on loopback, Postgres for its control plane) serves a tiny
random Llama (built offline) as ``local/tiny``; the ``openai`` SDK calls it. ``ignore_eos`` makes
every answer exactly ``max_tokens`` long whatever the random weights pick.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway import tracing
from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.support.engine_models import make_hf_model
from tests.support.gateway_app import own_database
from tests.support.loopback_server import LoopbackServer

TOKENS = 6


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
def base_url(exporter: InMemorySpanExporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model_dir: Path = tmp_path_factory.mktemp("tiny-llama")
    make_hf_model("llama", model_dir)
    params = {"model": "local/tiny", "model_path": str(model_dir), "max_model_len": 256, "num_threads": 1}
    with own_database("switchyard_engine_obs") as database_url:
        config = GatewayConfig.model_validate(
            {
                "model_list": [{"model_name": "tiny", "params": params}],
                "general_settings": {"database_url": database_url},
            }
        )
        server = LoopbackServer(create_app(config), "gateway", log_level="warning")
        port = server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


def ask(base_url: str, request_id: str, *, stream: bool = False) -> None:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0, timeout=120)
    kwargs = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "The quick brown fox jumps over the lazy dog."}],
        "max_tokens": TOKENS,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
        "extra_headers": {"x-request-id": request_id},
    }
    if stream:
        assert list(client.chat.completions.create(stream=True, **kwargs))
    else:
        reply = client.chat.completions.create(**kwargs)
        assert reply.usage is not None and reply.usage.completion_tokens == TOKENS


def phases(exporter: InMemorySpanExporter, request_id: str) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The request's upstream attempt span and its children, once the server span has ended."""
    deadline = time.monotonic() + 10
    while True:
        spans = exporter.get_finished_spans()
        server = [s for s in spans if (s.attributes or {}).get("switchyard.request_id") == request_id]
        if server:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    trace_spans = [s for s in spans if s.context.trace_id == server[0].context.trace_id]
    (attempt,) = [s for s in trace_spans if s.name == "chat tiny"]
    children = [
        s for s in trace_spans if s.parent is not None and s.parent.span_id == attempt.context.span_id
    ]
    return attempt, sorted(children, key=lambda s: s.start_time or 0)


@pytest.mark.parametrize("stream", [False, True])
def test_engine_phases_are_spans_under_the_attempt(
    base_url: str, exporter: InMemorySpanExporter, stream: bool
) -> None:
    request_id = f"engine-{uuid.uuid4().hex}"
    ask(base_url, request_id, stream=stream)
    attempt, children = phases(exporter, request_id)
    assert (attempt.attributes or {})["gen_ai.system"] == "switchyard"
    assert [s.name for s in children] == ["engine.queue", "engine.prefill", "engine.decode"]
    queue, prefill, decode = children
    # Back to back, in order, inside the attempt.
    assert attempt.start_time <= queue.start_time <= queue.end_time <= prefill.start_time
    assert prefill.end_time <= decode.start_time <= decode.end_time <= attempt.end_time
    assert (prefill.attributes or {})["gen_ai.usage.input_tokens"] > 0
    assert (decode.attributes or {})["gen_ai.usage.output_tokens"] == TOKENS


def sample(page: str, name: str, **labels: str) -> float:
    for line in page.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if (
            match
            and match.group(1) == name
            and dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")) == labels
        ):
            return float(match.group(3))
    raise AssertionError(f"{name} {labels} not on the page")


def test_engine_numbers_on_the_metrics_page(base_url: str) -> None:
    before = httpx.get(base_url + "/metrics").text
    had = {
        name: sample(before, name, model="tiny") if "switchyard_engine" in before else 0.0
        for name in (
            "switchyard_engine_generation_tokens_total",
            "switchyard_engine_requests_finished_total",
            "switchyard_engine_prefix_cache_hits_tokens_total",
        )
    }
    for _ in range(2):  # the same prompt twice: the second finds its blocks in the prefix cache
        ask(base_url, f"metrics-{uuid.uuid4().hex}")
    page = httpx.get(base_url + "/metrics").text
    assert sample(page, "switchyard_engine_generation_tokens_total", model="tiny") == (
        had["switchyard_engine_generation_tokens_total"] + 2 * TOKENS
    )
    assert sample(page, "switchyard_engine_requests_finished_total", model="tiny") == (
        had["switchyard_engine_requests_finished_total"] + 2
    )
    assert (
        sample(page, "switchyard_engine_prefix_cache_hits_tokens_total", model="tiny")
        > (had["switchyard_engine_prefix_cache_hits_tokens_total"])
    )
    assert sample(page, "switchyard_engine_prefix_cache_queries_tokens_total", model="tiny") > 0
    assert sample(page, "switchyard_engine_time_per_output_token_seconds_count", model="tiny") >= 2
    assert sample(page, "switchyard_engine_time_per_output_token_seconds_sum", model="tiny") > 0
    assert sample(page, "switchyard_engine_generation_tokens_per_second", model="tiny") >= 0
    # Speculative decoding (on for a lone greedy request): accepted drafts never exceed those checked.
    drafted = sample(page, "switchyard_engine_spec_decode_draft_tokens_total", model="tiny")
    assert 0 <= sample(page, "switchyard_engine_spec_decode_accepted_tokens_total", model="tiny") <= drafted
    assert sample(page, "switchyard_engine_spec_decode_drafts_total", model="tiny") <= drafted
    # Nothing in flight between requests: no sequence, and every block back (cached blocks are free).
    assert sample(page, "switchyard_engine_requests_running", model="tiny") == 0
    assert sample(page, "switchyard_engine_requests_waiting", model="tiny") == 0
    assert sample(page, "switchyard_engine_kv_cache_usage_ratio", model="tiny") == 0


def test_a_running_stream_shows_on_the_gauges(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Paged attention keeps the KV cache in blocks."}],
        max_tokens=200,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    with stream:
        next(iter(stream))  # the engine is decoding it now
        page = httpx.get(base_url + "/metrics").text
    assert sample(page, "switchyard_engine_requests_running", model="tiny") == 1
    assert 0 < sample(page, "switchyard_engine_kv_cache_usage_ratio", model="tiny") <= 1
