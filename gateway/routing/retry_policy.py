"""Which failures are retried, and how long to wait between attempts.

Retries run under tenacity's ``AsyncRetrying``: exponential backoff with jitter, capped by
the request's total time budget (``stop_before_delay`` gives up instead of sleeping past it),
honouring an upstream's ``Retry-After`` when no other deployment could take the retry.
Only transient failures are retried (429, 5xx, timeouts, connection errors); a 400/401/403/404
is the same on every attempt, so retrying it only adds latency.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_before_delay
from tenacity.wait import wait_base


class Failure(enum.Enum):
    """How the router reacts to one failed attempt."""

    RETRYABLE = "retryable"  # retry (another deployment first); counts towards cooldown
    DEPLOYMENT = "deployment"  # 401/403/404: this deployment is broken; cooldown + fallbacks, no retry
    CONTEXT_WINDOW = "context_window"  # prompt too long: context_window_fallbacks
    CONTENT_POLICY = "content_policy"  # upstream refused: content_policy_fallbacks
    REQUEST = "request"  # the caller's request is bad (400, 422...): answer it as is


_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "too many tokens",
    "prompt is too long",
)
_POLICY_MARKERS = ("content_policy_violation", "content_filter", "content management policy")


def _text(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return f"{code or ''} {getattr(exc, 'message', None) or exc}".lower()


def classify(exc: BaseException) -> Failure:
    """Sort a provider failure into the router's reactions.

    Uses the provider error's flags when set (``context_window_exceeded``,
    ``content_policy_violation``, ``retryable``, ``status``) and falls back to OpenAI's error
    codes/messages so any OpenAI-compatible upstream is understood.
    """
    if getattr(exc, "context_window_exceeded", False):
        return Failure.CONTEXT_WINDOW
    if getattr(exc, "content_policy_violation", False):
        return Failure.CONTENT_POLICY
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    if isinstance(status, int) and status in (400, 413, 422):
        text = _text(exc)
        if any(m in text for m in _CONTEXT_MARKERS):
            return Failure.CONTEXT_WINDOW
        if any(m in text for m in _POLICY_MARKERS):
            return Failure.CONTENT_POLICY
    retryable = getattr(exc, "retryable", None)
    if retryable is True:
        return Failure.RETRYABLE
    if isinstance(status, int):
        if status in (401, 403, 404):
            return Failure.DEPLOYMENT
        if status in (408, 409, 429) or status >= 500:
            return Failure.RETRYABLE if retryable is None else Failure.DEPLOYMENT
        return Failure.REQUEST
    if retryable is False:
        return Failure.REQUEST
    # No status at all: a timeout or a connection-level error on our side of the wire.
    if isinstance(exc, (TimeoutError, ConnectionError, OSError)):
        return Failure.RETRYABLE
    return Failure.RETRYABLE if type(exc).__name__.endswith(("Timeout", "TimeoutError")) else Failure.REQUEST


def is_retryable(exc: BaseException) -> bool:
    return classify(exc) is Failure.RETRYABLE


# The openai SDK's client retries (what LiteLLM's per-deployment ``max_retries`` configures):
# 0.5 s doubling to at most 8 s, minus up to 25% jitter; a Retry-After of up to a minute wins.
_CLIENT_RETRY_BASE_S = 0.5
_CLIENT_RETRY_MAX_S = 8.0
_CLIENT_RETRY_AFTER_MAX_S = 60.0


def deployment_retry_pause(done: int, exc: BaseException, rng: random.Random | None = None) -> float:
    """The wait before retrying the same deployment after ``done`` earlier retries of it."""
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, (int, float)) and 0 <= retry_after <= _CLIENT_RETRY_AFTER_MAX_S:
        return float(retry_after)
    delay = min(_CLIENT_RETRY_BASE_S * 2**done, _CLIENT_RETRY_MAX_S)
    return delay * (1 - 0.25 * (rng or random).random())


@dataclass(slots=True, frozen=True)
class RetrySettings:
    """``num_retries`` extra attempts within ``budget_s`` seconds per request (per model)."""

    num_retries: int = 2
    budget_s: float = 60.0
    backoff_base_s: float = 0.05
    backoff_max_s: float = 5.0


class BackoffWait(wait_base):
    """Exponential backoff with equal jitter, stretched to ``Retry-After`` when it matters.

    Attempt ``n`` (1-based) waits between half and all of ``base * 2**(n-1)`` (capped). If the
    failure carried ``retry_after`` and ``others_available()`` says no other deployment could
    take the retry, the wait is at least ``retry_after``: the one deployment asked us to hold
    off that long. With another deployment free, the retry goes there without waiting.
    """

    def __init__(
        self,
        base: float,
        cap: float,
        others_available: Callable[[], bool],
        rng: random.Random | None = None,
        offset: int = 0,
    ) -> None:
        # ``offset``: attempts made before the tenacity loop started (``make_retrying(already=)``).
        self.offset = offset
        self.base = base
        self.cap = cap
        self.others_available = others_available
        self._random = (rng or random).random

    def delay(self, failures: int, exc: BaseException | None) -> float:
        """The wait after the ``failures``-th failed attempt, which raised ``exc``."""
        n = max(1, failures)
        ceiling = min(self.cap, self.base * (2 ** (n - 1)))
        wait = ceiling * (0.5 + 0.5 * self._random())
        retry_after = getattr(exc, "retry_after", None) if exc is not None else None
        if retry_after and not self.others_available():
            wait = max(wait, float(retry_after))
        return wait

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        return self.delay(retry_state.attempt_number + self.offset, exc)


def make_retrying(
    settings: RetrySettings,
    others_available: Callable[[], bool],
    *,
    budget_s: float | None = None,
    already: int = 0,
) -> AsyncRetrying:
    """A tenacity loop for one model: up to ``num_retries`` retries of retryable failures.

    ``already`` is the number of attempts made before the loop (the router makes the first
    attempt outside tenacity so the common, successful case pays nothing for the loop's
    bookkeeping); the loop then makes at most ``num_retries + 1 - already`` attempts and
    numbers its backoff from there. ``budget_s`` is the time left for the whole model.
    """
    budget = settings.budget_s if budget_s is None else budget_s
    wait = BackoffWait(settings.backoff_base_s, settings.backoff_max_s, others_available, offset=already)
    return AsyncRetrying(
        stop=stop_after_attempt(max(1, settings.num_retries + 1 - already))
        | stop_before_delay(max(budget, 0.0)),
        wait=wait,
        retry=retry_if_exception(is_retryable),
        reraise=True,
    )
