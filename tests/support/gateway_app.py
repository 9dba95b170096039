"""One builder for the keyed gateway the doors', control-plane and hostile-input tests run.

A real ``switchyard serve`` in front of the fake OpenAI upstream, with virtual keys in a Postgres
database of its own:

    with own_database() as database_url, FakeOpenAI() as fake:
        config = gateway_config(fake.base_url, models=["gpt-4o-mini"], cache=True)
        with keyed_gateway(config, database_url) as gw:
            key = new_key(gw, models=["gpt-4o-mini"])["key"]

Each deployment is served by the fake under its own name (``openai/<name>``) and priced at
``INPUT_COST``/``OUTPUT_COST`` a token, so a spend row's cost is exactly predictable.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx

from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.postgres import fresh_database, postgres_server

MASTER_KEY = "sk-master-gateway-test"
# What the fake upstream reports per request (7 prompt + 3 completion tokens) at these prices.
INPUT_COST, OUTPUT_COST = 1e-6, 2e-6
UNIT_COST = Decimal("0.000013")
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o")


def gateway_config(
    fake_base_url: str,
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    cache: bool = False,
    redis_url: str | None = None,
    **general: Any,
) -> dict[str, Any]:
    """A config serving ``models`` from the fake upstream, with ``MASTER_KEY``.

    Spend is flushed every 0.1 s (tests poll for it). ``cache`` turns the response cache on.
    With ``redis_url`` every request goes through the Redis limiter with token accounting (a key
    TPM default high enough never to refuse), under a key prefix of its own. ``general`` adds or
    overrides ``general_settings``.
    """
    params = {
        "api_base": fake_base_url,
        "api_key": "sk-upstream-fake",
        "input_cost_per_token": INPUT_COST,
        "output_cost_per_token": OUTPUT_COST,
    }
    config: dict[str, Any] = {
        "model_list": [
            {"model_name": name, "litellm_params": {"model": f"openai/{name}", **params}} for name in models
        ],
        "general_settings": {"master_key": MASTER_KEY, "spend_flush_interval_s": 0.1, **general},
    }
    if cache:
        config["cache_settings"] = {"enabled": True}
    if redis_url is not None:
        config["general_settings"]["redis_url"] = redis_url
        config["limit_settings"] = {"key_prefix": f"sy-test-{uuid.uuid4().hex[:8]}", "key_tpm": 10**9}
    return config


@contextmanager
def own_database(prefix: str = "switchyard_test") -> Iterator[str]:
    """A fresh database on the test Postgres server (the gateway migrates it), dropped on exit."""
    with postgres_server() as server, fresh_database(server, prefix) as url:
        yield url


@contextmanager
def keyed_gateway(config: dict[str, Any], database_url: str) -> Iterator[GatewayProcess]:
    """``switchyard serve`` with ``config``, keeping its virtual keys and spend in ``database_url``."""
    with gateway_process(config, env={"DATABASE_URL": database_url}) as gw:
        yield gw


@contextmanager
def self_contained_gateway(database_prefix: str, **config: Any) -> Iterator[GatewayProcess]:
    """A keyed gateway with a database and a fake upstream of its own (``config``: ``gateway_config``'s
    keywords), for tests that never look at the upstream."""
    with own_database(database_prefix) as database_url, FakeOpenAI() as fake:
        with keyed_gateway(gateway_config(fake.base_url, **config), database_url) as gw:
            yield gw


def admin(gw: GatewayProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to the admin API as the master key; the answer must be 200."""
    resp = httpx.post(
        gw.base_url + path, json=body, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def new_key(gw: GatewayProcess, **body: Any) -> dict[str, Any]:
    """A new virtual key (``/key/generate`` with ``body``): ``key`` is the secret, ``token`` its hash."""
    return admin(gw, "/key/generate", body)
