"""Traces leave a real ``switchyard serve`` over OTLP/HTTP when configured, and only then.

A loopback OTLP receiver decodes what the gateway's exporter posts (the collector's protobuf
``ExportTraceServiceRequest``). The config turns tracing on the LiteLLM way
(``litellm_settings.callbacks: ["otel"]``) and the collector comes from the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.config import parse_config
from gateway.tracing import endpoint_for
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import MASTER_KEY, gateway_config, keyed_gateway, own_database
from tests.support.gateway_process import REPO, gateway_process
from tests.support.loopback_server import LoopbackServer


class Collector:
    """An OTLP/HTTP traces receiver on loopback: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, dict[str, object], str]] = []  # (name, attributes, service.name)
        self._lock = threading.Lock()
        self._server = LoopbackServer(
            Starlette(routes=[Route("/v1/traces", self._receive, methods=["POST"])]),
            "otlp",
            log_level="warning",
        )
        self.url = ""

    async def _receive(self, request: Request) -> Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        with self._lock:
            for resource_spans in message.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attrs = {a.key: _value(a.value) for a in span.attributes}
                        self.spans.append((span.name, attrs, service))
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    def __enter__(self) -> Collector:
        self.url = f"http://127.0.0.1:{self._server.start()}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def wait_for(self, name: str, timeout: float = 15.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for span_name, attrs, _ in self.spans:
                    if span_name == name:
                        return attrs
            time.sleep(0.05)
        raise AssertionError(f"no {name!r} span; got {[s[0] for s in self.spans]}")


def _value(v: object) -> object:
    kind = v.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(v, kind) if kind else None


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with own_database("switchyard_otlp") as url:
        yield url


def test_litellm_otel_callback_exports_spans_to_the_collector(database_url: str) -> None:
    with Collector() as collector, FakeOpenAI() as fake:
        config = gateway_config(fake.base_url)
        config["litellm_settings"] = {"callbacks": ["otel"]}
        env = {
            "DATABASE_URL": database_url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_SERVICE_NAME": "gateway-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        with gateway_process(config, env=env) as gw:
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            server = collector.wait_for("POST /v1/chat/completions")
            upstream = collector.wait_for("chat gpt-4o-mini")
            assert "callbacks" not in gw.logs()  # taken, not warned about as ignored
        assert server["http.response.status_code"] == 200
        assert server["gen_ai.request.model"] == "gpt-4o-mini"
        assert upstream["gen_ai.system"] == "openai"
        assert upstream["gen_ai.usage.input_tokens"] == 7
        assert {service for _, _, service in collector.spans} == {"gateway-under-test"}


def test_no_configuration_no_spans(database_url: str) -> None:
    with Collector() as collector, FakeOpenAI() as fake:
        with keyed_gateway(gateway_config(fake.base_url), database_url) as gw:
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            time.sleep(0.5)
        assert collector.spans == []


def test_configured_without_the_sdk_warns_once_and_serves() -> None:
    # The SDK made unimportable in a fresh interpreter: what a gateway without the otel extra sees.
    code = (
        "import sys, logging\n"
        "sys.modules['opentelemetry.sdk'] = None\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from gateway import tracing\n"
        "from gateway.config import parse_config\n"
        "tracing.configure(parse_config('general_settings: {otel_endpoint: http://127.0.0.1:9}').general_settings)\n"
        "print('tracer', tracing.tracer)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "tracer None" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "OpenTelemetry" in line]
    assert len(warnings) == 1
    assert "pip install 'switchyard[otel]'" in warnings[0]
    assert "http://127.0.0.1:9/v1/traces" in warnings[0]


def test_which_settings_turn_tracing_on_and_where_spans_go() -> None:
    litellm = parse_config('litellm_settings: {callbacks: ["otel", "langfuse"]}')
    assert litellm.general_settings.otel is True
    # The other callbacks are still named as ignored; "otel" is not.
    assert [w for w in litellm.warnings if "callbacks" in w and "otel" not in w]
    assert not [w for w in litellm.warnings if "otel" in w]
    off = parse_config("").general_settings
    assert endpoint_for(off, {}) is None
    assert endpoint_for(off, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == "http://c:4318/v1/traces"
    assert endpoint_for(off, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/t"}) == "http://c/t"
    on = litellm.general_settings
    assert endpoint_for(on, {}) == "http://localhost:4318/v1/traces"
    assert endpoint_for(on, {"OTEL_ENDPOINT": "http://lite:4318"}) == "http://lite:4318/v1/traces"
    assert endpoint_for(on, {"OTEL_SDK_DISABLED": "true"}) is None
    assert endpoint_for(on, {"OTEL_TRACES_EXPORTER": "none"}) is None
    named = parse_config("general_settings: {otel_endpoint: http://col:4318/v1/traces}").general_settings
    assert endpoint_for(named, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://other"}) == "http://col:4318/v1/traces"
