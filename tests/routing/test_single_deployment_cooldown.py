"""Cooling down the only deployment of a model: only when the config asks, or when every call fails.

Cooling down a model's only deployment sends traffic nowhere else: it answers every caller 503
for the whole cooldown. A soak at 1,100 req/s showed 25 transient upstream failures turning
into 7,114 503s. These tests pin the rule of ``gateway.routing.cooldowns`` end to end (a real
``switchyard serve`` process, misbehaving upstreams, the official openai SDK) and on the
cooldown manager itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.routing.cooldowns import CooldownManager, CooldownSettings
from gateway.routing.state import DeploymentState
from tests.support import misbehaving_upstream as mu
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.misbehaving_upstream import MisbehavingUpstream

MASTER_KEY = "sk-master-lone-test"
NAMES = ["lone", "lone429", "dead", "pa", "pb", "strict"]
MSG = [{"role": "user", "content": "hi"}]
LONE_MIN_FAILS = CooldownSettings().single_deployment_min_fails


def dep(model_name: str, up: MisbehavingUpstream, dep_id: str) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "params": {"model": f"openai/{up.name}", "api_base": up.url, "api_key": "sk-upstream-lone"},
        "model_info": {"id": dep_id},
    }


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, MisbehavingUpstream]]:
    started = {name: MisbehavingUpstream(name).start() for name in NAMES}
    yield started
    for up in started.values():
        up.stop()


@pytest.fixture(scope="module")
def gw(ups: dict[str, MisbehavingUpstream]) -> Iterator[GatewayProcess]:
    """``allowed_fails`` left unset: the default rule (3 in the window) for groups, the lone rule
    for single deployments. No retries, so each request is exactly one upstream call."""
    config = {
        "model_list": [
            dep("lone", ups["lone"], "lone-0"),
            dep("lone429", ups["lone429"], "lone429-0"),
            dep("dead", ups["dead"], "dead-0"),
            dep("pair", ups["pa"], "pair-a"),
            dep("pair", ups["pb"], "pair-b"),
        ],
        "general_settings": {"master_key": MASTER_KEY},
        "router_settings": {"num_retries": 0, "cooldown_time": 60},
    }
    with gateway_process(config) as g:
        yield g


@pytest.fixture(scope="module")
def strict_gw(ups: dict[str, MisbehavingUpstream]) -> Iterator[GatewayProcess]:
    """The same, but with ``allowed_fails`` set explicitly (to its default value)."""
    config = {
        "model_list": [dep("strict", ups["strict"], "strict-0")],
        "general_settings": {"master_key": MASTER_KEY},
        "router_settings": {"num_retries": 0, "cooldown_time": 60, "allowed_fails": 3},
    }
    with gateway_process(config) as g:
        yield g


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)


def test_single_deployment_that_fails_a_few_times_keeps_being_tried(
    gw: GatewayProcess, ups: dict[str, MisbehavingUpstream]
) -> None:
    ups["lone"].script(*[mu.server_error() for _ in range(5)])  # then the default: ok
    c = client(gw)
    for _ in range(5):
        with pytest.raises(openai.InternalServerError) as info:
            c.chat.completions.create(model="lone", messages=MSG)
        assert info.value.status_code == 500  # the upstream's own error, not a 503 cooldown
    # The upstream recovered: the very next requests reach it and succeed.
    for _ in range(5):
        raw = c.chat.completions.with_raw_response.create(model="lone", messages=MSG)
        assert raw.parse().choices[0].message.content == "lone"
    assert ups["lone"].chat_hits == 10


def test_single_deployment_429_with_retry_after_is_passed_on_not_a_cooldown(
    gw: GatewayProcess, ups: dict[str, MisbehavingUpstream]
) -> None:
    ups["lone429"].script(mu.rate_limited(retry_after=30))
    c = client(gw)
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="lone429", messages=MSG)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "30"  # the upstream's own, passed on
    # The next caller is not refused for 30 s on the upstream's behalf: it reaches the upstream.
    assert c.chat.completions.create(model="lone429", messages=MSG).choices[0].message.content == "lone429"
    assert ups["lone429"].chat_hits == 2


def test_single_deployment_that_fails_every_call_under_traffic_is_cooled_down(
    gw: GatewayProcess, ups: dict[str, MisbehavingUpstream]
) -> None:
    dead = ups["dead"]
    dead.set_default(mu.server_error())
    statuses: dict[int, int] = {}
    with httpx.Client(
        base_url=gw.base_url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    ) as http:
        for _ in range(LONE_MIN_FAILS + 5):
            r = http.post("/v1/chat/completions", json={"model": "dead", "messages": MSG})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            last = r
    # Exactly LONE_MIN_FAILS calls reached the upstream; the rest were shed by the cooldown.
    assert dead.chat_hits == LONE_MIN_FAILS
    assert statuses == {500: LONE_MIN_FAILS, 503: 5}
    assert last.json()["error"]["code"] == "no_healthy_deployments"
    assert 55 <= int(last.headers["retry-after"]) <= 60


def test_two_deployment_group_still_cools_down_the_failing_one(
    gw: GatewayProcess, ups: dict[str, MisbehavingUpstream]
) -> None:
    ups["pa"].set_default(mu.server_error())
    c = client(gw)
    for _ in range(200):  # simple-shuffle picks "pair-a" about half the time
        if ups["pa"].chat_hits == 3:
            break
        try:
            c.chat.completions.create(model="pair", messages=MSG)
        except openai.InternalServerError:
            pass
    assert ups["pa"].chat_hits == 3  # allowed_fails (default 3) reached: cooled down now
    for _ in range(30):
        raw = c.chat.completions.with_raw_response.create(model="pair", messages=MSG)
        assert raw.headers["x-switchyard-deployment"] == "pair-b"
    assert ups["pa"].chat_hits == 3


def test_explicit_allowed_fails_cools_down_a_single_deployment_as_before(
    strict_gw: GatewayProcess, ups: dict[str, MisbehavingUpstream]
) -> None:
    ups["strict"].set_default(mu.server_error())
    c = client(strict_gw)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            c.chat.completions.create(model="strict", messages=MSG)
    with pytest.raises(openai.APIStatusError) as info:
        c.chat.completions.create(model="strict", messages=MSG)
    assert info.value.status_code == 503
    assert info.value.body["code"] == "no_healthy_deployments"  # type: ignore[index]
    assert ups["strict"].chat_hits == 3


# ---- the cooldown manager's rule, on its own -------------------------------------------------


def lone() -> DeploymentState:
    return DeploymentState(id="only", model_name="m")


async def test_a_success_ends_a_lone_deployments_failure_streak() -> None:
    d = lone()
    cm = CooldownManager([d], CooldownSettings(allowed_fails=1, single_deployment_min_fails=4))
    for _ in range(3):
        assert not await cm.record_failure(d)
    cm.record_success(d)
    for _ in range(3):
        assert not await cm.record_failure(d)  # 6 failures in the window, but not 4 in a row
    assert d.cooldown_until == 0.0
    assert await cm.record_failure(d)  # the 4th in a row
    assert d.cooldown_until > time.time() + 29


async def test_retry_after_does_not_cool_down_a_lone_deployment_unless_allowed_fails_is_set() -> None:
    d = lone()
    cm = CooldownManager([d], CooldownSettings(allowed_fails=3))
    assert not await cm.record_failure(d, retry_after=20)
    assert d.cooldown_until == 0.0
    d = lone()
    cm = CooldownManager([d], CooldownSettings(allowed_fails=3, allowed_fails_set=True))
    assert await cm.record_failure(d, retry_after=20)
    assert time.time() + 19 < d.cooldown_until <= time.time() + 20


async def test_successes_do_not_reset_failure_counts_in_multi_deployment_groups() -> None:
    ds = [DeploymentState(id="a", model_name="m"), DeploymentState(id="b", model_name="m")]
    cm = CooldownManager(ds, CooldownSettings(allowed_fails=3))
    assert not await cm.record_failure(ds[0])
    assert not await cm.record_failure(ds[0])
    cm.record_success(ds[0])
    assert await cm.record_failure(ds[0])  # 3 within the window, as before
