"""Two real ``switchyard serve`` processes sharing one Redis and one Postgres (the control plane),
in front of one fake OpenAI upstream. Shared by tests/limits and tests/cache (session-scoped:
starting gateways is the slow part).

Virtual keys and teams are created through the admin API (``admin_post``). Gateway-wide limits
per model keep the other tests apart:

- ``gpt-429``: 1 request per minute (refusal shape)
- ``gpt-par``: 1 request in flight (slot release on client disconnect)
- ``gpt-hdr``: generous RPM and TPM (header formats)
- ``gpt-rpm`` and ``gpt-cache``: no model limits (key limits; the response cache)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.postgres import fresh_database, postgres_server

MODELS = ("gpt-rpm", "gpt-429", "gpt-par", "gpt-hdr", "gpt-cache")
MASTER_KEY = "sk-master-limits-cache"


@dataclass
class GatewayPair:
    fake: FakeOpenAI
    a: GatewayProcess
    b: GatewayProcess
    redis_url: str
    prefix: str
    database_url: str

    def admin_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(
            self.a.base_url + path, json=body, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=30
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    def admin_get(self, path: str, **params: Any) -> Any:
        r = httpx.get(
            self.a.base_url + path,
            params=params,
            headers={"authorization": f"Bearer {MASTER_KEY}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r.json()

    def new_key(self, **fields: Any) -> str:
        """A virtual key (``rpm_limit``, ``team_id``, ... as the admin API takes them)."""
        return str(self.admin_post("/key/generate", fields)["key"])

    def new_team(self, **fields: Any) -> str:
        return str(
            self.admin_post("/team/new", {"team_alias": f"t-{uuid.uuid4().hex[:8]}", **fields})["team_id"]
        )


def gateway_config(
    fake: FakeOpenAI, redis_url: str, prefix: str, database_url: str | None = None, **general: Any
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "master_key": MASTER_KEY,
        "redis_url": redis_url,
        # A generous timeout: on a loaded CI box a slow reply must not open the circuit (fail-open
        # would then enforce limits per instance and the exactness test would be flaky).
        "redis_timeout_s": 2.0,
        **general,
    }
    if database_url is not None:
        settings["database_url"] = database_url
    return {
        "model_list": [
            {
                "model_name": m,
                "params": {"model": f"openai/{m}", "api_base": fake.base_url, "api_key": "sk-fake"},
            }
            for m in MODELS
        ],
        "general_settings": settings,
        "limit_settings": {
            "key_prefix": prefix,
            "model_limits": {
                "gpt-429": {"rpm": 1},
                "gpt-par": {"max_parallel_requests": 1},
                "gpt-hdr": {"rpm": 1000, "tpm": 100000},
            },
        },
        "cache_settings": {"enabled": True, "key_prefix": prefix},
    }


@pytest.fixture(scope="session")
def gateway_pair(redis_url: str) -> Iterator[GatewayPair]:
    prefix = f"sytest-{uuid.uuid4().hex[:12]}"
    with ExitStack() as stack:
        server = stack.enter_context(postgres_server())
        database_url = stack.enter_context(fresh_database(server, "switchyard_limits"))
        fake = stack.enter_context(FakeOpenAI())
        config = gateway_config(fake, redis_url, prefix, database_url)
        a = stack.enter_context(gateway_process(config))  # migrates the database first
        b = stack.enter_context(gateway_process(config))
        yield GatewayPair(fake, a, b, redis_url, prefix, database_url)
