"""``prefix-cache-aware`` routing end to end: two ``switchyard engine serve`` replicas of a tiny random
Llama behind a real gateway, driven by the ``openai`` SDK. A conversation's next turn goes to the
replica that served the last one, and that replica's own prefix-cache hit counter (its
``/v1/prefix_cache/summary``) shows the reuse; a prefix cached on a replica behind the gateway's
back is found through that replica's published summary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.engine_models import make_hf_model
from tests.support.engine_server import engine_server as start_engine_server
from tests.support.gateway_process import GatewayProcess, gateway_process

SYSTEM = "Paged attention keeps the KV cache in fixed-size blocks."
TURNS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Continuous batching mixes prefill and decode tokens.",
    "The quick brown fox jumps over the lazy dog. Hello world!",
]


@contextmanager
def engine_server(model_dir: Path, log_path: Path) -> Iterator[str]:
    """A ``switchyard engine serve`` process; yields its base URL (without ``/v1``)."""
    args = ["--model", str(model_dir), "--dtype", "float32"]
    args += ["--max-model-len", "256", "--num-threads", "1", "--log-level", "warning"]
    with start_engine_server(args, log_path) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Deployment id -> engine base URL, for two replicas of one tiny model."""
    root = tmp_path_factory.mktemp("prefix-routing")
    make_hf_model("llama", root / "tiny")
    with ExitStack() as stack:
        yield {
            name: stack.enter_context(engine_server(root / "tiny", root / f"{name}.log"))
            for name in ("replica-a", "replica-b")
        }


@pytest.fixture(scope="module")
def gateway(replicas: dict[str, str]) -> Iterator[GatewayProcess]:
    """The gateway, warmed up: a first request made it read both summaries and the tokenizer
    (until then it knows nothing of the replicas' caches and routes as least-busy)."""
    config = {
        "model_list": [
            {
                "model_name": "tiny",
                "params": {"model": "openai/tiny", "api_base": base + "/v1", "api_key": "none"},
                "model_info": {"id": name, "switchyard_engine": True},
            }
            for name, base in replicas.items()
        ],
        "router_settings": {"routing_strategy": "prefix-cache-aware", "num_retries": 0},
    }
    with gateway_process(config) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
        ask(client, [{"role": "user", "content": "Hello world!"}])
        time.sleep(2.0)
        yield gw


def hits(base: str) -> int:
    """The replica's prefix-cache hit counter (tokens found cached at admission)."""
    return httpx.get(base + "/v1/prefix_cache/summary", timeout=5).json()["prefix_cache"]["hits"]


def ask(client: openai.OpenAI, messages: list[dict[str, str]]) -> tuple[str, str]:
    """One turn through ``client``: (deployment id that served it, the reply)."""
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=messages, max_tokens=6, temperature=0
    )
    reply = raw.parse().choices[0].message.content or ""
    return raw.headers.get("x-switchyard-deployment", ""), reply


def test_next_turn_goes_to_the_replica_that_served_the_last(
    gateway: GatewayProcess, replicas: dict[str, str]
) -> None:
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    for conversation in range(4):
        messages = [{"role": "system", "content": f"{SYSTEM} Conversation {conversation}."}]
        served_by: list[str] = []
        for turn in TURNS:
            messages.append({"role": "user", "content": turn})
            before = {name: hits(base) for name, base in replicas.items()}
            deployment, reply = ask(client, messages)
            after = {name: hits(base) for name, base in replicas.items()}
            assert deployment in replicas, gateway.logs()
            if served_by:
                assert deployment == served_by[0], (
                    f"conversation {conversation} moved: {[*served_by, deployment]}"
                )
                # The replica found the last turn's prompt in its cache (at least one full block)...
                assert after[deployment] - before[deployment] >= 16
                # ...and the other replica did no work at all.
                other = next(name for name in replicas if name != deployment)
                assert after[other] == before[other]
            served_by.append(deployment)
            messages.append({"role": "assistant", "content": reply})


def test_prefix_cached_behind_the_gateways_back_is_found_through_the_summary(
    gateway: GatewayProcess, replicas: dict[str, str]
) -> None:
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    for name, base in replicas.items():
        direct = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
        messages = [
            {"role": "system", "content": f"{SYSTEM} Only {name} has seen this."},
            {"role": "user", "content": TURNS[0]},
        ]
        first = direct.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0)
        messages += [
            {"role": "assistant", "content": first.choices[0].message.content or ""},
            {"role": "user", "content": TURNS[1]},
        ]
        time.sleep(2.5)  # the engine rebuilds its summary every 0.5 s, the gateway polls every 1 s
        before = hits(base)
        deployment, _ = ask(client, messages)
        assert deployment == name
        assert hits(base) - before >= 16
