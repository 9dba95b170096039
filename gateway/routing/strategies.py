"""Routing strategies: given the deployments that may take a request, pick one.

Names follow LiteLLM's ``router_settings.routing_strategy``. Every strategy is one pass over
the candidates with tiny constants; the weighted shuffle uses cumulative weights precomputed
per tier (see ``model_group.Tier``) when no deployment is filtered out.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from gateway.routing.state import DeploymentState

if TYPE_CHECKING:
    from gateway.routing.model_group import Tier


class RoutingStrategy(Protocol):
    name: str

    def choose(
        self, tier: Tier, candidates: Sequence[DeploymentState], complete: bool, stream: bool, minute: int
    ) -> DeploymentState:
        """Pick one of ``candidates`` (non-empty). ``complete`` means candidates is the whole tier."""
        ...


class SimpleShuffle:
    """Weighted random choice (``weight``, default 1); uniform when no weights are set."""

    name = "simple-shuffle"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = (rng or random).random

    def choose(
        self, tier: Tier, candidates: Sequence[DeploymentState], complete: bool, stream: bool, minute: int
    ) -> DeploymentState:
        if len(candidates) == 1:
            return candidates[0]
        if complete:
            i = bisect_right(tier.cum_weights, self._random() * tier.total_weight)
            # Float rounding can land exactly on the total; clamp to the last deployment.
            return candidates[min(i, len(candidates) - 1)]
        total = 0.0
        for d in candidates:
            total += d.weight
        r = self._random() * total
        for d in candidates:
            r -= d.weight
            if r < 0.0:
                return d
        return candidates[-1]


class LeastBusy:
    """Fewest requests in flight on this instance; ties broken uniformly at random."""

    name = "least-busy"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = (rng or random).random

    def choose(
        self, tier: Tier, candidates: Sequence[DeploymentState], complete: bool, stream: bool, minute: int
    ) -> DeploymentState:
        best = candidates[0]
        best_n = best.in_flight
        ties = 1
        rnd = self._random
        for d in candidates[1:]:
            n = d.in_flight
            if n < best_n:
                best, best_n, ties = d, n, 1
            elif n == best_n:
                # Reservoir sampling: each tied deployment ends up chosen with equal probability.
                ties += 1
                if rnd() * ties < 1.0:
                    best = d
        return best


class LatencyBased:
    """Lowest EWMA latency (time to first token for streams); untried deployments go first.

    ``buffer`` (LiteLLM's ``lowest_latency_buffer``) spreads load over every deployment within
    ``(1 + buffer) * best`` so one slightly faster deployment is not hammered.
    """

    name = "latency-based-routing"

    def __init__(self, buffer: float = 0.0, rng: random.Random | None = None) -> None:
        self.buffer = buffer
        self._rng = rng or random

    def choose(
        self, tier: Tier, candidates: Sequence[DeploymentState], complete: bool, stream: bool, minute: int
    ) -> DeploymentState:
        untried: list[DeploymentState] | None = None
        best: DeploymentState | None = None
        best_v = float("inf")
        for d in candidates:
            v = d.ewma_ttft if stream and d.ewma_ttft is not None else d.ewma_latency
            if v is None:
                if untried is None:
                    untried = [d]
                else:
                    untried.append(d)
            elif v < best_v:
                best, best_v = d, v
        if untried:
            return untried[0] if len(untried) == 1 else self._rng.choice(untried)
        assert best is not None
        if self.buffer <= 0.0:
            return best
        limit = best_v * (1.0 + self.buffer)
        near = [
            d
            for d in candidates
            if (d.ewma_ttft if stream and d.ewma_ttft is not None else d.ewma_latency) <= limit  # type: ignore[operator]
        ]
        return self._rng.choice(near)


class UsageBased:
    """Most headroom against the deployment's own rpm/tpm in the current minute.

    Utilisation is the larger of requests/rpm and tokens/tpm; deployments without limits count
    as empty (0) and break ties by fewer tokens used this minute.
    """

    name = "usage-based-routing"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = (rng or random).random

    def choose(
        self, tier: Tier, candidates: Sequence[DeploymentState], complete: bool, stream: bool, minute: int
    ) -> DeploymentState:
        best = candidates[0]
        best_util = float("inf")
        best_toks = 0
        ties = 0
        rnd = self._random
        for d in candidates:
            if d.minute == minute:
                reqs, toks = d.minute_requests, d.minute_tokens
            else:
                reqs = toks = 0
            util = 0.0
            if d.rpm:
                util = reqs / d.rpm
            if d.tpm:
                t = toks / d.tpm
                if t > util:
                    util = t
            if util < best_util or (util == best_util and toks < best_toks):
                best, best_util, best_toks, ties = d, util, toks, 1
            elif util == best_util and toks == best_toks:
                ties += 1
                if rnd() * ties < 1.0:
                    best = d
        return best


class CostBased:
    """Cheapest deployment (prompt + completion cost per token); ties shuffled by weight."""

    name = "cost-based-routing"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = (rng or random).random

    def choose(
        self, tier: Tier, candidates: Sequence[DeploymentState], complete: bool, stream: bool, minute: int
    ) -> DeploymentState:
        best = candidates[0]
        best_cost = best.cost
        total = best.weight
        rnd = self._random
        for d in candidates[1:]:
            c = d.cost
            if c < best_cost:
                best, best_cost, total = d, c, d.weight
            elif c == best_cost:
                # Weighted reservoir sampling among equally cheap deployments.
                total += d.weight
                if rnd() * total < d.weight:
                    best = d
        return best


# Request-aware (``for_request``): gateway.routing.prefix_aware, made by ``make_strategy``.
PREFIX_CACHE_AWARE = "prefix-cache-aware"

STRATEGIES: dict[str, type] = {
    SimpleShuffle.name: SimpleShuffle,
    LeastBusy.name: LeastBusy,
    LatencyBased.name: LatencyBased,
    UsageBased.name: UsageBased,
    CostBased.name: CostBased,
}


def make_strategy(
    name: str | None, *, latency_buffer: float = 0.0, rng: random.Random | None = None
) -> RoutingStrategy:
    """The strategy registered under ``name`` (``None`` means ``simple-shuffle``).

    Raises ``ValueError`` for an unknown name so a config typo fails at startup.
    """
    key = name or SimpleShuffle.name
    if key == "usage-based-routing-v2":  # LiteLLM's newer name for the same idea
        key = UsageBased.name
    if key == PREFIX_CACHE_AWARE:
        # Imported here: it loads the engine's tokenizer stack, which no other strategy needs.
        from gateway.routing.prefix_aware import PrefixCacheAware

        return PrefixCacheAware(rng=rng)
    cls = STRATEGIES.get(key)
    if cls is None:
        known = sorted([*STRATEGIES, PREFIX_CACHE_AWARE])
        raise ValueError(f"unknown routing_strategy {name!r}; expected one of {known}")
    if cls is LatencyBased:
        return LatencyBased(buffer=latency_buffer, rng=rng)
    return cls(rng=rng)
