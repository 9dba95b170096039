"""schemathesis against the gateway's own OpenAPI document: every route, a bounded number of examples.

A real gateway process (real Postgres, real Redis limits with a TPM default, a fake OpenAI upstream)
serves ``/openapi.json``; schemathesis generates requests for every operation in it (valid and
invalid ones) and sends them with the master key. For each: no 5xx, and every 4xx body is the
OpenAI error shape. After all of them the gateway must still be ready.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.openapi import ADMIN_BODIES
from tests.support.gateway_app import MASTER_KEY, self_contained_gateway
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import redis_url

MODEL = "gpt-fake"
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
EXAMPLES = 25  # per operation: 33 operations in about 40 s on a 2-core box (8 missed a real 500)

__all__ = ["redis_url"]  # the session fixture, used by `gateway` below


@pytest.fixture(scope="module")
def gateway(redis_url: str) -> Iterator[GatewayProcess]:
    # Every request goes through the Redis limiter with token accounting (large max_tokens...).
    with self_contained_gateway(
        "switchyard_schemathesis",
        models=[MODEL],
        redis_url=redis_url,
        cache=True,
        redis_timeout_s=2.0,
    ) as gw:
        yield gw


# Built in-process from the same code that serves /openapi.json (compared below): schemathesis's
# lazy fixture loader does not work with pytest 9, and the cases must exist at collection time.
schema = schemathesis.openapi.from_dict(create_app(GatewayConfig()).openapi())


def _assert_openai_error(status: int, body: bytes) -> None:
    import json

    try:
        doc = json.loads(body)
    except ValueError:
        pytest.fail(f"{status} with a body that is not JSON: {body[:300]!r}")
    assert isinstance(doc, dict) and isinstance(doc.get("error"), dict), (status, doc)
    err = doc["error"]
    assert {"message", "type", "param", "code"} <= err.keys(), (status, err)
    assert isinstance(err["message"], str) and err["message"], (status, err)
    assert isinstance(err["type"], str), (status, err)
    assert err["param"] is None or isinstance(err["param"], str), (status, err)
    assert err["code"] is None or isinstance(err["code"], str), (status, err)


def _assert_anthropic_error(status: int, body: bytes) -> None:
    """The Messages door's errors: ``{"type": "error", "error": {"type", "message"}}``."""
    import json

    try:
        doc = json.loads(body)
    except ValueError:
        pytest.fail(f"{status} with a body that is not JSON: {body[:300]!r}")
    assert isinstance(doc, dict) and doc.get("type") == "error", (status, doc)
    err = doc.get("error")
    assert isinstance(err, dict) and set(err) == {"type", "message"}, (status, doc)
    assert isinstance(err["type"], str) and isinstance(err["message"], str) and err["message"], (status, err)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure here is reproducible, not flaky
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_operation(case: schemathesis.Case, gateway: GatewayProcess) -> None:
    body = case.body
    if (
        case.path.endswith(("/chat/completions", "/messages"))
        and isinstance(body, dict)
        and isinstance(body.get("model"), str)
    ):
        # Half of the chat cases name the served model, so they reach the router and the upstream
        # rather than all ending at "model not found".
        if len(str(body.get("messages"))) % 2 == 0:
            body["model"] = MODEL
    response = case.call(
        base_url=gateway.base_url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    )
    assert response.status_code < 500, (
        f"{response.status_code} for {case.as_curl_command()}\n{response.content[:500]!r}"
    )
    if case.path == "/model/new" and response.status_code == 200:
        # A model the fuzzer stored (an upstream that does not exist) would answer later cases 502.
        stored = {"id": response.json()["model_id"]}
        httpx.post(
            gateway.base_url + "/model/delete", json=stored, headers=ADMIN, timeout=30
        ).raise_for_status()
    # The Messages door answers in Anthropic's shape; a method it does not serve (405) is the
    # router's answer, in the gateway's usual shape.
    if response.status_code >= 400 and "/messages" in case.path and case.method.upper() == "POST":
        _assert_anthropic_error(response.status_code, response.content)
    elif response.status_code >= 400:
        _assert_openai_error(response.status_code, response.content)


def _flat(routes: list[Any]) -> Iterator[Any]:
    """Routes, with those of included routers (FastAPI keeps them nested) listed too."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat(inner.routes)
        else:
            yield route


def test_the_document_covers_every_route() -> None:
    """A route added without documentation (a plain Starlette route, an admin body) fails here."""
    app = create_app(GatewayConfig())
    doc = app.openapi()
    documented = {(path, method.upper()) for path, item in doc["paths"].items() for method in item}
    served: set[tuple[str, str]] = set()
    for route in _flat(app.routes):
        # The template as OpenAPI writes it: "/v1/models/{model}", not the route's "{model:path}".
        path = getattr(route, "path_format", None)
        methods = getattr(route, "methods", None) or set()
        if path is None or path == app.openapi_url:
            continue
        served |= {(path, m) for m in methods if m != "HEAD"}
    assert ("/key/generate", "POST") in served  # included routers were looked into
    assert served - documented == set()
    posts = {path for path, method in served if method == "POST"}
    hot = {"/v1/chat/completions", "/chat/completions"}
    doors = ("embeddings", "completions", "responses")
    hot |= {f"{prefix}/{door}" for prefix in ("/v1", "") for door in doors}
    hot |= {f"{prefix}/messages{tail}" for prefix in ("/v1", "") for tail in ("", "/count_tokens")}
    assert posts - hot == set(ADMIN_BODIES), "an admin POST route without its body model in ADMIN_BODIES"
    for path in posts:
        assert "requestBody" in doc["paths"][path]["post"], path


def test_the_document_is_served_without_a_key(gateway: GatewayProcess) -> None:
    r = httpx.get(gateway.base_url + "/openapi.json")
    assert r.status_code == 200
    # The very document the cases above were generated from.
    assert r.json() == schema.raw_schema


def test_still_healthy_afterwards(gateway: GatewayProcess) -> None:
    # Runs after every generated case (pytest keeps the file's order).
    assert gateway.alive(), gateway.logs()[-3000:]
    r = httpx.get(gateway.base_url + "/health/readiness", timeout=10)
    assert r.status_code == 200, r.text
    chat = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "still there?"}]},
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        timeout=30,
    )
    assert chat.status_code == 200, chat.text
    assert "Traceback" not in gateway.logs()
