"""``POST /v1/chat/completions``: the hot path, as a plain ASGI endpoint.

Written against raw ASGI rather than FastAPI's dependency injection: this route carries every
request, and each avoided layer is latency and CPU per request. The stages run in the order of
``gateway.pipeline``:

    authenticate -> read + check body -> model access -> admit (limits) -> cache lookup
    -> route + call provider -> respond -> [finally] settle limits, store in cache, record spend

The ``finally`` block runs on every exit path: success, error, and the client disconnecting
(a watcher task cancels the handler when the client goes away, which closes the upstream call).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from gateway import metrics
from gateway.auth import token_from_headers
from gateway.cache.lru import Entry
from gateway.cache.service import StreamRecorder
from gateway.context import RequestContext
from gateway.errors import GatewayError, as_gateway_error, bad_request, error_body
from gateway.limits.estimate import MAX_COMPLETION_TOKENS, MAX_N
from gateway.pipeline import Admission, Principal, Usage, UsageEvent
from gateway.routing.router import RoutedResponse, RoutedStream
from gateway.server.body import ClientGone, check_json_depth, read_body
from gateway.services import Services
from providers.formats.openai_chat import parse_usage
from providers.usage_tap import UsageTap

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_CT = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]\n\n"


# Request ids: a random per-process prefix and a counter. Unique without a getrandom() syscall
# per request (uuid4 costs one); ids need not be unpredictable.
_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


class _Outcome:
    """What happened, filled in as the stages run; read by the ``finally`` block."""

    __slots__ = ("cache_hit", "deployment", "error_code", "model", "status", "usage")

    def __init__(self) -> None:
        self.model = ""
        self.status = 500
        self.usage: Usage | None = None
        self.deployment: Any = None
        self.cache_hit = False
        self.error_code: str | None = None


class ChatCompletions:
    """The ASGI endpoint; the ``Services`` come from ``scope["app"].state.services``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        services: Services = scope["app"].state.services
        headers = _headers(scope)
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128]
        if not request_id or not (request_id.isascii() and request_id.isprintable()):
            request_id = _new_request_id()  # none given, or one we could not echo in a header
        outcome = _Outcome()
        metrics.IN_FLIGHT.inc()
        try:
            await self._serve(receive, send, services, headers, request_id, started, outcome)
        except ClientGone:
            outcome.status = 499
        except Exception as exc:
            err = as_gateway_error(exc)
            outcome.status = err.status
            await _send_error(send, err, request_id)
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.observe(outcome.model or "-", outcome.status, time.monotonic() - started)

    async def _serve(
        self,
        receive: Receive,
        send: Send,
        services: Services,
        headers: dict[bytes, bytes],
        request_id: str,
        started: float,
        outcome: _Outcome,
    ) -> None:
        # 1. Authenticate: bearer token -> principal (anonymous in local mode).
        principal = await services.auth.authenticate(_token(headers))

        # 2. Read the body (bounded) and check only the fields the gateway needs.
        raw = await read_body(receive, headers.get(b"content-length"), services.config.max_request_body_bytes)
        body = _parse_body(raw)
        model: str = body["model"]
        outcome.model = model
        stream = bool(body.get("stream", False))
        include_usage = stream and _wants_usage(body)

        # 3. Model access: the model must exist and the principal may use it.
        _check_model(services, principal, model)

        # 4. Admission: reserve against every limit scope (429 when over). A response this process
        # already holds in cache is admitted as an instant request: counted and checked like any
        # other, but it spends no tokens and is over at once, so there is nothing to settle.
        started_at = time.time() - (time.monotonic() - started)
        ctx = RequestContext(request_id, principal, model, stream, started, started_at)
        cache = services.response_cache
        plan = None
        hit = None
        if cache is not None:
            control = headers.get(b"cache-control")
            plan = cache.plan(principal, body, control.decode("latin-1") if control else None)
            hit = cache.peek(plan)
        pending: asyncio.Future[Entry | None] | None = None
        if hit is not None:
            admission = await services.limiter.admit(principal, model, 0, instant=True)
        else:
            if cache is not None and plan is not None and plan.lookup and cache.pool is not None:
                # Ask Redis for the entry now: the GET is written with the admission's script
                # (auto-pipelining), so a miss or a shared hit costs one round trip, not two.
                pending = asyncio.ensure_future(cache.lookup(plan))
            try:
                admission = await services.limiter.admit(principal, model, _estimate_tokens(body))
            except BaseException:
                if pending is not None:
                    pending.cancel()
                    pending.add_done_callback(_retrieve)
                raise

        recorder = None
        try:
            # 5. Cache lookup (gateway.cache decides what is cacheable; streams replay as SSE).
            if cache is not None and plan is not None:
                if hit is None:
                    hit = await (pending if pending is not None else cache.lookup(plan))
                if hit is not None:
                    outcome.cache_hit = True
                    outcome.usage = Usage()  # no upstream tokens were spent
                    extra = [(k.encode(), v.encode()) for k, v in cache.hit_headers(plan).items()]
                    if stream:
                        await _send_sse_body(send, cache.sse(plan, hit), request_id, admission, extra)
                    else:
                        await _send_json(send, 200, hit.body, request_id, admission, extra)
                    outcome.status = 200
                    return
                recorder = cache.recorder(plan) if stream else None

            # 6. Route and call the provider; the watch cancels it if the client goes away.
            with _DisconnectWatch(receive) as watch:
                upstream_started = time.monotonic()
                routed = await services.router.chat(model, body, stream=stream, ctx=ctx)
                # The router's own measure (upstream waits and retry backoff) when it gives one.
                upstream_s = getattr(routed, "upstream_s", 0.0) or (time.monotonic() - upstream_started)
                outcome.deployment = routed.deployment
                if isinstance(routed, RoutedStream):
                    overhead = time.monotonic() - started - upstream_s
                    await _send_stream(
                        send, routed, include_usage, request_id, admission, overhead, outcome, watch, recorder
                    )
                    return
                outcome.usage = routed.response.usage
                watch.finish()
                await _send_routed_json(send, routed, request_id, admission, started, upstream_s)
                outcome.status = 200

            # 7. Store in cache (in the background; the response has been sent).
            if plan is not None and cache is not None:
                cache.store(plan, routed.response.body)
        except ClientGone:
            outcome.status = 499
            outcome.error_code = "client_disconnected"
            raise
        except Exception as exc:
            if outcome.status != 200:  # a failure after the response was sent does not change it
                err = as_gateway_error(exc, log_unexpected=False)
                outcome.status = err.status
                outcome.error_code = err.code or err.type
            raise
        finally:
            # 8. Record spend and settle limits, whatever happened above (spend first: it is journaled
            # without awaiting, so a crash during the settle's Redis round trip does not lose it).
            _record(services, ctx, outcome)
            await _settle(admission, outcome)


# --------------------------------------------------------------------------- stages


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # A lookup abandoned because admission refused: its outcome is not wanted, nor worth a warning.
    if not fut.cancelled():
        fut.exception()


def _headers(scope: Scope) -> dict[bytes, bytes]:
    wanted = (b"authorization", b"api-key", b"x-request-id", b"content-length", b"cache-control")
    return {k: v for k, v in scope["headers"] if k in wanted}


def _token(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization")
    api_key = headers.get(b"api-key")
    return token_from_headers(
        auth.decode("latin-1") if auth is not None else None,
        api_key.decode("latin-1") if api_key is not None else None,
    )


# Integer fields the gateway does arithmetic with (the TPM reservation, a Redis integer): (low, high).
_INT_FIELDS = (
    ("max_tokens", 1, MAX_COMPLETION_TOKENS),
    ("max_completion_tokens", 1, MAX_COMPLETION_TOKENS),
    ("n", 1, MAX_N),
)


def _parse_body(raw: bytes) -> dict[str, Any]:
    """Parse with orjson and check only what the gateway itself relies on."""
    if not raw:
        raise bad_request("request body is empty; expected a JSON object", code="invalid_json")
    check_json_depth(raw)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' is required and must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a 'role'", f"messages[{i}]")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    if options is not None and not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
    for name, low, high in _INT_FIELDS:
        value = body.get(name)
        if value is not None and (type(value) is not int or not low <= value <= high):
            raise bad_request(f"'{name}' must be an integer from {low} to {high}", name)
    return body


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _check_model(services: Services, principal: Principal, model: str) -> None:
    allowed = principal.models
    if not services.router.has_model(model):
        names = [m for m in services.router.model_names() if not allowed or m in allowed]
        listing = ", ".join(names) if names else "none are configured"
        raise GatewayError(
            404,
            f"The model '{model}' does not exist. Available models: {listing}",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    if allowed and model not in allowed:
        raise GatewayError(
            403,
            f"This key is not allowed to use the model '{model}'",
            "permission_error",
            "model_not_allowed",
            "model",
        )


def _estimate_tokens(body: dict[str, Any]) -> int:
    """A cheap upper-ish estimate for the limiter: ~4 characters a token, plus the output cap."""
    chars = 0
    for message in body["messages"]:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return chars // 4 + (cap if isinstance(cap, int) else 0)


async def _settle(admission: Admission, outcome: _Outcome) -> None:
    try:
        await admission.settle(outcome.usage if outcome.status < 400 else None)
    except Exception:
        import logging

        logging.getLogger("switchyard.chat").exception("limiter settle failed")


def _record(services: Services, ctx: RequestContext, outcome: _Outcome) -> None:
    dep = outcome.deployment
    usage = outcome.usage or Usage()
    ok = outcome.status < 400
    event = UsageEvent(
        request_id=ctx.request_id,
        principal=ctx.principal,
        model=ctx.model,
        deployment_id=dep.id if dep is not None and not outcome.cache_hit else None,
        provider_model=dep.provider_model if dep is not None else None,
        usage=usage,
        cost=0.0 if outcome.cache_hit or dep is None else dep.cost(usage),
        status="success" if ok else "failure",
        cache_hit=outcome.cache_hit,
        started_at=ctx.started_at,
        ended_at=time.time(),
        stream=ctx.stream,
        error_code=None if ok else outcome.error_code,
    )
    try:
        services.spend.record(event)
    except Exception:
        import logging

        logging.getLogger("switchyard.chat").exception("spend record failed")


# --------------------------------------------------------------------------- responses


class _DisconnectWatch:
    """Cancels the current task when the client disconnects; ``gone`` tells whether it did.

    The request body has been read by now, so the next ASGI message can only be
    ``http.disconnect`` (uvicorn also sends it once the response is complete, hence ``finish``).
    """

    __slots__ = ("_done", "_task", "_watcher", "gone", "receive")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.gone = False
        self._done = False
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None

    def __enter__(self) -> _DisconnectWatch:
        self._task = asyncio.current_task()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
        if not self._done and self._task is not None:
            self.gone = True
            self._task.cancel()

    def finish(self) -> None:
        """The response is about to complete; a disconnect from now on is the normal end."""
        self._done = True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._done = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self.gone and exc_type is asyncio.CancelledError and self._task is not None:
            # The cancellation was ours (client gone), not the server's: swallow it.
            self._task.uncancel()
            raise ClientGone() from None
        return False


def _common_headers(request_id: str, admission: Admission) -> list[tuple[bytes, bytes]]:
    out = [(b"x-request-id", request_id.encode("latin-1"))]
    for name, value in admission.headers.items():
        out.append((name.lower().encode("latin-1"), str(value).encode("latin-1")))
    return out


def _routing_headers(routed: RoutedResponse | RoutedStream, overhead_s: float) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-switchyard-deployment", routed.deployment.id.encode("latin-1")),
        (b"x-switchyard-attempts", str(routed.attempts).encode()),
        (b"x-switchyard-overhead-ms", f"{overhead_s * 1000:.3f}".encode()),
    ]


async def _send_json(
    send: Send,
    status: int,
    body: bytes,
    request_id: str,
    admission: Admission | None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [_JSON_CT, (b"content-length", str(len(body)).encode())]
    if admission is not None:
        headers += _common_headers(request_id, admission)
    else:
        headers.append((b"x-request-id", request_id.encode("latin-1")))
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_routed_json(
    send: Send,
    routed: RoutedResponse,
    request_id: str,
    admission: Admission,
    started: float,
    upstream_s: float,
) -> None:
    overhead = time.monotonic() - started - upstream_s
    extra = _routing_headers(routed, overhead)
    await _send_json(send, 200, routed.response.body, request_id, admission, extra)


async def _send_stream(
    send: Send,
    routed: RoutedStream,
    include_usage: bool,
    request_id: str,
    admission: Admission,
    overhead: float,
    outcome: _Outcome,
    watch: _DisconnectWatch,
    recorder: StreamRecorder | None = None,
) -> None:
    headers = _SSE_HEADERS + _common_headers(request_id, admission) + _routing_headers(routed, overhead)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        outcome.status = 200
        strip = None if include_usage else UsageTap()
        try:
            async for event in routed:
                if not event:
                    continue
                if recorder is not None:
                    recorder.feed_sse(event)
                if strip is not None and strip.inspect(event):
                    continue  # the usage-only chunk we asked for on the client's behalf
                await send({"type": "http.response.body", "body": event, "more_body": True})
        except Exception as exc:
            # Headers are gone already: report the failure the way OpenAI does, as an SSE event.
            err = as_gateway_error(exc)
            outcome.status = err.status
            outcome.error_code = err.code or err.type
            outcome.usage = routed.usage
            watch.finish()
            payload = error_body(err.message, err.type, err.code, err.param)
            event = b"data: " + payload + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return
        outcome.usage = routed.usage
        watch.finish()
        broke = getattr(routed, "error", None)
        if broke is not None:
            # The router already ended the stream with an SSE error event: no [DONE] after it.
            err = as_gateway_error(broke, log_unexpected=False)
            outcome.status = err.status
            outcome.error_code = err.code or err.type
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await send({"type": "http.response.body", "body": _DONE, "more_body": False})
        if recorder is not None:
            recorder.finish()  # stores the assembled completion only if every choice finished
    finally:
        if outcome.usage is None:
            outcome.usage = routed.usage
        await routed.aclose()


async def _send_sse_body(
    send: Send, body: bytes, request_id: str, admission: Admission, extra: list[tuple[bytes, bytes]]
) -> None:
    """A whole SSE stream at once (a cached response replayed)."""
    headers = _SSE_HEADERS + _common_headers(request_id, admission) + extra
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(send: Send, err: GatewayError, request_id: str) -> None:
    body = err.body()
    headers = [_JSON_CT, (b"content-length", str(len(body)).encode()), (b"x-request-id", request_id.encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()]
    try:
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    except Exception:
        # The response had already started (or the client is gone): nothing more to say.
        pass


def parse_usage_body(body: bytes) -> Usage | None:
    """Usage from a complete OpenAI JSON response body (used for cache hits by other stages)."""
    try:
        return parse_usage(orjson.loads(body).get("usage"))
    except (orjson.JSONDecodeError, AttributeError):
        return None
