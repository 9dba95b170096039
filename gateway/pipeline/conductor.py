"""The one pipeline: every door's requests run these stages, in this order.

    1. authenticate       the door's API key -> Principal (anonymous in local mode)
    2. read               the door parses and checks its body (bounded) -> DoorRequest
    3. model access       the model exists, serves the door's operation, and the key may use it
    4. admit              reserve against every limit scope (429 when over); a cached answer this
                          process holds is admitted as an instant request
    5. cache              answer from the cache when the door's request is cacheable
    6. route + provider   retries, fallbacks, cooldowns (``gateway.routing``); the answer goes
                          back raw (bytes untouched: the fast path) or through the door's writer
    7. [finally]          record spend (with the operation), settle limits, store in cache

Step 7 runs on every exit path exactly once: success, error, and the client disconnecting (a
watcher task cancels the request when the client goes away, which closes the upstream call).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from gateway import metrics, tracing
from gateway.auth import KEY_HEADERS
from gateway.context import RequestContext
from gateway.doors.base import Door, DoorCall, DoorRequest
from gateway.errors import GatewayError, as_gateway_error
from gateway.keys.customers import CUSTOMER_HEADERS, admit_customer
from gateway.pipeline.assemble import Assembler
from gateway.pipeline.respond import (
    SSE_HEADERS,
    DisconnectWatch,
    Headers,
    Receive,
    Scope,
    Send,
    common_headers,
    routing_headers,
    send_body,
    send_error,
)
from gateway.pipeline.stages import Admission, Principal, Usage, UsageEvent
from gateway.routing.router import Invocation, RoutedResponse, RoutedStream, unsupported
from gateway.routing.wildcards import model_allowed
from gateway.server.body import ClientGone, read_body
from providers.contract import ProviderResponse
from providers.usage_tap import UsageTap

if TYPE_CHECKING:
    from gateway.cache.lru import Entry
    from gateway.cache.service import CachePlan, StreamRecorder
    from gateway.services import Services

log = logging.getLogger("switchyard.pipeline")

# Headers every request may use; a door adds its own (``Door.extra_headers``).
_COMMON_HEADERS = (
    *(h.encode() for h in KEY_HEADERS),
    *CUSTOMER_HEADERS,
    b"x-request-id",
    b"content-length",
    b"cache-control",
)

# Request ids: a random per-process prefix and a counter. Unique without a getrandom() syscall
# per request (uuid4 costs one); ids need not be unpredictable.
_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


class Endpoint:
    """The ASGI endpoint of one door; the ``Services`` come from ``scope["app"].state.services``."""

    __slots__ = ("door", "wanted")

    def __init__(self, door: Door) -> None:
        self.door = door
        self.wanted = frozenset(_COMMON_HEADERS + door.extra_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        wanted = self.wanted
        headers = {k: v for k, v in scope["headers"] if k in wanted}
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128]
        if not request_id or not (request_id.isascii() and request_id.isprintable()):
            request_id = _new_request_id()  # none given, or one we could not echo in a header
        run = _Run(self.door, scope["app"].state.services, headers, request_id, started)
        # Tracing off (the usual case): one test, no span objects.
        span = tracing.start_request(scope, self.door.operation, request_id) if tracing.tracer else None
        metrics.IN_FLIGHT.inc()
        try:
            await run.serve(scope, receive, send)
        except ClientGone:
            run.status = 499
        except Exception as exc:
            err = as_gateway_error(exc)
            run.status = err.status
            run.error_code = run.error_code or err.code or err.type
            door = self.door
            await send_error(
                send, err.status, door.write_error(err), request_id, err.headers, door.content_type
            )
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.observe(
                run.model or "-", self.door.operation, run.status, time.monotonic() - started, run.error_code
            )
            if span is not None:
                span.end(run.model, run.status, run.error_code, run.usage, run.deployment, run.cache_hit)


class _Run:
    """One request going through the stages; what happened is kept for step 7."""

    __slots__ = (
        "cache_hit",
        "deployment",
        "door",
        "end_user",
        "error_code",
        "headers",
        "model",
        "request_id",
        "services",
        "started",
        "status",
        "usage",
    )

    def __init__(
        self, door: Door, services: Services, headers: dict[bytes, bytes], request_id: str, started: float
    ) -> None:
        self.door = door
        self.services = services
        self.headers = headers
        self.request_id = request_id
        self.started = started
        self.model = ""
        self.status = 500
        self.usage: Usage | None = None
        self.deployment: Any = None
        self.cache_hit = False
        self.end_user: str | None = None
        self.error_code: str | None = None

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        services, door, headers = self.services, self.door, self.headers
        # 1. Authenticate.
        principal = await tracing.step("auth", services.auth.authenticate(door.token(headers)))

        # 2. Read the body (bounded); the door checks only the fields the gateway needs.
        raw = await read_body(receive, headers.get(b"content-length"), services.max_body_bytes)
        call = DoorCall(headers, principal, services, self.request_id)
        req = await door.read(raw, call)
        policy = principal.policy
        if policy is not None:
            # The key's alias for the model, and its budget for the model served (LiteLLM key fields).
            target = policy.serve(req.model)
            if target != req.model and req.cache_material is not None:
                # Another key of the tenant may alias the same name to another model.
                req.cache_material = {**req.cache_material, "model": target}
            req.model = target
        self.model = req.model
        # The customer (LiteLLM end user) the request names: refused when blocked, outside its models
        # or over budget; its limits join the key's.
        customer = None
        if services.customers is not None:
            principal, customer, self.end_user = await admit_customer(
                services.customers, headers, req, principal
            )

        # 3. Model access.
        check_model(services, principal, req.model, door)

        # 4. Admission (with a cache peek first: a hit this process holds is admitted as instant).
        started_at = time.time() - (time.monotonic() - self.started)
        ctx = RequestContext(self.request_id, principal, req.model, req.stream, self.started, started_at)
        cache = services.response_cache
        plan: CachePlan | None = None
        hit: Entry | None = None
        if cache is not None and req.cache_material is not None and (door.cache_streams or not req.stream):
            control = headers.get(b"cache-control")
            plan = cache.plan(
                principal, req.cache_material, control.decode("latin-1") if control else None, door.operation
            )
            hit = cache.peek(plan)
        pending: asyncio.Future[Entry | None] | None = None
        if hit is not None:
            admission = await tracing.step(
                "rate_limits", services.limiter.admit(principal, req.model, 0, instant=True)
            )
        else:
            if cache is not None and plan is not None and plan.lookup and cache.pool is not None:
                # Ask Redis for the entry now: the GET is written with the admission's script
                # (auto-pipelining), so a miss or a shared hit costs one round trip, not two.
                pending = asyncio.ensure_future(tracing.step("cache_lookup", cache.lookup(plan)))
            try:
                admission = await tracing.step(
                    "rate_limits", services.limiter.admit(principal, req.model, req.estimated_tokens)
                )
            except BaseException:
                if pending is not None:
                    pending.cancel()
                    pending.add_done_callback(_retrieve)
                raise
        if policy is not None:
            policy.annotate(admission.headers)  # the soft-budget warning, once the key has crossed it
        if customer is not None:
            customer.annotate(admission.headers)

        try:
            # 5. Cache.
            recorder: StreamRecorder | None = None
            if cache is not None and plan is not None:
                if hit is None:
                    hit = await (
                        pending if pending is not None else tracing.step("cache_lookup", cache.lookup(plan))
                    )
                if hit is not None:
                    await self._answer_cached(send, req, plan, hit, admission)
                    return
                recorder = cache.recorder(plan) if req.stream else None

            # 6. Route and call the provider; the watch cancels it if the client goes away.
            with DisconnectWatch(receive, scope) as watch:
                upstream_started = time.monotonic()
                inv = Invocation(door.capability, req.body, req.request, req.stream, req.estimated_tokens)
                routed = await services.router.route(req.model, inv, ctx)
                # The router's own measure (upstream waits and retry backoff) when it gives one.
                upstream_s = routed.upstream_s or (time.monotonic() - upstream_started)
                self.deployment = routed.deployment
                if isinstance(routed, RoutedStream):
                    overhead = time.monotonic() - self.started - upstream_s
                    await self._stream(send, req, routed, admission, overhead, watch, recorder, call)
                    return
                self.usage = routed.response.usage
                watch.finish()
                body = await self._answer(send, req, routed, admission, upstream_s, call)

            # 7a. Store in cache (in the background; the response has been sent).
            if plan is not None and cache is not None:
                cache.store(plan, body)
        except ClientGone:
            self.status = 499
            self.error_code = "client_disconnected"
            raise
        except Exception as exc:
            if self.status != 200:  # a failure after the response was sent does not change it
                err = as_gateway_error(exc, log_unexpected=False)
                self.status = err.status
                self.error_code = err.code or err.type
            raise
        finally:
            # 7b. Record spend and settle limits, whatever happened above (spend first: it is
            # journaled without awaiting, so a crash during the settle's round trip keeps it).
            self._record(ctx)
            await self._settle(admission)

    # ---- answers ---------------------------------------------------------------------------

    async def _answer_cached(
        self, send: Send, req: DoorRequest, plan: CachePlan, hit: Entry, admission: Admission
    ) -> None:
        cache = self.services.response_cache
        assert cache is not None
        self.cache_hit = True
        self.usage = Usage()  # no upstream tokens were spent
        headers = common_headers(self.request_id, admission)
        headers += [(k.encode(), v.encode()) for k, v in cache.hit_headers(plan).items()]
        if req.stream:
            body = self.door.replay(hit.body, req)
            assert body is not None  # streams are cached only on doors that replay them
            headers[:0] = SSE_HEADERS
            await self._send_whole(send, headers, body)
        else:
            headers.insert(0, (b"content-type", self.door.content_type))
            await send_body(send, 200, hit.body, headers)
        self.status = 200

    @staticmethod
    async def _send_whole(send: Send, headers: Headers, body: bytes) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _answer(
        self,
        send: Send,
        req: DoorRequest,
        routed: RoutedResponse,
        admission: Admission,
        upstream_s: float,
        call: DoorCall,
    ) -> bytes:
        """Send a complete answer; returns the body sent (what the cache keeps)."""
        response = routed.response
        if isinstance(response, ProviderResponse):
            body = response.body  # the fast path: the upstream's bytes, untouched
        else:
            body = self.door.write(response, req)
        overhead = time.monotonic() - self.started - upstream_s
        metrics.OVERHEAD.observe(overhead)
        headers = [(b"content-type", self.door.content_type)]
        headers += common_headers(self.request_id, admission)
        headers += routing_headers(routed.deployment.id, routed.attempts, overhead)
        if not isinstance(response, ProviderResponse):
            # Before the body goes: a client that reads the answer back as soon as it has it (a
            # stored Response's id) must find it. A failure here is this request's error.
            await self.door.completed(req, response, call)
        await send_body(send, 200, body, headers)
        self.status = 200
        return body

    async def _stream(
        self,
        send: Send,
        req: DoorRequest,
        routed: RoutedStream,
        admission: Admission,
        overhead: float,
        watch: DisconnectWatch,
        recorder: StreamRecorder | None,
        call: DoorCall,
    ) -> None:
        door = self.door
        typed = req.request is not None
        headers = SSE_HEADERS + common_headers(self.request_id, admission)
        headers += routing_headers(routed.deployment.id, routed.attempts, overhead)
        writer = door.stream_writer(req) if typed else None
        assembler = Assembler() if typed else None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            self.status = 200
            # The router holds the first event already: it goes out next, with no upstream wait.
            metrics.observe_ttft(req.model, time.monotonic() - self.started)
            metrics.OVERHEAD.observe(overhead)
            strip = None if req.include_usage else UsageTap()
            try:
                async for event in routed:
                    if writer is not None:
                        assert assembler is not None
                        assembler.feed(event)
                        out = writer.write(event)
                    else:
                        # Raw: the upstream's event, untouched (but for the usage chunk the
                        # gateway asked for on the client's behalf).
                        out = event
                        if recorder is not None:
                            recorder.feed_sse(event)
                        if strip is not None and strip.inspect(event):
                            continue
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                tail = b"" if routed.error is not None else _end(writer)
                if assembler is not None and routed.error is None:
                    # Before the final event, for the reason given in ``_answer``; a failure here
                    # ends the stream with the door's error event instead.
                    await door.completed(req, assembler.result(), call)
            except Exception as exc:
                # Headers are gone already: report the failure as an event of the door's format.
                err = as_gateway_error(exc)
                self.status = err.status
                self.error_code = err.code or err.type
                self.usage = routed.usage
                watch.finish()
                await send({"type": "http.response.body", "body": door.stream_error(err), "more_body": False})
                return
            self.usage = routed.usage
            watch.finish()
            broke = routed.error
            if broke is not None:
                # The stream already ended with an error event: no end marker after it.
                err = as_gateway_error(broke, log_unexpected=False)
                self.status = err.status
                self.error_code = err.code or err.type
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            if recorder is not None:
                recorder.finish()  # stores the assembled completion only if every choice finished
        finally:
            if self.usage is None:
                self.usage = routed.usage
            await routed.aclose()

    # ---- step 7 ----------------------------------------------------------------------------

    async def _settle(self, admission: Admission) -> None:
        try:
            await admission.settle(self.usage if self.status < 400 else None)
        except Exception:
            log.exception("limiter settle failed")

    def _record(self, ctx: RequestContext) -> None:
        dep = self.deployment
        usage = self.usage or Usage()
        ok = self.status < 400
        event = UsageEvent(
            request_id=ctx.request_id,
            principal=ctx.principal,
            model=ctx.model,
            deployment_id=dep.id if dep is not None and not self.cache_hit else None,
            provider_model=dep.provider_model if dep is not None else None,
            usage=usage,
            cost=0.0 if self.cache_hit or dep is None else dep.cost(usage),
            status="success" if ok else "failure",
            cache_hit=self.cache_hit,
            started_at=ctx.started_at,
            ended_at=time.time(),
            stream=ctx.stream,
            error_code=None if ok else self.error_code,
            operation=self.door.operation,
            end_user=self.end_user,
        )
        policy = ctx.principal.policy
        if policy is not None:
            event.metadata = policy.spend_metadata()  # the key's tags: spend by tag
        try:
            self.services.spend.record(event)
        except Exception:
            log.exception("spend record failed")


_DONE = b"data: [DONE]\n\n"


def _end(writer: Any) -> bytes:
    return writer.end() if writer is not None else _DONE


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # A lookup abandoned because admission refused: its outcome is not wanted, nor worth a warning.
    if not fut.cancelled():
        fut.exception()


def check_model(services: Services, principal: Principal, model: str, door: Door) -> None:
    """The model exists (404), serves the door's operation (400), and the key may use it (403)."""
    allowed = principal.models
    router = services.router
    if not router.has_model(model):
        names = [m for m in router.model_names() if not allowed or m in allowed]
        listing = ", ".join(names) if names else "none are configured"
        raise GatewayError(
            404,
            f"The model '{model}' does not exist. Available models: {listing}",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    if allowed and model not in allowed and not model_allowed(allowed, model):
        raise GatewayError(
            403,
            f"This key is not allowed to use the model '{model}'",
            "permission_error",
            "model_not_allowed",
            "model",
        )
    if not router.serves(model, door.capability):
        raise unsupported(model, door.capability)
