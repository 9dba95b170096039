"""End to end: a real ``switchyard serve`` process, misbehaving upstreams, the official openai SDK.

One gateway serves every test in this module (each test owns its model names and upstreams);
the shared-cooldown test starts two more, both pointed at the same real Redis.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest

from tests.support import misbehaving_upstream as mu
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.misbehaving_upstream import MisbehavingUpstream

MASTER_KEY = "sk-master-e2e-test"
UPSTREAM_KEY = "sk-upstream-e2e-secret"
NAMES = ["w1", "w3", "retry", "fa", "fb", "fc", "brk", "cool", "dead"]


def dep(model_name: str, up: MisbehavingUpstream, dep_id: str, **params: Any) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "params": {"model": f"openai/{up.name}", "api_base": up.url, "api_key": UPSTREAM_KEY, **params},
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
    dead = ups["dead"]
    dead.stop()  # nothing listens there any more: /health must call it unhealthy
    config = {
        "model_list": [
            dep("weighted", ups["w1"], "weighted-1", weight=1),
            dep("weighted", ups["w3"], "weighted-3", weight=3),
            dep("retry", ups["retry"], "retry-0"),
            dep("fa", ups["fa"], "fa-0"),
            dep("fb", ups["fb"], "fb-0"),
            dep("fc", ups["fc"], "fc-0"),
            dep("brk", ups["brk"], "brk-0"),
            dep("cool", ups["cool"], "cool-0"),
            dep("dead", dead, "dead-0"),
        ],
        "general_settings": {"master_key": MASTER_KEY},
        "router_settings": {
            "num_retries": 2,
            "allowed_fails": 3,
            "cooldown_time": 60,
            "fallbacks": [{"fa": ["fb", "fc"]}],
        },
    }
    with gateway_process(config) as g:
        yield g


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)


MSG = [{"role": "user", "content": "hi"}]


def test_weighted_shuffle_end_to_end(gw: GatewayProcess, ups: dict[str, MisbehavingUpstream]) -> None:
    c = client(gw)
    n = 80
    served = []
    for _ in range(n):
        raw = c.chat.completions.with_raw_response.create(model="weighted", messages=MSG)
        served.append(raw.headers["x-switchyard-deployment"])
        assert raw.headers["x-switchyard-attempts"] == "1"
        assert float(raw.headers["x-switchyard-overhead-ms"]) >= 0
    heavy = served.count("weighted-3")
    assert heavy + served.count("weighted-1") == n
    assert (ups["w1"].chat_hits, ups["w3"].chat_hits) == (n - heavy, heavy)
    # Binomial(80, 0.75): mean 60, sd 3.9. A 4.5-sd band fails a correct router ~1 in 150,000 runs.
    sd = math.sqrt(n * 0.75 * 0.25)
    assert abs(heavy - 60) < 4.5 * sd


def test_retries_are_counted_in_the_attempts_header(
    gw: GatewayProcess, ups: dict[str, MisbehavingUpstream]
) -> None:
    ups["retry"].script(mu.server_error(), mu.rate_limited(), mu.ok("finally"))
    raw = client(gw).chat.completions.with_raw_response.create(model="retry", messages=MSG)
    assert raw.parse().choices[0].message.content == "finally"
    assert raw.headers["x-switchyard-attempts"] == "3"
    assert raw.headers["x-switchyard-deployment"] == "retry-0"
    assert ups["retry"].chat_hits == 3


def test_fallbacks_run_in_order_end_to_end(gw: GatewayProcess, ups: dict[str, MisbehavingUpstream]) -> None:
    ups["fa"].set_default(mu.server_error())
    ups["fb"].set_default(mu.server_error())
    raw = client(gw).chat.completions.with_raw_response.create(model="fa", messages=MSG)
    assert raw.parse().choices[0].message.content == "fc"
    assert raw.headers["x-switchyard-deployment"] == "fc-0"
    # 3 attempts on fa (num_retries=2), 3 on fb, then fc answers: 7 upstream calls.
    assert (ups["fa"].chat_hits, ups["fb"].chat_hits, ups["fc"].chat_hits) == (3, 3, 1)
    assert raw.headers["x-switchyard-attempts"] == "7"
    assert ups["fa"].requests[-1].at <= ups["fb"].requests[0].at <= ups["fc"].requests[0].at


def test_no_retry_after_the_first_streamed_byte(
    gw: GatewayProcess, ups: dict[str, MisbehavingUpstream]
) -> None:
    ups["brk"].script(mu.reset_mid_stream(chunks_before_reset=2))
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client(gw).chat.completions.create(model="brk", messages=MSG, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert "interrupted" in str(info.value.message)
    assert ups["brk"].chat_hits == 1
    # A later stream from the same deployment works (one failure is below allowed_fails).
    text = "".join(
        ch.choices[0].delta.content or ""
        for ch in client(gw).chat.completions.create(model="brk", messages=MSG, stream=True)
        if ch.choices
    )
    assert text == "brk"


def test_all_cooled_down_answers_503_quickly(gw: GatewayProcess, ups: dict[str, MisbehavingUpstream]) -> None:
    ups["cool"].set_default(mu.server_error())
    c = client(gw)
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="cool", messages=MSG)  # 3 attempts: cooled down now
    assert ups["cool"].chat_hits == 3
    with pytest.raises(openai.APIStatusError) as info:
        c.chat.completions.create(model="cool", messages=MSG)
    err = info.value
    assert err.status_code == 503
    assert err.body["code"] == "no_healthy_deployments"  # type: ignore[index]
    assert 55 <= int(err.response.headers["retry-after"]) <= 60
    assert ups["cool"].chat_hits == 3


def test_models_and_health_never_show_secrets(gw: GatewayProcess) -> None:
    models = client(gw).models.list()
    assert {m.id for m in models.data} == {"weighted", "retry", "fa", "fb", "fc", "brk", "cool", "dead"}
    assert httpx.get(gw.base_url + "/health").status_code == 401
    r = httpx.get(gw.base_url + "/health", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=30)
    assert r.status_code == 200, r.text
    report = r.json()
    assert UPSTREAM_KEY not in r.text and MASTER_KEY not in r.text
    unhealthy = {e["id"] for e in report["unhealthy_endpoints"]}
    healthy = {e["id"] for e in report["healthy_endpoints"]}
    assert unhealthy == {"dead-0"}
    assert report["unhealthy_count"] == 1 and report["healthy_count"] == 8
    assert "weighted-3" in healthy
    assert {"model_name", "model", "api_base", "id"} <= set(report["healthy_endpoints"][0])


def test_cooldown_is_shared_by_two_gateways_through_redis(redis_url: str, upstream) -> None:
    run = uuid.uuid4().hex[:8]
    bad = upstream("bad", mu.server_error())
    good = upstream("good")
    config = {
        "model_list": [dep("m", bad, f"bad-{run}"), dep("m", good, f"good-{run}")],
        "general_settings": {"redis_url": redis_url},
        "router_settings": {"num_retries": 1, "allowed_fails": 1, "cooldown_time": 4},
    }
    with ExitStack() as stack:
        # Start both at once: each start is mostly waiting on imports.
        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(
                lambda cm: stack.enter_context(cm), [gateway_process(config), gateway_process(config)]
            )
        ca = openai.OpenAI(base_url=a.base_url + "/v1", api_key="x", max_retries=0)
        cb = openai.OpenAI(base_url=b.base_url + "/v1", api_key="x", max_retries=0)
        # Gateway A eventually picks "bad" once: it fails, A retries on "good" and cools "bad" down.
        for _ in range(50):
            raw = ca.chat.completions.with_raw_response.create(model="m", messages=MSG)
            assert raw.parse().choices[0].message.content == "good"
            if bad.chat_hits:
                assert raw.headers["x-switchyard-attempts"] == "2"
                break
        assert bad.chat_hits == 1
        cooled_at = time.monotonic()
        time.sleep(0.3)  # longer than the local cache of shared cooldowns
        # Gateway B never saw "bad" fail, yet sends it nothing while the cooldown lasts.
        for _ in range(20):
            cb.chat.completions.create(model="m", messages=MSG)
        assert time.monotonic() - cooled_at < 4, "too slow to check inside the cooldown"
        assert bad.chat_hits == 1
        # And the cooldown ends: after it, B sends "bad" traffic again.
        time.sleep(max(0.0, 4.3 - (time.monotonic() - cooled_at)))
        for _ in range(50):
            cb.chat.completions.create(model="m", messages=MSG)
            if bad.chat_hits > 1:
                break
        assert bad.chat_hits == 2
