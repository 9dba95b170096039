"""Deployment-level params (LiteLLM's ``litellm_params``) applied to every call, end to end.

A real gateway process in front of two fake OpenAI upstreams (``tests/support/fake_openai.py``,
which records every body and header it receives): request defaults reach the upstream when the
caller leaves them out and lose to the caller's own values; ``additional_drop_params`` are removed;
``organization`` and ``extra_headers`` become headers; a retry on another deployment gets the
caller's body as it came, not the first deployment's defaults; the typed path (the anthropic SDK
on ``/v1/messages``) gets the defaults in its empty slots; per-deployment ``timeout`` bounds a
call; per-deployment ``max_retries`` retries the same deployment; ``drop_params`` (global or per
deployment) reaches the adapters in ``ProviderCall.params``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from gateway.config import parse_config
from gateway.routing.deployment import deployments_from_entries
from tests.support.fake_openai import Behavior, FakeOpenAI, RecordedRequest
from tests.support.gateway_app import MASTER_KEY, own_database
from tests.support.gateway_process import GatewayProcess, gateway_process

Fakes = tuple[FakeOpenAI, FakeOpenAI]
MSG = [{"role": "user", "content": "hi"}]
DEFAULTS = {
    "temperature": 0.2,
    "max_tokens": 64,
    "seed": 7,
    "stop": ["END"],
    "frequency_penalty": 0.5,
}


def entry(name: str, fake: FakeOpenAI, upstream: str, **params: Any) -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {
            "model": f"openai/{upstream}",
            "api_base": fake.base_url,
            "api_key": "sk-upstream-fake",
            **params,
        },
    }


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    with FakeOpenAI() as a, FakeOpenAI() as b:
        yield a, b


@pytest.fixture(autouse=True)
def _fresh(fakes: Fakes) -> None:
    for fake in fakes:
        fake.reset()


@pytest.fixture(scope="module")
def gw(fakes: Fakes) -> Iterator[GatewayProcess]:
    a, b = fakes
    config = {
        "model_list": [
            entry(
                "tuned",
                a,
                "tuned-up",
                **DEFAULTS,
                additional_drop_params=["logit_bias", "user"],
                organization="org-test",
                extra_headers={"X-Team": "search"},
            ),
            entry("plain", a, "plain-up"),
            # Tried first (order 0) and failing: the retry goes to order 1, without defaults.
            entry("pair", b, "pair-b", temperature=0.2, additional_drop_params=["user"], order=0),
            entry("pair", a, "pair-a", order=1),
            entry("emb", a, "emb-up", temperature=0.3, dimensions=16),
            entry("slow", a, "slow-up", timeout=1),
            entry("slow-stream", a, "slow-stream-up", stream_timeout=1),
            entry("retrying", a, "retrying-up", max_retries=3),
        ],
        "general_settings": {"master_key": MASTER_KEY},
        "router_settings": {"num_retries": 1},
    }
    with own_database() as database_url, gateway_process(config, env={"DATABASE_URL": database_url}) as g:
        yield g


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)


def sent(fake: FakeOpenAI, upstream: str) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.body.get("model") == upstream]


def test_defaults_apply_when_the_caller_leaves_them_out(gw: GatewayProcess, fakes: Fakes) -> None:
    client(gw).chat.completions.create(model="tuned", messages=MSG)
    (req,) = sent(fakes[0], "tuned-up")
    assert {k: req.body.get(k) for k in DEFAULTS} == DEFAULTS


def test_the_callers_values_win_over_defaults(gw: GatewayProcess, fakes: Fakes) -> None:
    client(gw).chat.completions.create(model="tuned", messages=MSG, temperature=0.9, stop="STOP", seed=1)
    (req,) = sent(fakes[0], "tuned-up")
    assert (req.body["temperature"], req.body["stop"], req.body["seed"]) == (0.9, "STOP", 1)
    assert (req.body["max_tokens"], req.body["frequency_penalty"]) == (64, 0.5)  # not given: defaults


def test_streams_get_the_defaults_too(gw: GatewayProcess, fakes: Fakes) -> None:
    stream = client(gw).chat.completions.create(model="tuned", messages=MSG, stream=True, top_p=0.5)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "chunk0 chunk1 chunk2 "
    (req,) = sent(fakes[0], "tuned-up")
    assert (req.body["stream"], req.body["temperature"], req.body["top_p"]) == (True, 0.2, 0.5)


def test_additional_drop_params_are_removed(gw: GatewayProcess, fakes: Fakes) -> None:
    client(gw).chat.completions.create(model="tuned", messages=MSG, logit_bias={"50256": -100}, user="u-1")
    (req,) = sent(fakes[0], "tuned-up")
    assert "logit_bias" not in req.body and "user" not in req.body
    assert req.body["messages"] == MSG


def test_organization_and_extra_headers_are_sent(gw: GatewayProcess, fakes: Fakes) -> None:
    c = client(gw)
    c.chat.completions.create(model="tuned", messages=MSG)
    c.chat.completions.create(model="plain", messages=MSG)
    (tuned,) = sent(fakes[0], "tuned-up")
    assert (tuned.headers.get("openai-organization"), tuned.headers.get("x-team")) == ("org-test", "search")
    (plain,) = sent(fakes[0], "plain-up")
    assert "openai-organization" not in plain.headers and "x-team" not in plain.headers


def test_a_deployment_without_params_sends_the_body_as_it_came(gw: GatewayProcess, fakes: Fakes) -> None:
    client(gw).chat.completions.create(model="plain", messages=MSG, user="u-2")
    (req,) = sent(fakes[0], "plain-up")
    assert req.body == {"messages": MSG, "model": "plain-up", "user": "u-2"}


def test_a_retry_elsewhere_gets_the_callers_body_not_the_first_deployments_defaults(
    gw: GatewayProcess, fakes: Fakes
) -> None:
    a, b = fakes
    b.enqueue(Behavior(status=500))
    raw = client(gw).chat.completions.with_raw_response.create(model="pair", messages=MSG, user="u-3")
    assert raw.headers["x-switchyard-attempts"] == "2"
    (first,) = sent(b, "pair-b")
    assert first.body["temperature"] == 0.2 and "user" not in first.body
    (retry,) = sent(a, "pair-a")
    assert retry.body == {"messages": MSG, "model": "pair-a", "user": "u-3"}


def test_embeddings_get_only_embedding_defaults(gw: GatewayProcess, fakes: Fakes) -> None:
    result = client(gw).embeddings.create(model="emb", input="hello")
    assert len(result.data[0].embedding) == 16
    (req,) = sent(fakes[0], "emb-up")
    assert req.body["dimensions"] == 16 and "temperature" not in req.body


def test_the_typed_path_fills_the_slots_the_caller_left_empty(gw: GatewayProcess, fakes: Fakes) -> None:
    claude = anthropic.Anthropic(base_url=gw.base_url, api_key=MASTER_KEY, max_retries=0, timeout=30)
    # This SDK version has no top_p argument; the Messages API has the field.
    message = claude.messages.create(
        model="tuned", max_tokens=20, metadata={"user_id": "u-4"}, messages=MSG, extra_body={"top_p": 0.4}
    )
    assert message.content[0].text == "chunk0 chunk1 chunk2 "  # type: ignore[union-attr]
    (req,) = sent(fakes[0], "tuned-up")
    assert (req.body["max_tokens"], req.body["top_p"]) == (20, 0.4)  # the caller's
    assert (req.body["temperature"], req.body["seed"], req.body["stop"]) == (0.2, 7, ["END"])
    assert "user" not in req.body  # metadata.user_id is the `user` slot: dropped here


def test_a_deployment_timeout_bounds_its_calls(gw: GatewayProcess, fakes: Fakes) -> None:
    fakes[0].set_behavior(Behavior(delay_s=10), model="slow-up")
    with pytest.raises(openai.APIStatusError) as failed:
        client(gw).chat.completions.create(model="slow", messages=MSG)
    assert failed.value.status_code in (408, 504)
    assert "timed out" in str(failed.value.message) or "within" in str(failed.value.message)


def test_a_deployment_stream_timeout_bounds_the_wait_for_the_first_event(
    gw: GatewayProcess, fakes: Fakes
) -> None:
    fakes[0].set_behavior(Behavior(delay_s=10), model="slow-stream-up")
    with pytest.raises(openai.APIStatusError) as failed:
        client(gw).chat.completions.create(model="slow-stream", messages=MSG, stream=True)
    assert failed.value.status_code in (408, 504)
    assert fakes[0].wait_for_cancel(10)  # the gateway gave up on the upstream request


def test_max_retries_retries_the_same_deployment(gw: GatewayProcess, fakes: Fakes) -> None:
    # Three 503s (Retry-After: 0 keeps the test fast): the deployment's max_retries=3 makes four
    # attempts on it; the router's own num_retries=1 alone would have given up after two.
    fakes[0].enqueue(*[Behavior(status=503, headers={"retry-after": "0"}) for _ in range(3)])
    reply = client(gw).chat.completions.with_raw_response.create(model="retrying", messages=MSG)
    assert reply.headers["x-switchyard-attempts"] == "4"
    assert len(sent(fakes[0], "retrying-up")) == 4
    assert "max_retries is not applied" not in gw.logs()


def test_without_max_retries_the_routers_retries_are_all(gw: GatewayProcess, fakes: Fakes) -> None:
    fakes[0].enqueue(*[Behavior(status=503, headers={"retry-after": "0"}) for _ in range(3)])
    with pytest.raises(openai.InternalServerError):
        client(gw).chat.completions.create(model="plain", messages=MSG)
    assert len(sent(fakes[0], "plain-up")) == 2  # the first attempt and num_retries=1


# ---- drop_params: the setting reaches the adapters (providers/native.py honours it) -------------

_DROP_CONFIG = """
model_list:
  - model_name: inherits
    litellm_params: {model: openai/a}
  - model_name: own
    litellm_params: {model: openai/b, drop_params: false}
  - model_name: typed
    litellm_params: {model: openai/c, temperature: 0.1, stop: END, additional_drop_params: [top_k]}
litellm_settings:
  drop_params: true
"""


def test_drop_params_reaches_every_deployment_unless_it_sets_its_own() -> None:
    deps = {d.model_name: d for d in deployments_from_entries(parse_config(_DROP_CONFIG).model_list)}
    calls = {name: d.provider_call({}).params for name, d in deps.items()}
    assert (calls["inherits"]["drop_params"], calls["own"]["drop_params"]) == (True, False)
    shaper = deps["typed"].shaper
    assert shaper is not None and shaper.defaults["chat"] == {"temperature": 0.1, "stop": "END"}
    assert deps["inherits"].shaper is None  # nothing to add or remove: requests are not copied


def test_without_litellm_settings_drop_params_is_unset() -> None:
    config = parse_config("model_list: [{model_name: m, litellm_params: {model: openai/m}}]")
    (dep,) = deployments_from_entries(config.model_list)
    assert "drop_params" not in dep.provider_call({}).params


def test_a_bad_default_fails_at_start_naming_the_field() -> None:
    with pytest.raises(Exception, match=r"model_list\[0\]\.litellm_params\.temperature"):
        parse_config("model_list: [{model_name: m, litellm_params: {model: openai/m, temperature: hot}}]")
