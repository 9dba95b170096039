"""Per-deployment runtime state the strategies read on the hot path.

Kept as one flat slots object per deployment so a routing decision is a single pass over
attributes (no dict lookups, no allocation) even with dozens of deployments behind a name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Weight of the newest sample in the latency averages. 0.3 reacts within a handful of
# requests yet does not flip on one outlier.
EWMA_ALPHA = 0.3


@dataclass(slots=True, eq=False)
class DeploymentState:
    """One deployment's static limits plus its live counters.

    Times are unix seconds (``time.time()``) so that cooldown deadlines can be shared
    through Redis between gateway instances.
    """

    id: str
    model_name: str
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    order: int = 0
    # Cost of one prompt token plus one completion token; used by cost-based routing.
    cost: float = 0.0
    # The configured deployment object (whatever the config layer built); the router passes
    # it to the provider.
    deployment: Any = None

    in_flight: int = 0
    # Requests and tokens in the current minute window (``minute`` is ``int(now // 60)``).
    minute: int = -1
    minute_requests: int = 0
    minute_tokens: int = 0
    # EWMAs in seconds; ``None`` until the first sample (latency-based routing explores those).
    ewma_latency: float | None = None
    ewma_ttft: float | None = None
    # Unix time until which the deployment is cooled down (0 = available).
    cooldown_until: float = 0.0
    has_limits: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.has_limits = self.rpm is not None or self.tpm is not None

    # ---- counters -------------------------------------------------------------------------

    def _roll(self, minute: int) -> None:
        if self.minute != minute:
            self.minute = minute
            self.minute_requests = 0
            self.minute_tokens = 0

    def within_limits(self, minute: int) -> bool:
        """Whether one more request fits this deployment's own rpm/tpm and parallel limits."""
        if self.max_parallel is not None and self.in_flight >= self.max_parallel:
            return False
        if self.has_limits and self.minute == minute:
            if self.rpm is not None and self.minute_requests >= self.rpm:
                return False
            if self.tpm is not None and self.minute_tokens >= self.tpm:
                return False
        return True

    def on_start(self, now: float) -> None:
        """A request was sent to this deployment (counts against rpm and in-flight at once)."""
        self._roll(int(now // 60))
        self.in_flight += 1
        self.minute_requests += 1

    def on_end(self) -> None:
        """The request finished (success or failure); releases the in-flight slot."""
        if self.in_flight > 0:
            self.in_flight -= 1

    def add_tokens(self, now: float, tokens: int) -> None:
        self._roll(int(now // 60))
        self.minute_tokens += tokens

    def record_latency(self, seconds: float) -> None:
        prev = self.ewma_latency
        self.ewma_latency = seconds if prev is None else prev + EWMA_ALPHA * (seconds - prev)

    def record_ttft(self, seconds: float) -> None:
        prev = self.ewma_ttft
        self.ewma_ttft = seconds if prev is None else prev + EWMA_ALPHA * (seconds - prev)
