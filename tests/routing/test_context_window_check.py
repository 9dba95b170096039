"""The pre-call context-window check, through a real gateway: a request that cannot fit its model's
window (from the price table) is refused with OpenAI's 400 ``context_length_exceeded`` before any
upstream call, or sent to ``context_window_fallbacks``; one that may fit goes upstream as before.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from gateway.routing.context_window import context_limit
from gateway.spend.prices import bundled
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import GatewayProcess, gateway_process

MASTER_KEY = "sk-master-context-window"
SMALL, BIG = "gpt-4", "gpt-4.1"  # windows of 8k and 1M tokens in the table


def limit_of(model: str) -> int:
    card = bundled().lookup("openai", model)
    assert card is not None and card.max_input_tokens
    return context_limit(card.max_input_tokens, card.max_output_tokens)


def prompt_of(tokens: int) -> list[dict[str, str]]:
    """One user message the doors estimate at ``tokens`` (about 4 characters a token)."""
    return [{"role": "user", "content": "word " * (4 * tokens // 5)}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as up:
        yield up


@pytest.fixture(scope="module")
def gw(fake: FakeOpenAI) -> Iterator[GatewayProcess]:
    params = {"api_base": fake.base_url, "api_key": "sk-upstream-fake"}
    config = {
        "model_list": [
            {"model_name": "small", "params": {"model": f"openai/{SMALL}", **params}},
            {"model_name": "small-with-fallback", "params": {"model": f"openai/{SMALL}", **params}},
            {"model_name": "big", "params": {"model": f"openai/{BIG}", **params}},
        ],
        "router_settings": {"context_window_fallbacks": [{"small-with-fallback": ["big"]}], "num_retries": 0},
        "general_settings": {"master_key": MASTER_KEY},
    }
    with gateway_process(config) as g:
        yield g


@pytest.fixture
def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)


def test_a_prompt_that_cannot_fit_is_refused_before_any_upstream_call(
    gw: GatewayProcess, fake: FakeOpenAI, client: openai.OpenAI
) -> None:
    before = len(fake.requests)
    too_long = prompt_of(limit_of(SMALL) + 500)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="small", messages=too_long, stream=stream)  # type: ignore[call-overload]
        assert refused.value.status_code == 400
        assert refused.value.code == "context_length_exceeded", refused.value.body
        assert "maximum context length" in refused.value.message
    # The completion budget counts too: a short prompt asking for more than the window holds.
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=limit_of(SMALL) + 1
        )
    assert refused.value.code == "context_length_exceeded"
    # The Anthropic door refuses it in Anthropic's shape.
    messages = anthropic.Anthropic(base_url=gw.base_url, api_key=MASTER_KEY, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as ant_refused:
        messages.messages.create(model="small", max_tokens=100, messages=too_long)  # type: ignore[arg-type]
    assert ant_refused.value.status_code == 400
    assert ant_refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert len(fake.requests) == before, "a refused request reached the upstream"


def test_a_prompt_that_may_fit_goes_upstream(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    before = len(fake.requests)
    # Estimated well past the model's input limit, but not twice its window: the upstream decides.
    near = prompt_of(limit_of(SMALL) - 500)
    answer = client.chat.completions.create(model="small", messages=near)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    assert len(fake.requests) == before + 1


def test_context_window_fallbacks_get_the_prompt_instead(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    before = len(fake.requests)
    too_long = prompt_of(limit_of(SMALL) + 500)
    answer = client.chat.completions.create(model="small-with-fallback", messages=too_long)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    sent = fake.requests[before:]
    assert [r.body["model"] for r in sent] == [BIG], "only the bigger model is called"
