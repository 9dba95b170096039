"""Hostile input against a real gateway: every input bounded, every answer an OpenAI-shaped error.

One real ``switchyard serve`` (real Postgres for the admin API, real Redis limits with a TPM
default, a fake OpenAI upstream) with short read deadlines, driven by httpx and by raw sockets
for what no HTTP client would send: malformed HTTP, oversized headers, requests left unfinished.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.server.body import MAX_JSON_DEPTH
from gateway.server.bounds import MAX_HEADER_BYTES, MAX_HEADERS
from tests.support.gateway_app import MASTER_KEY, self_contained_gateway
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import redis_url

MODEL = "gpt-fake"
MAX_BODY_MB = 0.05  # about 52 KB
READ_TIMEOUT_S = 2  # both phases: short, so an unfinished request is refused within the test
# Guards against a hang (a socket read that never returns), far beyond the deadlines above.
HANG_S = 30

__all__ = ["redis_url"]  # the session fixture, used by `gateway` below


@pytest.fixture(scope="module")
def gateway(redis_url: str) -> Iterator[GatewayProcess]:
    # Every chat request reserves tokens in Redis (where a huge max_tokens used to overflow).
    with self_contained_gateway(
        "switchyard_hostile",
        models=[MODEL],
        redis_url=redis_url,
        max_request_body_mb=MAX_BODY_MB,
        request_header_timeout_s=READ_TIMEOUT_S,
        request_body_timeout_s=READ_TIMEOUT_S,
    ) as gw:
        yield gw


AUTH = {"authorization": f"Bearer {MASTER_KEY}"}


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello there, gateway"}], **extra}


def assert_openai_error(status: int, body: bytes | dict[str, Any], code: str | None = None) -> dict[str, Any]:
    data = orjson.loads(body) if isinstance(body, bytes) else body
    assert set(data) == {"error"}, data
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def check(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    return assert_openai_error(status, response.content, code)


# --------------------------------------------------------------------------- raw HTTP


def connect(gw: GatewayProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=HANG_S)
    sock.settimeout(HANG_S)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response read to the end of the connection (every refusal closes it)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), data[:200]
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def raw_exchange(gw: GatewayProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(gw) as sock:
        sock.sendall(request)
        return read_response(sock)


def assert_refused(response: tuple[int, dict[str, str], bytes], status: int, code: str) -> dict[str, Any]:
    got, headers, body = response
    assert got == status, (got, body[:300])
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    return assert_openai_error(status, body, code)


def healthy(gw: GatewayProcess) -> None:
    r = httpx.post(gw.base_url + "/v1/chat/completions", json=chat_body(), headers=AUTH, timeout=HANG_S)
    assert r.status_code == 200, r.text
    assert gw.alive()


# --------------------------------------------------------------------------- 1. nesting


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize("path", ["/key/generate", "/team/new", "/key/sk-anything/regenerate"])
def test_deep_json_on_admin_routes_is_400(gateway: GatewayProcess, path: str) -> None:
    body = b'{"metadata": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"  # 40 KB, inside the 52 KB limit
    r = httpx.post(gateway.base_url + path, content=body, headers=AUTH, timeout=HANG_S)
    error = check(r, 400, "json_too_deep")
    assert str(MAX_JSON_DEPTH) in error["message"]


def test_deep_json_in_a_chat_body_is_400_and_the_limit_itself_is_served(gateway: GatewayProcess) -> None:
    too_deep = json.dumps(chat_body(vendor_knob=nested(300))).encode()  # orjson writes <255 levels
    r = httpx.post(gateway.base_url + "/v1/chat/completions", content=too_deep, headers=AUTH, timeout=HANG_S)
    error = check(r, 400, "json_too_deep")
    assert str(MAX_JSON_DEPTH) in error["message"]
    # Exactly the limit (the body object itself is level 1) is accepted and forwarded upstream.
    deepest = orjson.dumps(chat_body(vendor_knob=nested(MAX_JSON_DEPTH - 1)))
    r = httpx.post(gateway.base_url + "/v1/chat/completions", content=deepest, headers=AUTH, timeout=HANG_S)
    assert r.status_code == 200, r.text
    # Brackets inside strings are text, not nesting.
    text = orjson.dumps(chat_body(vendor_knob="[{" * 1000 + '\\"]'))
    r = httpx.post(gateway.base_url + "/v1/chat/completions", content=text, headers=AUTH, timeout=HANG_S)
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- 2. body size


def test_admin_body_over_the_limit_is_413_after_authentication(gateway: GatewayProcess) -> None:
    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"metadata": {"blob": "'
        for _ in range(20):
            yield b"y" * 4096
        yield b'"}}'

    r = httpx.post(gateway.base_url + "/key/generate", content=chunked(), headers=AUTH, timeout=HANG_S)
    check(r, 413, "request_too_large")
    # Without a valid key the caller learns nothing else: 401, and the body is never read.
    r = httpx.post(gateway.base_url + "/key/generate", content=chunked(), timeout=HANG_S)
    assert r.status_code == 401, r.text
    assert_openai_error(401, r.content)


@pytest.mark.parametrize("path", ["/key/generate", "/v1/chat/completions"])
def test_content_length_over_the_limit_is_refused_before_the_body_is_sent(
    gateway: GatewayProcess, path: str
) -> None:
    # 200 MB announced, nothing sent: the answer must come without waiting for (or reading) it.
    head = (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {MASTER_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 209715200\r\n\r\n"
    )
    assert_refused(raw_exchange(gateway, head.encode()), 413, "request_too_large")
    healthy(gateway)


# --------------------------------------------------------------------------- 3. headers


def test_oversized_header_is_431(gateway: GatewayProcess) -> None:
    head = b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 1024) + b"\r\n\r\n"
    error = assert_refused(raw_exchange(gateway, head), 431, "headers_too_large")
    assert f"{MAX_HEADER_BYTES // 1024} KiB" in error["message"]
    healthy(gateway)


def test_endless_header_is_cut_off_at_the_limit(gateway: GatewayProcess) -> None:
    # A header that never ends (the 100 MB attack): refused once the limit passes, not buffered.
    with connect(gateway) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Big: ")
        sent = 0
        try:
            while sent < 100 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection: what it wrote before may be lost with the RST
        assert sent < 100 * 1024 * 1024, "the server kept reading a 100 MB header"
    healthy(gateway)


def test_too_many_headers_is_431(gateway: GatewayProcess) -> None:
    many = "".join(f"X-H{i}: v\r\n" for i in range(MAX_HEADERS + 1))
    head = f"GET /v1/models HTTP/1.1\r\nHost: gw\r\n{many}\r\n".encode()
    error = assert_refused(raw_exchange(gateway, head), 431, "headers_too_large")
    assert str(MAX_HEADERS) in error["message"]
    # At the limit (Host + 99 more) the request is served.
    enough = "".join(f"X-H{i}: v\r\n" for i in range(MAX_HEADERS - 2))
    head = f"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {MASTER_KEY}\r\n{enough}\r\n"
    with connect(gateway) as sock:
        sock.sendall(head.encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


# --------------------------------------------------------------------------- 4. unfinished requests


def test_slow_headers_get_408_while_others_are_served(gateway: GatewayProcess) -> None:
    with connect(gateway) as slow:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        # While that request is open, other clients are served as usual.
        client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
        for _ in range(3):
            reply = client.chat.completions.create(model=MODEL, messages=chat_body()["messages"])
            assert reply.choices[0].message.content
        error = assert_refused(read_response(slow), 408, "request_timeout")
    assert "headers" in error["message"] and f"{READ_TIMEOUT_S} s" in error["message"]
    assert error["type"] == "timeout"


def test_chunked_body_without_its_last_chunk_gets_408(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {MASTER_KEY}\r\n"
            'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"mod\r\n'.encode()
        )
        error = assert_refused(read_response(sock), 408, "request_timeout")
    assert "body" in error["message"]
    healthy(gateway)


def test_stream_of_empty_lines_is_cut_off(gateway: GatewayProcess) -> None:
    # Empty lines before a request line are allowed (and skipped) by HTTP parsers: sent forever,
    # they used to hold the connection open indefinitely.
    with connect(gateway) as sock:
        sock.settimeout(0.25)
        answer = b""
        for _ in range(HANG_S * 4):
            try:
                sock.sendall(b"\r\n")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
        else:
            pytest.fail("the connection was still open after a stream of empty lines")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert_openai_error(408, answer.partition(b"\r\n\r\n")[2], "request_timeout")


def test_connection_that_sends_nothing_is_closed(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        assert sock.recv(1024) == b""  # closed without an answer: no request was made


# --------------------------------------------------------------------------- 5. malformed HTTP


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: gw\r\nNo colon here\r\n\r\n",
        b"NOT-A-METHOD\x01 / HTTP/1.1\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_http_gets_an_openai_shaped_400(gateway: GatewayProcess, request_bytes: bytes) -> None:
    error = assert_refused(raw_exchange(gateway, request_bytes), 400, "invalid_http_request")
    assert error["type"] == "invalid_request_error"


# --------------------------------------------------------------------------- 6. integer fields


@pytest.mark.parametrize(
    ("field", "literal"),
    [
        ("max_tokens", "1" + "0" * 30),  # beyond 64 bits
        ("max_tokens", str(2**63 - 1)),  # prompt estimate + this overflowed the Redis integer
        ("max_tokens", "-1000000000000000000"),  # a negative reservation would credit TPM
        ("max_tokens", "0"),
        ("max_tokens", "true"),
        ("max_tokens", "12.5"),
        ("max_completion_tokens", str(2**63 - 1)),
        ("n", "1000000000"),
    ],
)
def test_integer_fields_out_of_range_are_400_naming_the_field(
    gateway: GatewayProcess, field: str, literal: str
) -> None:
    body = chat_body()
    body["messages"][0]["content"] = "hello " * 50  # a prompt estimate to add max_tokens to
    raw = orjson.dumps(body)[:-1] + f', "{field}": {literal}}}'.encode()  # literals orjson cannot write
    r = httpx.post(gateway.base_url + "/v1/chat/completions", content=raw, headers=AUTH, timeout=HANG_S)
    error = check(r, 400)
    assert error["param"] == field and field in error["message"]


def test_integer_fields_in_range_are_served(gateway: GatewayProcess) -> None:
    r = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json=chat_body(max_tokens=2**31 - 1, n=1),
        headers=AUTH,
        timeout=HANG_S,
    )
    assert r.status_code in (200, 429), r.text  # admitted, or refused by the TPM limit: never a 500


# --------------------------------------------------------------------------- 7. metrics labels


def test_metrics_label_only_configured_models(gateway: GatewayProcess) -> None:
    junk = "junk-model-" + "z" * 20_000
    for _ in range(3):
        r = httpx.post(gateway.base_url + "/v1/chat/completions", json=chat_body(model=junk), headers=AUTH)
        check(r, 404, "model_not_found")
    healthy(gateway)
    page = httpx.get(gateway.base_url + "/metrics", timeout=HANG_S).text
    assert "junk-model" not in page
    unknown = 'error_type="model_not_found",model="unknown",operation="chat",status="404"'
    assert f"switchyard_requests_total{{{unknown}}}" in page
    served = f'error_type="none",model="{MODEL}",operation="chat",status="200"'
    assert f"switchyard_requests_total{{{served}}}" in page
