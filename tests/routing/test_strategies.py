"""The routing strategies and the tiered pick, on real state objects with many draws."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from gateway.routing.model_group import ModelGroup, Unavailable
from gateway.routing.state import DeploymentState
from gateway.routing.strategies import make_strategy

# chi-square critical values at p = 0.001 (a correct sampler fails 1 run in 1000).
CHI2_CRIT_001 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47}


def deps(n: int, **kw: object) -> list[DeploymentState]:
    return [DeploymentState(id=f"d{i}", model_name="m", **kw) for i in range(n)]  # type: ignore[arg-type]


def chi_square(counts: Counter[str], expected: dict[str, float]) -> float:
    return sum((counts[k] - e) ** 2 / e for k, e in expected.items())


def test_weighted_shuffle_matches_weights() -> None:
    ds = [DeploymentState(id=f"d{w}", model_name="m", weight=float(w)) for w in (1, 2, 3, 4)]
    group = ModelGroup("m", ds)
    strategy = make_strategy("simple-shuffle", rng=random.Random(7))
    n = 20_000
    now = time.time()
    counts = Counter(group.pick(strategy, now).id for _ in range(n))  # type: ignore[union-attr]
    expected = {f"d{w}": n * w / 10 for w in (1, 2, 3, 4)}
    assert chi_square(counts, expected) < CHI2_CRIT_001[3], counts


def test_weighted_shuffle_renormalises_when_one_is_cooled_down() -> None:
    ds = [DeploymentState(id=f"d{w}", model_name="m", weight=float(w)) for w in (1, 3, 6)]
    now = time.time()
    ds[2].cooldown_until = now + 60
    group = ModelGroup("m", ds)
    strategy = make_strategy("simple-shuffle", rng=random.Random(3))
    n = 8_000
    counts = Counter(group.pick(strategy, now).id for _ in range(n))  # type: ignore[union-attr]
    assert counts["d6"] == 0
    assert chi_square(counts, {"d1": n / 4, "d3": n * 3 / 4}) < CHI2_CRIT_001[1], counts


def test_least_busy_picks_fewest_in_flight_and_spreads_ties() -> None:
    ds = deps(4)
    for d, n in zip(ds, (5, 1, 3, 1), strict=True):
        d.in_flight = n
    group = ModelGroup("m", ds)
    strategy = make_strategy("least-busy", rng=random.Random(1))
    now = time.time()
    counts = Counter(group.pick(strategy, now).id for _ in range(2_000))  # type: ignore[union-attr]
    assert set(counts) == {"d1", "d3"}
    assert chi_square(counts, {"d1": 1000, "d3": 1000}) < CHI2_CRIT_001[1]


def test_latency_based_explores_untried_then_prefers_fastest() -> None:
    ds = deps(3)
    group = ModelGroup("m", ds)
    strategy = make_strategy("latency-based-routing", rng=random.Random(5))
    now = time.time()
    ds[0].record_latency(0.5)
    ds[1].record_latency(0.1)
    # d2 has never been tried: it gets the next request.
    assert group.pick(strategy, now) is ds[2]
    ds[2].record_latency(0.9)
    assert group.pick(strategy, now) is ds[1]
    # d1 slows down; the EWMA follows within a few samples and traffic moves.
    for _ in range(6):
        ds[1].record_latency(2.0)
    assert group.pick(strategy, now) is ds[0]


def test_latency_based_uses_time_to_first_token_for_streams() -> None:
    ds = deps(2)
    ds[0].record_latency(0.2)
    ds[1].record_latency(1.0)
    ds[0].record_ttft(0.9)
    ds[1].record_ttft(0.05)
    group = ModelGroup("m", ds)
    strategy = make_strategy("latency-based-routing")
    now = time.time()
    assert group.pick(strategy, now, stream=False) is ds[0]
    assert group.pick(strategy, now, stream=True) is ds[1]


def test_usage_based_prefers_headroom_and_skips_exhausted() -> None:
    ds = [
        DeploymentState(id="small", model_name="m", rpm=10),
        DeploymentState(id="big", model_name="m", rpm=100),
        DeploymentState(id="tok", model_name="m", tpm=1000),
    ]
    group = ModelGroup("m", ds)
    strategy = make_strategy("usage-based-routing", rng=random.Random(2))
    now = time.time()
    picks: Counter[str] = Counter()
    for _ in range(60):
        d = group.pick(strategy, now)
        assert isinstance(d, DeploymentState)
        picks[d.id] += 1
        d.on_start(now)
        d.add_tokens(now, 10)
        d.on_end()
    # Utilisation is requests/rpm or tokens/tpm: "small" fills 10x faster than "big".
    assert picks["small"] <= 10
    assert picks["big"] > picks["small"]
    assert ds[0].minute_requests <= 10
    # Once every rpm is spent, nothing is available.
    ds[0].minute_requests, ds[1].minute_requests, ds[2].minute_tokens = 10, 100, 1000
    assert isinstance(group.pick(strategy, now), Unavailable)


def test_cost_based_picks_cheapest_available() -> None:
    ds = [DeploymentState(id=f"c{c}", model_name="m", cost=c) for c in (3.0, 1.0, 2.0)]
    group = ModelGroup("m", ds)
    strategy = make_strategy("cost-based-routing")
    now = time.time()
    assert group.pick(strategy, now).id == "c1.0"  # type: ignore[union-attr]
    ds[1].cooldown_until = now + 10
    assert group.pick(strategy, now).id == "c2.0"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "name",
    ["simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing", "cost-based-routing"],
)
def test_every_strategy_respects_tiers_limits_and_exclusion(name: str) -> None:
    now = time.time()
    primary = [DeploymentState(id=f"p{i}", model_name="m", order=0, max_parallel=1) for i in range(3)]
    backup = [DeploymentState(id="b0", model_name="m", order=1)]
    group = ModelGroup("m", primary + backup)
    strategy = make_strategy(name, rng=random.Random(0))
    for _ in range(50):
        assert group.pick(strategy, now).id.startswith("p")  # type: ignore[union-attr]
    # A retry avoids the deployment that just failed while another is free.
    for _ in range(50):
        assert group.pick(strategy, now, exclude={primary[0]}) is not primary[0]
    # Busy (max_parallel reached) and cooled-down deployments are skipped.
    primary[0].in_flight = 1
    primary[1].cooldown_until = now + 30
    for _ in range(20):
        assert group.pick(strategy, now) is primary[2]
    # Only when the whole order-0 tier is unavailable does order 1 get traffic.
    primary[2].on_start(now)
    assert group.pick(strategy, now) is backup[0]
    # An excluded deployment is still used when it is the only one left.
    assert group.pick(strategy, now, exclude={backup[0]}) is backup[0]
    backup[0].cooldown_until = now + 5
    why = group.pick(strategy, now)
    assert isinstance(why, Unavailable)
    assert why.cooled == 2 and why.limited == 2
    assert why.retry_at == pytest.approx(now + 5)


def test_rpm_window_rolls_over() -> None:
    d = DeploymentState(id="d", model_name="m", rpm=1)
    group = ModelGroup("m", [d])
    strategy = make_strategy(None)
    t = 600.0 * 60  # the start of a minute
    d.on_start(t)
    d.on_end()
    assert isinstance(group.pick(strategy, t + 30), Unavailable)
    assert group.pick(strategy, t + 61) is d


def test_unknown_strategy_is_rejected() -> None:
    with pytest.raises(ValueError, match="routing_strategy"):
        make_strategy("fastest-please")
