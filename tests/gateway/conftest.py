"""Shared fixtures for the gateway tests: one fake OpenAI upstream and one real gateway process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import GatewayProcess, free_port, gateway_process

MASTER_KEY = "sk-test-master"
MAX_BODY_MB = 0.05  # ~52 KB, so the 413 test stays cheap


def gateway_config(fake: FakeOpenAI) -> dict[str, Any]:
    dead_port = free_port()  # nothing listens there
    return {
        "model_list": [
            {
                "model_name": "gpt-fake",
                "params": {
                    "model": "openai/fake-upstream",
                    "api_base": fake.base_url,
                    "api_key": "sk-upstream-secret",
                    "input_cost_per_token": 0.000001,
                },
                "model_info": {"id": "fake-1"},
            },
            {
                # LiteLLM's spelling, as found in LiteLLM config files.
                "model_name": "litellm-style",
                "litellm_params": {"model": "hosted_vllm/vllm-model", "api_base": fake.base_url},
            },
            {
                "model_name": "slow",
                "params": {"model": "openai/slow-upstream", "api_base": fake.base_url, "timeout": 0.5},
            },
            {
                "model_name": "dead",
                "params": {"model": "openai/dead", "api_base": f"http://127.0.0.1:{dead_port}/v1"},
            },
        ],
        "general_settings": {"master_key": MASTER_KEY, "max_request_body_mb": MAX_BODY_MB},
        # These tests are about the request path, not routing: no retries, no cooldowns.
        "router_settings": {"num_retries": 0, "allowed_fails": 1000, "cooldown_time": 0},
    }


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_fake(request: pytest.FixtureRequest) -> None:
    if "fake" in request.fixturenames:
        request.getfixturevalue("fake").reset()


@pytest.fixture(scope="session")
def gateway(fake: FakeOpenAI) -> Iterator[GatewayProcess]:
    with gateway_process(gateway_config(fake)) as gw:
        yield gw
