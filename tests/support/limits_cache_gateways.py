"""Two real ``switchyard serve`` processes sharing one Redis, in front of one fake OpenAI upstream.

Shared by tests/limits and tests/cache (session-scoped: starting gateways is the slow part).
Each model name carries its own limits, so tests do not interfere with one another:

- ``gpt-rpm``: 12 requests per minute gateway-wide (the two-instance exactness test)
- ``gpt-429``: 1 request per minute (refusal shape)
- ``gpt-par``: 1 request in flight (slot release on client disconnect)
- ``gpt-hdr``: generous RPM and TPM (header formats)
- ``gpt-cache``: no limits (the response cache)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import GatewayProcess, gateway_process

MODELS = ("gpt-rpm", "gpt-429", "gpt-par", "gpt-hdr", "gpt-cache")
EXACT_RPM = 12


@dataclass
class GatewayPair:
    fake: FakeOpenAI
    a: GatewayProcess
    b: GatewayProcess
    redis_url: str
    prefix: str


def gateway_config(fake: FakeOpenAI, redis_url: str, prefix: str, **general: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": m,
                "params": {"model": f"openai/{m}", "api_base": fake.base_url, "api_key": "sk-fake"},
            }
            for m in MODELS
        ],
        # A generous timeout: on a loaded CI box a slow reply must not open the circuit (fail-open
        # would then enforce limits per instance and the exactness test would be flaky).
        "general_settings": {"redis_url": redis_url, "redis_timeout_s": 2.0, **general},
        "limit_settings": {
            "key_prefix": prefix,
            "model_limits": {
                "gpt-rpm": {"rpm": EXACT_RPM},
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
        fake = stack.enter_context(FakeOpenAI())
        config = gateway_config(fake, redis_url, prefix)
        a = stack.enter_context(gateway_process(config))
        b = stack.enter_context(gateway_process(config))
        yield GatewayPair(fake, a, b, redis_url, prefix)
