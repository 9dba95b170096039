"""``count_tokens`` on the native Anthropic adapter: the Messages door's
``POST /v1/messages/count_tokens`` answers with Anthropic's own count
(https://docs.anthropic.com/en/api/messages-count-tokens) when every deployment of the model is an
``anthropic/`` one, and estimates otherwise. A real gateway, the official ``anthropic`` SDK, the
fake Anthropic API (which refuses generation fields on count_tokens, as the API does) and a fake
OpenAI upstream for the mixed model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.support.fake_anthropic import Behavior, FakeAnthropic, count_prompt
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import GatewayProcess, gateway_process

MASTER_KEY = "sk-master-count-tokens"
UPSTREAM_KEY = "sk-ant-upstream-count-secret"
TOOL = {
    "name": "weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PROMPT: dict[str, Any] = {
    "system": "You are a terse meteorologist.",
    "messages": [{"role": "user", "content": "What is the weather in Oslo, and in Rome, tomorrow?"}],
    "tools": [TOOL],
}


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeAnthropic, FakeOpenAI]]:
    with FakeAnthropic(api_key=UPSTREAM_KEY) as ant_fake, FakeOpenAI() as oai_fake:
        yield ant_fake, oai_fake


@pytest.fixture(scope="module")
def gw(fakes: tuple[FakeAnthropic, FakeOpenAI]) -> Iterator[GatewayProcess]:
    ant_fake, oai_fake = fakes
    native = {"api_base": ant_fake.base_url, "api_key": UPSTREAM_KEY}
    config = {
        "model_list": [
            {"model_name": "claude", "params": {"model": "anthropic/claude-upstream", **native}},
            {"model_name": "anthropic/*", "params": {"model": "anthropic/*", **native}},
            # One deployment of "mixed" is not Anthropic: the door cannot count it exactly.
            {"model_name": "mixed", "params": {"model": "anthropic/claude-mixed", **native}},
            {"model_name": "mixed", "params": {"model": "openai/gpt-mixed", "api_base": oai_fake.base_url}},
        ],
        "general_settings": {"master_key": MASTER_KEY},
        "router_settings": {"num_retries": 0},
    }
    with gateway_process(config) as g:
        yield g
        assert UPSTREAM_KEY not in g.logs()


@pytest.fixture(autouse=True)
def _fresh(fakes: tuple[FakeAnthropic, FakeOpenAI]) -> None:
    fakes[0].reset()


def client(gw: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.base_url, api_key=MASTER_KEY, max_retries=0, timeout=30)


def test_an_anthropic_model_is_counted_by_anthropic(
    gw: GatewayProcess, fakes: tuple[FakeAnthropic, Any]
) -> None:
    counted = client(gw).messages.count_tokens(model="claude", **PROMPT)
    sent = fakes[0].last()
    assert sent.path == "/v1/messages/count_tokens"
    assert counted.input_tokens == count_prompt(sent.body)
    assert sent.body["model"] == "claude-upstream"
    assert sent.body["system"] == PROMPT["system"] and sent.body["tools"][0]["name"] == "weather"
    # Only the prompt goes: generation fields are "Extra inputs" there (the fake refuses them).
    assert "max_tokens" not in sent.body and "stream" not in sent.body
    assert sent.headers["x-api-key"] == UPSTREAM_KEY and sent.headers["anthropic-version"] == "2023-06-01"


def test_a_name_an_anthropic_wildcard_serves_is_counted_with_that_model(
    gw: GatewayProcess, fakes: tuple[FakeAnthropic, Any]
) -> None:
    counted = client(gw).messages.count_tokens(model="anthropic/claude-3-5-haiku-20241022", **PROMPT)
    sent = fakes[0].last()
    assert sent.path == "/v1/messages/count_tokens" and sent.body["model"] == "claude-3-5-haiku-20241022"
    assert counted.input_tokens == count_prompt(sent.body)


def test_a_model_with_a_deployment_that_cannot_count_is_estimated(
    gw: GatewayProcess, fakes: tuple[FakeAnthropic, Any]
) -> None:
    counted = client(gw).messages.count_tokens(model="mixed", **PROMPT)
    assert counted.input_tokens > 0
    assert fakes[0].requests == []


def test_anthropic_errors_come_back_in_anthropic_shape(
    gw: GatewayProcess, fakes: tuple[FakeAnthropic, Any]
) -> None:
    fakes[0].enqueue(Behavior(status=429, error_type="rate_limit_error", error_message="slow down"))
    with pytest.raises(anthropic.RateLimitError) as info:
        client(gw).messages.count_tokens(model="claude", **PROMPT)
    assert "slow down" in str(info.value)
    fakes[0].enqueue(
        Behavior(status=401, error_type="authentication_error", error_message="invalid x-api-key")
    )
    with pytest.raises(anthropic.APIStatusError) as failed:
        client(gw).messages.count_tokens(model="claude", **PROMPT)
    assert UPSTREAM_KEY not in str(failed.value)
