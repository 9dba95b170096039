"""The engine's own numbers, kept as plain counters for whoever exports them (the gateway's
``/metrics``; this package imports no metrics library).

``EngineStats`` is updated by the engine thread once per step; ``EngineSnapshot`` is a consistent
enough copy for a reader on another thread (ints and floats read under the GIL).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

# Upper bounds (seconds) of the time-per-output-token histogram; one more bucket counts the rest.
TPOT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
# tokens/s is averaged over this many whole seconds before the current one.
RATE_WINDOW_S = 10


@dataclass(slots=True)
class EngineSnapshot:
    """The engine at one moment: what is queued and running, cache use, and the totals so far."""

    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    prefix_cache_query_tokens: int  # tokens looked up in the prefix cache at admission
    prefix_cache_hit_tokens: int  # of those, found there
    generation_tokens: int
    finished_requests: int
    tpot_counts: tuple[int, ...]  # per TPOT_BUCKETS bound (not cumulative), then the overflow
    tpot_sum: float
    generation_tokens_per_s: float  # over the last RATE_WINDOW_S whole seconds
    # Speculative decoding: verification passes, draft tokens checked, and of those, accepted
    # (acceptance rate: accepted / draft tokens).
    spec_drafts: int = 0
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0


@dataclass(slots=True)
class EngineStats:
    generation_tokens: int = 0
    finished_requests: int = 0
    tpot_counts: list[int] = field(default_factory=lambda: [0] * (len(TPOT_BUCKETS) + 1))
    tpot_sum: float = 0.0
    spec_drafts: int = 0
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0
    # (whole second, tokens generated in it), newest last.
    _per_second: deque[list[int]] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW_S + 1))

    def generated(self, now: float, tokens: int) -> None:
        self.generation_tokens += tokens
        second = int(now)
        per_second = self._per_second
        if per_second and per_second[-1][0] == second:
            per_second[-1][1] += tokens
        else:
            per_second.append([second, tokens])

    def speculated(self, draft_tokens: int, accepted: int) -> None:
        """One sequence's drafts were verified: ``accepted`` of ``draft_tokens`` held."""
        self.spec_drafts += 1
        self.spec_draft_tokens += draft_tokens
        self.spec_accepted_tokens += accepted

    def finished(self, time_per_output_token: float | None) -> None:
        """A request finished; ``time_per_output_token`` is None when it made fewer than two tokens."""
        self.finished_requests += 1
        if time_per_output_token is not None:
            self.tpot_counts[bisect.bisect_left(TPOT_BUCKETS, time_per_output_token)] += 1
            self.tpot_sum += time_per_output_token

    def tokens_per_s(self, now: float) -> float:
        second = int(now)
        recent = list(self._per_second)  # one C-level copy: the engine thread may append meanwhile
        return sum(n for s, n in recent if second - RATE_WINDOW_S <= s < second) / RATE_WINDOW_S
