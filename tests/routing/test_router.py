"""The router against real fake upstreams over loopback HTTP: retries, fallbacks, cooldowns, streams."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from gateway.errors import GatewayError
from gateway.routing.router import RoutedResponse, RoutedStream
from providers.errors import ProviderError
from tests.routing.router_harness import BODY, ctx, entry, router_for
from tests.support import misbehaving_upstream as mu


def content(r: RoutedResponse | RoutedStream) -> str:
    assert isinstance(r, RoutedResponse)
    return orjson.loads(r.response.body)["choices"][0]["message"]["content"]


async def test_retryable_failures_are_retried_up_to_num_retries(upstream) -> None:
    a = upstream("a")
    a.script(mu.server_error(), mu.rate_limited(), mu.ok("third time"))
    async with router_for([entry("m", a)], num_retries=2, allowed_fails=10) as router:
        r = await router.chat("m", BODY, stream=False, ctx=ctx())
    assert content(r) == "third time"
    assert r.attempts == 3
    assert a.chat_hits == 3


async def test_retries_stop_at_num_retries(upstream) -> None:
    a = upstream("a", mu.server_error("boom"))
    async with router_for([entry("m", a)], num_retries=1, allowed_fails=10) as router:
        with pytest.raises(ProviderError) as info:
            await router.chat("m", BODY, stream=False, ctx=ctx())
    assert info.value.status_code == 500 and "boom" in info.value.message
    assert a.chat_hits == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_client_errors_are_never_retried(upstream, status: int) -> None:
    a = upstream("a", mu.error(status, "no", type="invalid_request_error"))
    b = upstream("b")
    async with router_for([entry("m", a)], num_retries=3) as router:
        with pytest.raises(ProviderError) as info:
            await router.chat("m", BODY, stream=False, ctx=ctx())
    assert info.value.status_code == status
    assert a.chat_hits == 1
    assert b.chat_hits == 0


async def test_a_retry_goes_to_a_different_deployment(upstream) -> None:
    bad = upstream("bad", mu.server_error())
    good = upstream("good")
    async with router_for([entry("m", bad), entry("m", good)], num_retries=1, allowed_fails=1000) as router:
        attempts = 0
        for _ in range(30):
            r = await router.chat("m", BODY, stream=False, ctx=ctx())
            assert content(r) == "good"
            attempts += r.attempts
    # Every request ends on "good"; those that started on "bad" retried once, never on "bad" again.
    assert good.chat_hits == 30
    assert attempts == 30 + bad.chat_hits
    assert 0 < bad.chat_hits < 30


async def test_retry_after_is_honoured_when_no_other_deployment_can_take_the_retry(upstream) -> None:
    a = upstream("a")
    a.script(mu.rate_limited(retry_after=0.4), mu.ok("after wait"))
    async with router_for([entry("m", a)], num_retries=2) as router:
        r = await router.chat("m", BODY, stream=False, ctx=ctx())
    assert content(r) == "after wait"
    first, second = a.requests[0].at, a.requests[1].at
    assert second - first >= 0.4


async def test_retry_budget_stops_retrying(upstream) -> None:
    # Retry-After 5s does not fit a 1s budget: give up after the first attempt.
    a = upstream("a", mu.rate_limited(retry_after=5))
    async with router_for([entry("m", a)], num_retries=5, retry_budget_s=1.0) as router:
        with pytest.raises(ProviderError) as info:
            await router.chat("m", BODY, stream=False, ctx=ctx())
    assert info.value.status_code == 429
    assert a.chat_hits == 1


async def test_fallbacks_run_in_order(upstream) -> None:
    a = upstream("a", mu.server_error())
    b = upstream("b", mu.server_error())
    c = upstream("c")
    d = upstream("d")
    async with router_for(
        [entry("a", a), entry("b", b), entry("c", c), entry("d", d)],
        num_retries=1,
        allowed_fails=100,
        fallbacks=[{"a": ["b", "c", "d"]}],
    ) as router:
        r = await router.chat("a", BODY, stream=False, ctx=ctx())
    assert content(r) == "c"
    assert (a.chat_hits, b.chat_hits, c.chat_hits, d.chat_hits) == (2, 2, 1, 0)
    assert a.requests[-1].at <= b.requests[0].at <= c.requests[0].at
    assert r.attempts == 5


async def test_context_window_error_uses_context_window_fallbacks(upstream) -> None:
    small = upstream("small", mu.context_length())
    other = upstream("other")
    big = upstream("big")
    async with router_for(
        [entry("small", small), entry("other", other), entry("big", big)],
        num_retries=3,
        fallbacks=[{"small": ["other"]}],
        context_window_fallbacks=[{"small": ["big"]}],
    ) as router:
        r = await router.chat("small", BODY, stream=False, ctx=ctx())
    assert content(r) == "big"
    assert (small.chat_hits, other.chat_hits, big.chat_hits) == (1, 0, 1)
    assert r.attempts == 2


async def test_content_policy_refusal_uses_content_policy_fallbacks(upstream) -> None:
    strict = upstream("strict", mu.content_policy())
    lenient = upstream("lenient")
    async with router_for(
        [entry("strict", strict), entry("lenient", lenient)],
        content_policy_fallbacks=[{"strict": ["lenient"]}],
    ) as router:
        r = await router.chat("strict", BODY, stream=False, ctx=ctx())
        assert content(r) == "lenient"
    assert (strict.chat_hits, lenient.chat_hits) == (1, 1)


async def test_context_window_error_without_fallbacks_is_returned_as_400(upstream) -> None:
    small = upstream("small", mu.context_length())
    async with router_for([entry("small", small)], num_retries=3) as router:
        with pytest.raises(ProviderError) as info:
            await router.chat("small", BODY, stream=False, ctx=ctx())
    assert info.value.status_code == 400 and info.value.code == "context_length_exceeded"
    assert small.chat_hits == 1


async def test_cooldown_starts_and_ends(upstream) -> None:
    bad = upstream("bad", mu.server_error())
    good = upstream("good")
    async with router_for(
        [entry("m", bad), entry("m", good)],
        num_retries=1,
        allowed_fails=2,
        allowed_fails_window_s=60,
        cooldown_time=1.5,
    ) as router:
        for _ in range(40):
            await router.chat("m", BODY, stream=False, ctx=ctx())
            if bad.chat_hits >= 2:
                break
        assert bad.chat_hits == 2
        cooled_at = time.monotonic()
        # Cooled down: no more traffic to "bad" while it lasts.
        for _ in range(10):
            assert content(await router.chat("m", BODY, stream=False, ctx=ctx())) == "good"
        assert time.monotonic() - cooled_at < 1.5, "too slow to check inside the cooldown"
        assert bad.chat_hits == 2
        await asyncio.sleep(max(0.0, 1.6 - (time.monotonic() - cooled_at)))
        for _ in range(40):
            await router.chat("m", BODY, stream=False, ctx=ctx())
            if bad.chat_hits > 2:
                break
        assert bad.chat_hits > 2


async def test_all_cooled_down_answers_503_at_once_with_retry_after(upstream) -> None:
    a = upstream("a", mu.server_error())
    async with router_for([entry("m", a)], num_retries=0, allowed_fails=1, cooldown_time=30) as router:
        with pytest.raises(ProviderError):
            await router.chat("m", BODY, stream=False, ctx=ctx())
        with pytest.raises(GatewayError) as info:
            await router.chat("m", BODY, stream=False, ctx=ctx())
    err = info.value
    assert err.status == 503 and err.code == "no_healthy_deployments"
    assert 28 <= int(err.headers["retry-after"]) <= 30
    assert a.chat_hits == 1


async def test_a_429_with_retry_after_cools_the_deployment_down_for_that_long(upstream) -> None:
    a = upstream("a")
    b = upstream("b")
    a.script(mu.rate_limited(retry_after=5))
    async with router_for(
        [entry("m", a), entry("m", b)],
        num_retries=1,
        allowed_fails=100,
        routing_strategy="cost-based-routing",
    ) as router:
        # Equal cost: the first request may go to either; make sure "a" sees its 429.
        for _ in range(30):
            await router.chat("m", BODY, stream=False, ctx=ctx())
            if a.chat_hits:
                break
        hits = a.chat_hits
        assert hits == 1
        for _ in range(10):
            assert content(await router.chat("m", BODY, stream=False, ctx=ctx())) == "b"
        assert a.chat_hits == 1


async def collect(stream: RoutedStream) -> list[bytes]:
    out = [event async for event in stream]
    await stream.aclose()
    return out


async def test_stream_failure_before_first_byte_is_retried(upstream) -> None:
    a = upstream("a")
    a.script(mu.server_error())
    async with router_for([entry("m", a)], num_retries=1, allowed_fails=10) as router:
        s = await router.chat("m", BODY, stream=True, ctx=ctx())
        assert isinstance(s, RoutedStream)
        events = await collect(s)
    assert s.attempts == 2 and a.chat_hits == 2
    assert not any(b'"error"' in e for e in events)
    assert s.usage is not None and s.usage.total_tokens == 8


async def test_stream_that_breaks_after_first_byte_ends_with_an_error_event_and_no_retry(upstream) -> None:
    a = upstream("a")
    b = upstream("b")
    a.script(mu.reset_mid_stream(chunks_before_reset=2))
    async with router_for(
        [entry("m", a), entry("m", b)], num_retries=3, routing_strategy="cost-based-routing"
    ) as router:
        # Force the first pick onto "a": "b" is cooling down.
        router.groups["m"].by_id["b"].cooldown_until = time.time() + 30
        s = await router.chat("m", BODY, stream=True, ctx=ctx())
        assert isinstance(s, RoutedStream)
        events: list[bytes] = []
        with pytest.raises(ProviderError) as info:
            async for event in s:
                events.append(event)
        await s.aclose()
    assert a.chat_hits == 1 and b.chat_hits == 0
    assert len(events) >= 1 and b"chat.completion.chunk" in events[0]
    assert "stream interrupted" in info.value.message
    assert s.error is not None
    assert router.groups["m"].by_id["a"].in_flight == 0


async def test_first_chunk_timeout_moves_to_another_deployment(upstream) -> None:
    slow = upstream("slow", mu.hang())
    fast = upstream("fast")
    async with router_for(
        [entry("m", slow, order=0), entry("m", fast, order=1)], num_retries=1, first_chunk_timeout=0.3
    ) as router:
        s = await router.chat("m", BODY, stream=True, ctx=ctx())
        events = await collect(s)  # type: ignore[arg-type]
    assert slow.chat_hits == 1 and fast.chat_hits == 1
    assert b"fa" in b"".join(events)


async def test_latency_based_routing_moves_traffic_to_the_faster_deployment(upstream) -> None:
    slow = upstream("slow", mu.ok(delay=0.3))
    fast = upstream("fast")
    async with router_for(
        [entry("m", slow), entry("m", fast)], routing_strategy="latency-based-routing"
    ) as router:
        for _ in range(12):
            await router.chat("m", BODY, stream=False, ctx=ctx())
    # One exploratory request each, then everything to the faster one.
    assert slow.chat_hits == 1
    assert fast.chat_hits == 11


async def test_least_busy_sends_to_the_idle_deployment(upstream) -> None:
    a = upstream("a", mu.ok(delay=0.5))
    b = upstream("b", mu.ok(delay=0.5))
    async with router_for([entry("m", a), entry("m", b)], routing_strategy="least-busy") as router:
        results = await asyncio.gather(*(router.chat("m", BODY, stream=False, ctx=ctx()) for _ in range(10)))
    assert all(isinstance(r, RoutedResponse) for r in results)
    # In-flight counts keep the two within one request of each other.
    assert (a.chat_hits, b.chat_hits) == (5, 5)


async def test_deployments_at_their_own_rpm_are_skipped_then_429(upstream) -> None:
    small = upstream("small")
    spill = upstream("spill")
    if time.time() % 60 > 57:  # rpm windows are calendar minutes: don't straddle one
        await asyncio.sleep(60 - time.time() % 60 + 0.05)
    async with router_for(
        [entry("m", small, rpm=2, order=0), entry("m", spill, rpm=3, order=1)], num_retries=0
    ) as router:
        served = [content(await router.chat("m", BODY, stream=False, ctx=ctx())) for _ in range(5)]
        with pytest.raises(GatewayError) as info:
            await router.chat("m", BODY, stream=False, ctx=ctx())
    # The order-0 deployment takes its 2 per minute, the order-1 one the next 3, then none is left.
    assert served == ["small", "small", "spill", "spill", "spill"]
    assert info.value.status == 429 and info.value.code == "deployment_rate_limited"
    assert 1 <= int(info.value.headers["retry-after"]) <= 60
    assert (small.chat_hits, spill.chat_hits) == (2, 3)


async def test_a_hanging_upstream_times_out_and_the_retry_goes_elsewhere(upstream) -> None:
    stuck = upstream("stuck", mu.hang())
    ok = upstream("ok")
    async with router_for(
        [entry("m", stuck, order=0, timeout=0.3), entry("m", ok, order=0)],
        num_retries=1,
        routing_strategy="cost-based-routing",
        allowed_fails=100,
    ) as router:
        router.groups["m"].by_id["ok"].cost = 1.0  # make "stuck" the first choice
        r = await router.chat("m", BODY, stream=False, ctx=ctx())
    assert content(r) == "ok"
    assert r.attempts == 2
    assert (stuck.chat_hits, ok.chat_hits) == (1, 1)
