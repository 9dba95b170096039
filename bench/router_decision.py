"""How long the router's decision takes: pick one of 50 deployments behind one name.

The decision is ``ModelGroup.pick`` (cooldown filter, own rpm/tpm/parallel limits, tiers, the
strategy), exactly what every request runs. Two situations per strategy: every deployment
available, and a degraded one (10 cooling down, 10 at their rpm). The peer is a plain,
straightforward implementation of the same weighted pick (dicts, list comprehension and
``random.choices``), measured in the same run; the ratio is ours / peer.

Run: .venv/bin/python bench/router_decision.py [--deployments 50] [--n 200000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.routing.model_group import ModelGroup
from gateway.routing.state import DeploymentState
from gateway.routing.strategies import STRATEGIES, make_strategy

TARGET_US = 50.0


def build(n: int, degraded: bool, now: float) -> ModelGroup:
    rng = random.Random(1)
    ds = []
    for i in range(n):
        d = DeploymentState(
            id=f"dep-{i}",
            model_name="m",
            weight=rng.uniform(0.5, 3.0),
            rpm=1000,
            tpm=1_000_000,
            max_parallel=64,
            cost=rng.choice([1e-6, 2e-6, 3e-6]),
        )
        d.in_flight = rng.randrange(0, 8)
        d.record_latency(rng.uniform(0.05, 0.5))
        d.record_ttft(rng.uniform(0.01, 0.1))
        d.on_start(now)
        d.on_end()
        d.add_tokens(now, rng.randrange(0, 50_000))
        ds.append(d)
    if degraded:
        for d in ds[:10]:
            d.cooldown_until = now + 3600
        for d in ds[10:20]:
            d.minute_requests = d.rpm or 0
    return ModelGroup("m", ds)


def time_ours(group: ModelGroup, strategy_name: str, iters: int, now: float) -> float:
    strategy = make_strategy(strategy_name, rng=random.Random(2))
    pick = group.pick
    t0 = time.perf_counter()
    for _ in range(iters):
        pick(strategy, now)
    return (time.perf_counter() - t0) / iters * 1e6


def time_peer(group: ModelGroup, iters: int, now: float) -> float:
    """The straightforward version: deployments as dicts, filter, then random.choices."""
    minute = int(now // 60)
    rows = [
        {
            "id": d.id,
            "weight": d.weight,
            "cooldown_until": d.cooldown_until,
            "rpm": d.rpm,
            "used": d.minute_requests if d.minute == minute else 0,
            "in_flight": d.in_flight,
            "max_parallel": d.max_parallel,
        }
        for d in group.deployments
    ]
    choices = random.Random(3).choices
    t0 = time.perf_counter()
    for _ in range(iters):
        ok = [
            r
            for r in rows
            if r["cooldown_until"] <= now and r["used"] < r["rpm"] and r["in_flight"] < r["max_parallel"]
        ]
        choices(ok, weights=[r["weight"] for r in ok])[0]
    return (time.perf_counter() - t0) / iters * 1e6


class _InstantProvider:
    """A provider that answers at once, so only the router's own work is timed."""

    def __init__(self) -> None:
        from providers.contract import ProviderResponse

        self.response = ProviderResponse(200, b"{}", None)

    async def chat(self, call: object) -> object:
        return self.response


def time_full_chat(n_deps: int, iters: int) -> tuple[float, float]:
    """µs per ``Router.chat`` (decision, cooldown refresh, retry setup, stats) vs a direct call."""
    import asyncio

    from gateway.config import GatewayConfig
    from gateway.context import RequestContext
    from gateway.pipeline import Principal
    from gateway.routing.deployment import deployments_from_entries
    from gateway.routing.router import Router
    from providers.registry import ProviderRegistry

    entries = [
        {"model_name": "m", "params": {"model": f"openai/u{i}", "api_base": f"http://h{i}/v1", "rpm": 10**9}}
        for i in range(n_deps)
    ]
    config = GatewayConfig.model_validate({"model_list": entries})
    registry = ProviderRegistry()
    provider = _InstantProvider()
    registry.register_instance("openai", provider)  # type: ignore[arg-type]
    deps = deployments_from_entries(config.model_list)
    router = Router(deps, config.router_settings, registry)
    ctx = RequestContext("bench", Principal(kind="anonymous"))
    body = {"model": "m", "messages": []}

    async def ours() -> float:
        t0 = time.perf_counter()
        for _ in range(iters):
            await router.chat("m", body, stream=False, ctx=ctx)
        return (time.perf_counter() - t0) / iters * 1e6

    async def peer() -> float:
        # The minimal router: first deployment, build the call, await the provider.
        dep = deps[0]
        t0 = time.perf_counter()
        for _ in range(iters):
            await provider.chat(dep.provider_call(body, ctx.request_id))
        return (time.perf_counter() - t0) / iters * 1e6

    return asyncio.run(ours()), asyncio.run(peer())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deployments", type=int, default=50)
    parser.add_argument("--n", type=int, default=50_000, help="decisions per measurement")
    args = parser.parse_args()
    now = time.time()
    print(f"router decision, {args.deployments} deployments behind one model name, {args.n} picks each")
    print(f"{'strategy':<24}{'situation':<11}{'ours us':>9}{'peer us':>9}{'ours/peer':>10}")
    worst = 0.0
    for situation in ("healthy", "degraded"):
        group = build(args.deployments, situation == "degraded", now)
        peer = time_peer(group, args.n, now)
        for name in STRATEGIES:
            ours = time_ours(group, name, args.n, now)
            worst = max(worst, ours)
            print(f"{name:<24}{situation:<11}{ours:>9.2f}{peer:>9.2f}{ours / peer:>10.2f}")
    full, direct = time_full_chat(args.deployments, max(1000, args.n // 10))
    print(
        f"whole Router.chat, simple-shuffle, instant provider: {full:.2f} us "
        f"(peer: first deployment, direct call {direct:.2f} us; router adds {full - direct:.2f} us)"
    )
    verdict = "OK" if worst < TARGET_US else "TOO SLOW"
    print(f"worst: {worst:.2f} us per decision (target < {TARGET_US:.0f} us): {verdict}")


if __name__ == "__main__":
    main()
