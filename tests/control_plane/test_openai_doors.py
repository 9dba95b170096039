"""/v1/embeddings, /v1/completions and /v1/models/{id} with the official openai SDK, end to end.

A real gateway process (virtual keys in Postgres, in-process limits and cache) in front of the
fake OpenAI upstream. Each door goes through the one pipeline: a key over budget is refused,
limits count, spend rows match what the client received (with the operation recorded), and cache
hits are free.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.fake_openai import EMBEDDING_DIMENSIONS, FakeOpenAI, fake_embedding
from tests.support.gateway_app import DEFAULT_MODELS, MASTER_KEY, gateway_config, keyed_gateway, new_key
from tests.support.gateway_process import GatewayProcess
from tests.support.spend_rows import spend_rows

MODEL = "gpt-4o-mini"
# Model names as LiteLLM configs write them: a provider prefix, and a wildcard-style name.
SLASHED = ("openai/gpt-4o", "anthropic/claude-3", "openai/*")


@pytest.fixture(scope="module")
def doors_gateway(fake_upstream: FakeOpenAI, database_url: str) -> Iterator[GatewayProcess]:
    config = gateway_config(fake_upstream.base_url, models=DEFAULT_MODELS + SLASHED, cache=True)
    with keyed_gateway(config, database_url) as gw:
        yield gw


def _client(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0)


def test_embeddings_float_base64_and_dimensions(doors_gateway: GatewayProcess) -> None:
    client = _client(doors_gateway, MASTER_KEY)
    plain = client.embeddings.create(model=MODEL, input=["one two", "three"], encoding_format="float")
    assert [d.embedding for d in plain.data] == [
        fake_embedding("one two", EMBEDDING_DIMENSIONS),
        fake_embedding("three", EMBEDDING_DIMENSIONS),
    ]
    assert plain.usage.prompt_tokens == 3
    # The SDK asks for base64 by default and decodes it: the float32 values arrive exactly.
    b64 = client.embeddings.create(model=MODEL, input="hello base64 world")
    assert b64.data[0].embedding == fake_embedding("hello base64 world", EMBEDDING_DIMENSIONS)
    tokens = client.embeddings.create(model=MODEL, input=[[1, 2, 3]], dimensions=4, encoding_format="float")
    assert tokens.data[0].embedding == fake_embedding([1, 2, 3], 4)
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL, input="", encoding_format="float")
    assert exc.value.body["param"] == "input"  # type: ignore[index]


def test_completions_plain_and_stream(doors_gateway: GatewayProcess, fake_upstream: FakeOpenAI) -> None:
    client = _client(doors_gateway, MASTER_KEY)
    done = client.completions.create(model=MODEL, prompt="Say hi", max_tokens=5)
    assert done.object == "text_completion" and done.choices[0].text == "chunk0 chunk1 chunk2 "
    assert done.usage is not None and done.usage.completion_tokens == 3
    chunks = list(client.completions.create(model=MODEL, prompt="Say hi", max_tokens=5, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "chunk0 chunk1 chunk2 "
    assert all(c.usage is None for c in chunks)  # not asked for: the usage chunk is stripped
    # ...but it was asked of the upstream, so accounting never loses tokens.
    assert fake_upstream.requests[-1].body["stream_options"] == {"include_usage": True}
    with_usage = list(
        client.completions.create(
            model=MODEL, prompt="Say hi", stream=True, stream_options={"include_usage": True}
        )
    )
    assert with_usage[-1].usage is not None and with_usage[-1].usage.prompt_tokens == 7


def test_metrics_count_each_door_as_its_operation(doors_gateway: GatewayProcess) -> None:
    client = _client(doors_gateway, MASTER_KEY)
    client.embeddings.create(model=MODEL, input="count me", encoding_format="float")
    client.completions.create(model=MODEL, prompt="count me", max_tokens=5)
    page = httpx.get(doors_gateway.base_url + "/metrics", timeout=30).text
    for operation in ("embeddings", "completions"):
        labels = f'error_type="none",model="{MODEL}",operation="{operation}",status="200"'
        assert f"switchyard_requests_total{{{labels}}}" in page
        assert f'switchyard_request_duration_seconds_count{{model="{MODEL}",operation="{operation}"}}' in page


def test_models_retrieve(doors_gateway: GatewayProcess) -> None:
    client = _client(doors_gateway, MASTER_KEY)
    model = client.models.retrieve(MODEL)
    assert (model.id, model.object) == (MODEL, "model")
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("no-such-model")
    assert exc.value.body["code"] == "model_not_found"  # type: ignore[index]
    key = new_key(doors_gateway, models=["gpt-4o"])["key"]
    with pytest.raises(openai.NotFoundError):
        _client(doors_gateway, key).models.retrieve(MODEL)  # exists, but not for this key
    assert _client(doors_gateway, key).models.retrieve("gpt-4o").id == "gpt-4o"


def test_models_retrieve_ids_with_slashes(doors_gateway: GatewayProcess) -> None:
    client = _client(doors_gateway, MASTER_KEY)
    for name in SLASHED:  # the SDK sends "/" in an id as %2F
        model = client.models.retrieve(name)
        assert (model.id, model.object, model.owned_by) == (name, "model", "switchyard")
    # A URL written by hand, with the "/" as it is, names the same model.
    auth = {"Authorization": f"Bearer {MASTER_KEY}"}
    plain = httpx.get(doors_gateway.base_url + "/v1/models/anthropic/claude-3", headers=auth, timeout=30)
    assert plain.status_code == 200 and plain.json()["id"] == "anthropic/claude-3"
    missing = httpx.get(doors_gateway.base_url + "/v1/models/openai/no-such/model", headers=auth, timeout=30)
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "The model 'openai/no-such/model' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("openai/gpt-4o/extra")
    assert exc.value.body["code"] == "model_not_found"  # type: ignore[index]

    # A key sees only the models it may use, in the list and one by one.
    scoped = _client(doors_gateway, new_key(doors_gateway, models=["openai/gpt-4o"])["key"])
    assert [m.id for m in scoped.models.list()] == ["openai/gpt-4o"]
    assert scoped.models.retrieve("openai/gpt-4o").id == "openai/gpt-4o"
    for hidden in ("anthropic/claude-3", "openai/*", MODEL):
        with pytest.raises(openai.NotFoundError):
            scoped.models.retrieve(hidden)


def test_spend_rows_match_what_clients_received_and_cache_hits_are_free(
    doors_gateway: GatewayProcess, fake_upstream: FakeOpenAI, database_url: str
) -> None:
    created = new_key(doors_gateway)
    client = _client(doors_gateway, created["key"])
    text = f"cache me {time.monotonic_ns()}"
    first = client.embeddings.with_raw_response.create(model=MODEL, input=text, encoding_format="float")
    upstream_calls = len(fake_upstream.requests)
    again = client.embeddings.with_raw_response.create(model=MODEL, input=text, encoding_format="float")
    assert again.headers.get("x-switchyard-cache") == "hit"
    assert len(fake_upstream.requests) == upstream_calls  # answered without the upstream
    assert again.parse().data[0].embedding == first.parse().data[0].embedding
    completion = client.completions.create(model=MODEL, prompt="count me", max_tokens=3, temperature=0.5)
    rows = spend_rows(database_url, created["token"], 3)
    assert [r["operation"] for r in rows] == ["embeddings", "embeddings", "completions"]
    sent = first.parse().usage.prompt_tokens
    assert (rows[0]["prompt_tokens"], rows[0]["cache_hit"]) == (sent, False)
    assert float(rows[0]["spend"]) == pytest.approx(sent * 1e-6)
    assert (rows[1]["cache_hit"], float(rows[1]["spend"]), rows[1]["prompt_tokens"]) == (True, 0.0, 0)
    assert completion.usage is not None
    assert (rows[2]["prompt_tokens"], rows[2]["completion_tokens"]) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )


@pytest.mark.parametrize("door", ["embeddings", "completions"])
def test_limits_count_and_budgets_refuse_on_every_door(doors_gateway: GatewayProcess, door: str) -> None:
    def call(client: openai.OpenAI, i: int) -> None:
        if door == "embeddings":
            client.embeddings.create(
                model=MODEL, input=f"limit {i} {time.monotonic_ns()}", encoding_format="float"
            )
        else:
            client.completions.create(model=MODEL, prompt=f"limit {i}", max_tokens=3)

    limited = _client(doors_gateway, new_key(doors_gateway, rpm_limit=2)["key"])
    call(limited, 0)
    call(limited, 1)
    with pytest.raises(openai.RateLimitError):
        call(limited, 2)

    broke = _client(doors_gateway, new_key(doors_gateway, max_budget=0.000001)["key"])
    call(broke, 0)  # spends more than the budget
    deadline = time.monotonic() + 30
    with pytest.raises(openai.BadRequestError) as exc:
        while time.monotonic() < deadline:  # the spend is written in the background
            call(broke, 1)
            time.sleep(0.2)
    assert exc.value.body["code"] == "budget_exceeded"  # type: ignore[index]
