"""The router: pick a deployment for a model name, call it, retry, fall back, cool down.

Per request: refresh shared cooldowns if the local copy is stale (at most every ~200 ms), pick
a deployment with the configured strategy (``ModelGroup.pick``), call its provider. Retryable
failures (429, 5xx, timeouts, connection errors) are retried under tenacity with backoff,
preferring a deployment this request has not tried yet; when the model is exhausted the
``fallbacks`` run in order, and context-window / content-policy refusals go to their own
fallback lists. Failing deployments are cooled down (shared through Redis when configured;
the only deployment of a model only under the stricter rule in ``cooldowns``).
A model whose deployments are all cooling down answers 503 at once with ``Retry-After``.

Streams are retried only before the first event: ``chat`` returns once the first event has
arrived. A stream that breaks later ends with an SSE ``data: {"error": {...}}`` event, which
the OpenAI SDK raises as ``APIError``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gateway.errors import GatewayError
from gateway.pipeline import Usage
from gateway.routing.context_window import context_window_exceeded
from gateway.routing.cooldowns import CooldownManager, CooldownSettings
from gateway.routing.deadline import within
from gateway.routing.deployment import Deployment
from gateway.routing.fallbacks import FallbackKind, FallbackTable
from gateway.routing.metrics import count_failure, count_fallback, count_retry, watch_deployments
from gateway.routing.model_group import ModelGroup, Unavailable
from gateway.routing.retry_policy import (
    Failure,
    RetrySettings,
    classify,
    deployment_retry_pause,
    is_retryable,
    make_retrying,
)
from gateway.routing.state import DeploymentState
from gateway.routing.strategies import make_strategy
from gateway.routing.wildcards import WildcardRoutes
from providers.contract import Operation, ProviderCall, ProviderResponse
from providers.errors import ProviderError, ProviderTimeoutError, ProviderUnreachableError
from providers.registry import ProviderRegistry
from providers.schema import GenerationRequest, GenerationResponse, StreamEvent, UsageReport
from providers.usage_tap import UsageTap

if TYPE_CHECKING:
    from gateway.config import RouterSettings
    from gateway.context import RequestContext

log = logging.getLogger("switchyard.routing")

# Each attempt gets at least this long even when the retry budget is nearly spent, so the last
# attempt is a real one rather than an instant timeout.
MIN_ATTEMPT_TIMEOUT_S = 1.0


class NoDeploymentAvailable(Exception):
    """Every deployment of ``model`` is cooling down or at its own limits right now."""

    def __init__(self, model: str, why: Unavailable) -> None:
        super().__init__(f"no deployment of {model!r} is available")
        self.model = model
        self.why = why

    def to_gateway_error(self) -> GatewayError:
        now = time.time()
        if self.why.cooled and not self.why.limited:
            wait = max(1, math.ceil(self.why.retry_at - now))
            return GatewayError(
                503,
                f"every deployment of model {self.model!r} is cooling down after failures; retry in {wait}s",
                "service_unavailable",
                "no_healthy_deployments",
                headers={"retry-after": str(wait)},
            )
        # At their own rpm/tpm/parallel limits: the next minute window frees them.
        wait = max(1, math.ceil(60 - now % 60)) if self.why.limited else 1
        if self.why.cooled:
            wait = min(wait, max(1, math.ceil(self.why.retry_at - now)))
        return GatewayError(
            429,
            f"every deployment of model {self.model!r} is at its rate limit; retry in {wait}s",
            "rate_limit_error",
            "deployment_rate_limited",
            headers={"retry-after": str(wait)},
        )


@dataclass(slots=True)
class Invocation:
    """What to ask of a deployment: an operation, raw (``body``) or typed (``request``), streamed or not."""

    operation: Operation = "chat"
    body: dict[str, Any] | None = None
    request: GenerationRequest | None = None
    stream: bool = False
    # The door's estimate of the request's tokens (prompt + completion budget): the pre-call
    # context-window check (gateway.routing.context_window); 0 checks nothing.
    estimated_tokens: int = 0

    def send(self, provider: Any, call: ProviderCall) -> Awaitable[ProviderResponse | GenerationResponse]:
        if self.request is not None:
            return provider.generate(self.request, call)
        if self.operation == "chat":
            return provider.chat(call)
        if self.operation == "completions":
            return provider.completions(call)
        return provider.embeddings(call)

    def open_stream(self, provider: Any, call: ProviderCall) -> AsyncIterator[Any]:
        if self.request is not None:
            return provider.generate_stream(self.request, call)
        if self.operation == "completions":
            return provider.completions_stream(call)
        return provider.chat_stream(call)

    def tap(self) -> UsageWatcher:
        """What keeps the stream's usage: typed events carry it as ``UsageReport``."""
        return EventUsageTap() if self.request is not None else UsageTap()


class UsageWatcher(Protocol):
    usage: Usage | None

    def inspect(self, event: Any) -> bool: ...


class EventUsageTap:
    """``UsageTap`` for typed streams: keeps the last ``UsageReport``."""

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: Usage | None = None

    def inspect(self, event: StreamEvent) -> bool:
        if isinstance(event, UsageReport):
            self.usage = event.usage
            return True
        return False


@dataclass(slots=True)
class RoutedResponse:
    """A complete response and how it was obtained.

    ``attempts`` counts every upstream call this request made (retries and fallbacks
    included); ``upstream_s`` is the time spent inside upstream calls (every attempt), so the
    gateway's own overhead (routing decisions and retry backoff included) is the request's
    duration minus it.
    """

    response: ProviderResponse | GenerationResponse  # raw bytes, or typed (``Invocation.request``)
    deployment: Deployment
    attempts: int = 1
    upstream_s: float = 0.0

    @property
    def usage(self) -> Usage | None:
        return self.response.usage


class RoutedStream:
    """An upstream stream whose first event has already arrived.

    Iterating yields OpenAI-format SSE events (``b"data: {...}\\n\\n"``, no ``[DONE]``) on the
    raw path, ``StreamEvent``s on the typed one.
    ``usage`` is filled from the upstream's usage chunk by the time iteration ends. If the
    upstream breaks after the first event, iteration raises a ``ProviderError`` whose message
    starts with "stream interrupted" (``error`` keeps the cause); there is no retry once bytes
    went out. ``aclose()`` stops the upstream request (safe to call more than once).
    """

    def __init__(
        self,
        first: Any,
        rest: AsyncIterator[Any],
        deployment: Deployment,
        attempts: int = 1,
        *,
        upstream_s: float = 0.0,
        on_finish: Callable[[RoutedStream, BaseException | None], Any] | None = None,
        tap: UsageWatcher | None = None,
    ) -> None:
        self.deployment = deployment
        self.attempts = attempts
        self.upstream_s = upstream_s
        self.error: BaseException | None = None
        self._first: Any = first
        self._rest = rest
        self._tap = tap if tap is not None else UsageTap()
        self._tap.inspect(first)
        self._on_finish = on_finish
        self._done = False

    @property
    def usage(self) -> Usage | None:
        return self._tap.usage

    def __aiter__(self) -> RoutedStream:
        return self

    async def __anext__(self) -> Any:
        first = self._first
        if first is not None:
            self._first = None
            return first
        if self._done:
            raise StopAsyncIteration
        try:
            event = await self._rest.__anext__()
        except StopAsyncIteration:
            await self._finish(None)
            raise
        except Exception as exc:
            # Bytes already reached the client, so no retry: the error propagates to the chat
            # route, which ends the stream with a ``data: {"error": ...}`` event (the OpenAI
            # SDK raises it as APIError) and records the request as failed.
            self.error = exc
            await self._finish(exc)
            raise interrupted(exc) from exc
        self._tap.inspect(event)
        return event

    async def _finish(self, exc: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        if self._on_finish is not None:
            result = self._on_finish(self, exc)
            if asyncio.iscoroutine(result):
                await result

    async def aclose(self) -> None:
        self._first = None
        try:
            closer = getattr(self._rest, "aclose", None)
            if closer is not None:
                await closer()
        finally:
            await self._finish(None)


def unsupported(model: str, operation: Operation) -> GatewayError:
    """The 400 for a model none of whose deployments serves ``operation``."""
    return GatewayError(
        400,
        f"model {model!r} does not support {operation}",
        "invalid_request_error",
        "operation_not_supported",
        "model",
    )


def interrupted(exc: BaseException) -> ProviderError:
    """The error a stream that broke after its first event ends with (status kept, message marked)."""
    if isinstance(exc, ProviderError):
        return ProviderError(
            exc.status_code, f"stream interrupted: {exc.message}", exc.type, exc.code or "stream_interrupted"
        )
    return ProviderError(502, f"stream interrupted: {type(exc).__name__}", "api_error", "stream_interrupted")


@dataclass(slots=True)
class _Trace:
    """What one request did so far (for headers and the final error)."""

    attempts: int = 0
    upstream_s: float = 0.0
    last_error: BaseException | None = None
    no_deployment: list[NoDeploymentAvailable] = field(default_factory=list)


_OPERATIONS: tuple[Operation, ...] = ("chat", "embeddings", "completions")


def _state(d: Deployment) -> DeploymentState:
    """A fresh routing state (no cooldown, no counters) for deployment ``d``."""
    return DeploymentState(
        id=d.id,
        model_name=d.model_name,
        weight=d.weight,
        rpm=d.rpm,
        tpm=d.tpm,
        max_parallel=d.max_parallel_requests,
        order=d.order,
        cost=d.input_cost_per_token + d.output_cost_per_token,
        deployment=d,
    )


class Router:
    """Maps model names to deployments and calls them through their provider adapters."""

    def __init__(
        self,
        deployments: list[Deployment],
        settings: RouterSettings,
        providers: ProviderRegistry,
        redis: Any = None,
    ) -> None:
        self.deployments = list(deployments)
        self.settings = settings
        self.providers = providers
        self.redis = redis
        self.states: list[DeploymentState] = [_state(d) for d in self.deployments]
        watch_deployments(self)
        by_name: dict[str, list[DeploymentState]] = {}
        for s in self.states:
            by_name.setdefault(s.model_name, []).append(s)
        self.groups: dict[str, ModelGroup] = {name: ModelGroup(name, ds) for name, ds in by_name.items()}
        # Per operation, each model's deployments whose adapter serves it (the same group when all
        # do, so the chat path picks exactly as before; no entry when none does).
        self.serving: dict[Operation, dict[str, ModelGroup]] = {op: {} for op in _OPERATIONS}
        for name in by_name:
            self._index_serving(name)
        # Names with a "*" also serve the names they match (None when there are none).
        self.wildcards = WildcardRoutes.build(self.groups, self.serving)
        self.strategy = make_strategy(settings.routing_strategy)
        # A strategy that reads the request (prefix-cache-aware) is bound to it per pick.
        self._bind_strategy = getattr(self.strategy, "for_request", None)
        self.cooldowns = CooldownManager(
            self.states,
            CooldownSettings(
                allowed_fails=settings.allowed_fails,
                allowed_fails_window_s=settings.allowed_fails_window_s,
                cooldown_time=settings.cooldown_time,
                allowed_fails_set="allowed_fails" in settings.model_fields_set,
            ),
            redis,
        )
        budget = settings.retry_budget_s or settings.timeout or 600.0
        self.retry = RetrySettings(num_retries=settings.num_retries, budget_s=budget)
        self.fallbacks = FallbackTable(
            settings.fallbacks, settings.context_window_fallbacks, settings.content_policy_fallbacks
        )
        missing = {m for m in self.fallbacks.referenced_models() if not self.has_model(m)}
        if missing:
            log.warning("fallbacks name models that are not configured: %s", ", ".join(sorted(missing)))

    def _index_serving(self, name: str) -> None:
        """Fill ``serving`` for model ``name`` from ``groups`` (none: drop it)."""
        group = self.groups.get(name)
        for op in _OPERATIONS:
            table = self.serving[op]
            able = (
                [s for s in group.deployments if op in self.providers.capabilities(s.deployment.provider)]
                if group is not None
                else []
            )
            if not able:
                table.pop(name, None)
            else:
                assert group is not None
                table[name] = group if len(able) == len(group.deployments) else ModelGroup(name, able)

    def replace_model(self, name: str, deployments: list[Deployment]) -> None:
        """Serve model ``name`` from ``deployments`` from now on (an empty list: stop serving it).

        For models whose deployments change while the gateway runs (``gateway.admin.model_sync``:
        models managed through the admin API). A deployment kept unchanged (same id, same params)
        keeps its state, so its cooldown and counters survive; requests under way finish on the
        group they picked from. Synchronous, so no request sees a half-replaced model.
        """
        old = self.groups.get(name)
        kept = {s.id: s for s in old.deployments} if old is not None else {}
        states = []
        for d in deployments:
            s = kept.get(d.id)
            states.append(s if s is not None and s.deployment == d else _state(d))
        self.deployments = [d for d in self.deployments if d.model_name != name] + list(deployments)
        self.states = [s for s in self.states if s.model_name != name] + states
        if states:
            self.groups[name] = ModelGroup(name, states)
        else:
            self.groups.pop(name, None)
        self._index_serving(name)
        self.wildcards = WildcardRoutes.build(self.groups, self.serving)
        self.cooldowns.track(self.states)

    def model_names(self) -> list[str]:
        """Every model name callers may ask for, in config order."""
        return list(self.groups)

    def has_model(self, name: str) -> bool:
        return name in self.groups or (self.wildcards is not None and self.wildcards.match(name) is not None)

    def serves(self, name: str, operation: Operation) -> bool:
        """Whether some deployment of model ``name`` serves ``operation``."""
        return name in self.serving[operation] or (
            self.wildcards is not None
            and name not in self.groups
            and self.wildcards.group(name, operation) is not None
        )

    # ---- the request path ---------------------------------------------------------------

    async def chat(
        self, model: str, body: dict[str, Any], *, stream: bool, ctx: RequestContext
    ) -> RoutedResponse | RoutedStream:
        """A raw OpenAI chat completion (``route`` with a chat ``Invocation``)."""
        return await self.route(model, Invocation("chat", body, None, stream), ctx)

    async def route(self, model: str, inv: Invocation, ctx: RequestContext) -> RoutedResponse | RoutedStream:
        """Serve ``inv`` from a deployment of ``model`` that serves its operation, retrying and
        falling back as configured (fallback models that do not serve it are skipped).

        Raises ``GatewayError`` (404 unknown model, 400 a model that does not serve the operation;
        503/429 when nothing is available) or the last ``ProviderError``. For streams, failures
        before the first event are raised here.
        """
        if model not in self.groups and not self.has_model(model):
            raise GatewayError(404, f"model {model!r} not found", code="model_not_found", param="model")
        groups = self.serving[inv.operation]
        if model not in groups and not self.serves(model, inv.operation):
            raise unsupported(model, inv.operation)
        trace = _Trace()
        queue: list[str] = [model]
        seen = {model}
        i = 0
        while i < len(queue):
            name = queue[i]
            i += 1
            group = groups.get(name)
            if group is None and self.wildcards is not None and name not in self.groups:
                group = self.wildcards.group(name, inv.operation)
            if group is None:
                continue
            try:
                return await self._serve_model(group, inv, ctx, trace)
            except NoDeploymentAvailable as exc:
                trace.no_deployment.append(exc)
                kind = FallbackKind.GENERAL
            except ProviderError as exc:
                trace.last_error = exc
                failure = classify(exc)
                if failure is Failure.REQUEST:
                    raise
                if failure is Failure.CONTEXT_WINDOW:
                    kind = FallbackKind.CONTEXT_WINDOW
                elif failure is Failure.CONTENT_POLICY:
                    kind = FallbackKind.CONTENT_POLICY
                else:
                    kind = FallbackKind.GENERAL
            for target in self.fallbacks.targets(kind, model):
                if target not in seen:
                    seen.add(target)
                    queue.append(target)
                    count_fallback(name, target)
        if trace.last_error is not None:
            raise trace.last_error
        assert trace.no_deployment
        raise trace.no_deployment[0].to_gateway_error()

    async def _serve_model(
        self, group: ModelGroup, inv: Invocation, ctx: RequestContext, trace: _Trace
    ) -> RoutedResponse | RoutedStream:
        """One model name with retries; raises when its deployments are exhausted.

        The first attempt runs directly; only a retryable failure enters tenacity's loop (whose
        setup costs more than the routing decision itself), so success pays nothing for it.
        """
        if self.cooldowns.refresh_due():
            await self.cooldowns.refresh()
        tried: set[DeploymentState] = set()
        last: list[ProviderError] = []
        started = time.monotonic()
        budget = self.retry.budget_s
        try:
            return await self._try_next(group, inv, ctx, trace, tried, last, started)
        except ProviderError as exc:
            if self.retry.num_retries <= 0 or not is_retryable(exc):
                raise
            first_failure = exc

        def others_available() -> bool:
            return group.any_available(time.time(), tried)

        retrying = make_retrying(
            self.retry, others_available, budget_s=budget - (time.monotonic() - started), already=1
        )
        # Tenacity waits only between its own attempts: wait here after the first failure.
        pause = retrying.wait.delay(1, first_failure)  # type: ignore[attr-defined]
        if time.monotonic() - started + pause >= budget:
            raise first_failure
        await asyncio.sleep(pause)
        async for attempt in retrying:
            with attempt:
                count_retry(group.name)
                return await self._try_next(group, inv, ctx, trace, tried, last, started)
        raise AssertionError("unreachable: tenacity reraises the last failure")  # pragma: no cover

    async def _try_next(
        self,
        group: ModelGroup,
        inv: Invocation,
        ctx: RequestContext,
        trace: _Trace,
        tried: set[DeploymentState],
        last: list[ProviderError],
        started: float,
    ) -> RoutedResponse | RoutedStream:
        """Pick a deployment (an untried one first) and make one attempt."""
        strategy = self.strategy if self._bind_strategy is None else self._bind_strategy(inv)
        picked = group.pick(strategy, time.time(), exclude=tried, stream=inv.stream)
        if isinstance(picked, Unavailable):
            if last:
                # The deployments this request already tried are now cooling down: report
                # their real error rather than "unavailable".
                raise last[-1]
            raise NoDeploymentAvailable(group.name, picked)
        tried.add(picked)
        retries_left = picked.deployment.max_retries
        while True:
            remaining = max(MIN_ATTEMPT_TIMEOUT_S, self.retry.budget_s - (time.monotonic() - started))
            trace.attempts += 1
            t0 = time.monotonic()
            try:
                return await self._attempt(picked, inv, ctx, remaining, trace, group.concrete)
            except ProviderError as exc:
                last.append(exc)
                if retries_left <= 0 or not is_retryable(exc):
                    raise
                # The deployment's own ``max_retries`` (LiteLLM's per-deployment client retries):
                # the same deployment again, unless it went into cooldown or time is short.
                pause = deployment_retry_pause(picked.deployment.max_retries - retries_left, exc)
                if picked.cooldown_until > time.time() or (
                    time.monotonic() - started + pause >= self.retry.budget_s
                ):
                    raise
                retries_left -= 1
                count_retry(group.name)
                await asyncio.sleep(pause)
            finally:
                trace.upstream_s += time.monotonic() - t0

    async def _attempt(
        self,
        d: DeploymentState,
        inv: Invocation,
        ctx: RequestContext,
        time_left: float,
        trace: _Trace,
        concrete: dict[str, Deployment] | None = None,
    ) -> RoutedResponse | RoutedStream:
        # ``concrete``: a name served by a wildcard entry, with its own upstream model.
        dep: Deployment = d.deployment if concrete is None else concrete[d.id]
        if inv.estimated_tokens > dep.context_limit and inv.operation == "chat":
            raise context_window_exceeded(dep.provider_model, dep.max_input_tokens, inv.estimated_tokens)
        if dep.shaper is not None:
            inv = dep.shaper.shape(inv)  # defaults and drops, on a copy (retries reuse ``inv``)
        provider = self.providers.get(dep.provider)
        call = dep.provider_call(inv.body if inv.body is not None else {}, ctx.request_id)
        call.timeout = min(call.timeout, time_left)
        t0 = time.monotonic()
        limit = call.timeout
        d.on_start(time.time())
        try:
            if not inv.stream:
                # The adapter enforces call.timeout; the outer guard covers adapters that don't.
                resp = await within(inv.send(provider, call), call.timeout + 1.0)
                d.record_latency(time.monotonic() - t0)
                if resp.usage is not None:
                    d.add_tokens(time.time(), resp.usage.total_tokens)
                d.on_end()
                self.cooldowns.record_success(d)
                return RoutedResponse(resp, dep, trace.attempts, trace.upstream_s + time.monotonic() - t0)
            first_timeout = min(
                dep.stream_timeout or self.settings.first_chunk_timeout or call.timeout, call.timeout
            )
            if call.stream_timeout is None:
                call.stream_timeout = first_timeout
            limit = first_timeout
            events = inv.open_stream(provider, call)
            try:
                first = await within(events.__anext__(), first_timeout)
            except BaseException:
                closer = getattr(events, "aclose", None)
                if closer is not None:
                    await closer()
                raise
        except StopAsyncIteration:
            d.on_end()
            raise ProviderError(502, "upstream ended the stream without any event") from None
        except TimeoutError:
            d.on_end()
            d.record_latency(time.monotonic() - t0)
            exc = ProviderTimeoutError(f"upstream did not answer within {limit:g}s")
            await self._failed(d, exc)
            raise exc from None
        except ProviderError as exc:
            d.on_end()
            if isinstance(exc, ProviderTimeoutError):
                d.record_latency(time.monotonic() - t0)
            await self._failed(d, exc)
            raise
        except (ConnectionError, OSError) as exc:
            d.on_end()
            err = ProviderUnreachableError(f"upstream unreachable: {type(exc).__name__}")
            await self._failed(d, err)
            raise err from exc
        except BaseException:
            d.on_end()
            raise
        ttft = time.monotonic() - t0
        d.record_ttft(ttft)
        self.cooldowns.record_success(d)
        return RoutedStream(
            first,
            events,
            dep,
            trace.attempts,
            upstream_s=trace.upstream_s + ttft,
            on_finish=lambda s, exc: self._stream_finished(d, s, exc),
            tap=inv.tap(),
        )

    async def _failed(self, d: DeploymentState, exc: ProviderError) -> None:
        """Count a failure towards ``d``'s cooldown when it says something about ``d``."""
        failure = classify(exc)
        count_failure(d.id, failure.value)
        if failure is Failure.RETRYABLE or failure is Failure.DEPLOYMENT:
            retry_after = exc.retry_after if exc.status_code == 429 else None
            await self.cooldowns.record_failure(d, retry_after=retry_after)

    async def _stream_finished(self, d: DeploymentState, s: RoutedStream, exc: BaseException | None) -> None:
        d.on_end()
        usage = s.usage
        if usage is not None:
            d.add_tokens(time.time(), usage.total_tokens)
        if isinstance(exc, ProviderError):
            await self._failed(d, exc)
        elif exc is not None:
            log.warning("stream from deployment %s broke: %s", d.id, type(exc).__name__)
