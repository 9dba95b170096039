"""Failure classification, backoff with Retry-After, and fallback tables."""

from __future__ import annotations

import random

import pytest
from tenacity import RetryCallState

from gateway.routing.fallbacks import FallbackKind, FallbackTable
from gateway.routing.retry_policy import BackoffWait, Failure, RetrySettings, classify, make_retrying
from providers.errors import ProviderError, ProviderTimeoutError, ProviderUnreachableError


def upstream(status: int, message: str = "x", code: str | None = None, headers: dict[str, str] | None = None):
    body = b'{"error": {"message": "%s", "type": "t", "code": %s}}' % (
        message.encode(),
        (b'"%s"' % code.encode()) if code else b"null",
    )
    return ProviderError.from_upstream(status, body, headers)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (upstream(429), Failure.RETRYABLE),
        (upstream(500), Failure.RETRYABLE),
        (upstream(503), Failure.RETRYABLE),
        (ProviderTimeoutError(), Failure.RETRYABLE),
        (ProviderUnreachableError(), Failure.RETRYABLE),
        (upstream(400), Failure.REQUEST),
        (upstream(422), Failure.REQUEST),
        (upstream(401), Failure.DEPLOYMENT),
        (upstream(403), Failure.DEPLOYMENT),
        (upstream(404), Failure.DEPLOYMENT),
        (upstream(400, "too long", "context_length_exceeded"), Failure.CONTEXT_WINDOW),
        (upstream(400, "This model's maximum context length is 8 tokens"), Failure.CONTEXT_WINDOW),
        (upstream(400, "rejected", "content_policy_violation"), Failure.CONTENT_POLICY),
        (upstream(400, "blocked by content_filter"), Failure.CONTENT_POLICY),
    ],
)
def test_classify(exc: ProviderError, expected: Failure) -> None:
    assert classify(exc) is expected


def state_after(exc: BaseException, attempt: int) -> RetryCallState:
    retrying = make_retrying(RetrySettings(), lambda: True)
    rs = RetryCallState(retrying, fn=None, args=(), kwargs={})
    rs.attempt_number = attempt
    rs.set_exception((type(exc), exc, None))
    return rs


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    wait = BackoffWait(0.1, 1.0, lambda: True, rng=random.Random(0))
    for n, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        w = wait(state_after(upstream(500), n))
        assert ceiling / 2 <= w <= ceiling


def test_retry_after_is_waited_only_when_no_other_deployment_is_free() -> None:
    exc = upstream(429, headers={"retry-after": "3"})
    assert exc.retry_after == 3
    alone = BackoffWait(0.1, 1.0, lambda: False)
    assert alone(state_after(exc, 1)) == 3.0
    with_peer = BackoffWait(0.1, 1.0, lambda: True)
    assert with_peer(state_after(exc, 1)) <= 0.1


async def test_tenacity_loop_counts_attempts_and_skips_non_retryable() -> None:
    calls = 0

    async def flaky(errors: list[BaseException]) -> str:
        nonlocal calls
        calls += 1
        if errors:
            raise errors.pop(0)
        return "ok"

    settings = RetrySettings(num_retries=2, backoff_base_s=0.001)
    errors: list[BaseException] = [upstream(500), upstream(502)]
    async for attempt in make_retrying(settings, lambda: True):
        with attempt:
            result = await flaky(errors)
    assert result == "ok" and calls == 3

    calls = 0
    with pytest.raises(ProviderError):
        async for attempt in make_retrying(settings, lambda: True):
            with attempt:
                await flaky([upstream(401)])
    assert calls == 1


def test_fallback_tables_accept_litellm_and_mapping_shapes() -> None:
    table = FallbackTable(
        general=[{"a": ["b", "c"]}, {"*": ["z"]}],
        context_window={"a": "big"},
        content_policy=[{"a": ["safe"]}],
    )
    assert table.targets(FallbackKind.GENERAL, "a") == ("b", "c")
    assert table.targets(FallbackKind.GENERAL, "q") == ("z",)
    assert table.targets(FallbackKind.GENERAL, "z") == ()
    assert table.targets(FallbackKind.CONTEXT_WINDOW, "a") == ("big",)
    assert table.targets(FallbackKind.CONTENT_POLICY, "a") == ("safe",)
    assert table.referenced_models() == {"b", "c", "z", "big", "safe"}
