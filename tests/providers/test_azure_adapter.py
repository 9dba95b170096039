"""The Azure OpenAI and Azure AI model inference adapters against a fake Azure service on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest

from providers.azure import AzureOpenAIProvider
from providers.azure.adapter import DEFAULT_API_VERSION
from providers.azure_ai import AzureAIProvider
from providers.contract import ProviderCall
from providers.errors import ContentPolicyError, ContextWindowExceededError, ProviderError
from providers.http import build_client
from providers.http11_transport import HTTP11Transport
from providers.schema import GenerationRequest, Message, StreamStart, TextDelta, TextPart, UsageReport
from providers.usage_tap import UsageTap
from tests.support.fake_azure import (
    AD_TOKEN,
    API_KEY,
    FakeAzure,
    content_filter_error,
    context_window_error,
    rate_limited,
)
from tests.support.fake_openai import Behavior

pytestmark = pytest.mark.asyncio(loop_scope="session")

BODY = {"model": "public-name", "messages": [{"role": "user", "content": "hi"}], "seed": 42}


@pytest.fixture(scope="module")
def azure_server() -> Iterator[FakeAzure]:
    with FakeAzure(deployments={"gpt4o-prod", "embed-prod"}, ai_models={"mistral-large"}) as server:
        yield server


@pytest.fixture
def fake(azure_server: FakeAzure, monkeypatch: pytest.MonkeyPatch) -> FakeAzure:
    for name in ("AZURE_API_KEY", "AZURE_AD_TOKEN", "AZURE_API_BASE", "AZURE_API_VERSION"):
        monkeypatch.delenv(name, raising=False)
    azure_server.reset()
    return azure_server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    c = build_client(HTTP11Transport())
    yield c
    await c.aclose()


def az_call(fake: FakeAzure, body: dict | None = None, **kw: object) -> ProviderCall:
    args: dict = {
        "upstream_model": "gpt4o-prod",
        "body": BODY if body is None else body,
        "api_base": fake.endpoint,
        "api_key": API_KEY,
    }
    args.update(kw)
    return ProviderCall(**args)


def ai_call(fake: FakeAzure, body: dict | None = None, **kw: object) -> ProviderCall:
    args: dict = {"upstream_model": "mistral-large", "body": body or BODY, "api_base": fake.ai_endpoint}
    args.update({"api_key": API_KEY, **kw})
    return ProviderCall(**args)


# ---- Azure OpenAI


async def test_chat_goes_to_the_deployment_url_and_passes_the_bytes_through(
    fake: FakeAzure, client: httpx.AsyncClient
) -> None:
    resp = await AzureOpenAIProvider(client).chat(az_call(fake))
    answer = orjson.loads(resp.body)
    # Azure's own fields reach the caller untouched: the body was not rewritten on the way back.
    assert answer["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
    assert answer["choices"][0]["content_filter_results"]["violence"]["severity"] == "safe"
    assert resp.usage is not None and (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (7, 3)
    sent = fake.requests[-1]
    assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert sent.headers["api-key"] == API_KEY and "authorization" not in sent.headers
    assert sent.body == {**BODY, "model": "gpt4o-prod"}
    assert BODY["model"] == "public-name"


async def test_api_version_is_the_default_or_the_configured_one(
    fake: FakeAzure, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = AzureOpenAIProvider(client)
    seen: list[str] = []

    async def version_of(call: ProviderCall) -> str:
        url = provider._url(call)
        await provider.chat(call)
        seen.append(url.params["api-version"])
        return seen[-1]

    assert await version_of(az_call(fake)) == DEFAULT_API_VERSION == "2024-10-21"
    assert (
        await version_of(az_call(fake, params={"api_version": "2024-08-01-preview"})) == "2024-08-01-preview"
    )
    monkeypatch.setenv("AZURE_API_VERSION", "2025-01-01-preview")
    assert await version_of(az_call(fake)) == "2025-01-01-preview"
    # A base written with LiteLLM's trailing /openai/ reaches the same deployment.
    await provider.chat(az_call(fake, api_base=fake.endpoint + "/openai/"))
    assert fake.requests[-1].path == "/openai/deployments/gpt4o-prod/chat/completions"


async def test_a_malformed_api_version_is_refused_by_azure_and_mapped(
    fake: FakeAzure, client: httpx.AsyncClient
) -> None:
    with pytest.raises(ProviderError) as exc:
        await AzureOpenAIProvider(client).chat(az_call(fake, params={"api_version": "latest"}))
    assert exc.value.status_code == 400 and "API version not supported" in exc.value.message


async def test_entra_id_token_from_params_or_environment(
    fake: FakeAzure, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = AzureOpenAIProvider(client)
    await provider.chat(az_call(fake, api_key=None, params={"azure_ad_token": AD_TOKEN}))
    sent = fake.requests[-1].headers
    assert sent["authorization"] == f"Bearer {AD_TOKEN}" and "api-key" not in sent
    monkeypatch.setenv("AZURE_AD_TOKEN", AD_TOKEN)
    await provider.chat(az_call(fake, api_key=None))
    assert fake.requests[-1].headers["authorization"] == f"Bearer {AD_TOKEN}"
    # A key wins over a token (LiteLLM's order).
    await provider.chat(az_call(fake))
    assert fake.requests[-1].headers["api-key"] == API_KEY
    assert "authorization" not in fake.requests[-1].headers


async def test_api_key_and_base_from_the_environment(
    fake: FakeAzure, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_API_KEY", API_KEY)
    monkeypatch.setenv("AZURE_API_BASE", fake.endpoint)
    resp = await AzureOpenAIProvider(client).chat(az_call(fake, api_key=None, api_base=None))
    assert resp.status == 200 and fake.requests[-1].headers["api-key"] == API_KEY


async def test_no_api_base_is_a_clear_configuration_error(client: httpx.AsyncClient, fake: FakeAzure) -> None:
    with pytest.raises(ProviderError) as exc:
        await AzureOpenAIProvider(client).chat(az_call(fake, api_base=None))
    assert exc.value.code == "api_base_missing" and "AZURE_API_BASE" in exc.value.message


async def test_stream_passes_azure_chunks_through_with_usage(
    fake: FakeAzure, client: httpx.AsyncClient
) -> None:
    fake.set_behavior(Behavior(chunks=4))
    events = [e async for e in AzureOpenAIProvider(client).chat_stream(az_call(fake))]
    # Azure opens with a chunk that has no choices and carries the prompt's filter results.
    assert orjson.loads(events[0][6:])["prompt_filter_results"][0]["prompt_index"] == 0
    tap = UsageTap()
    assert [tap.inspect(e) for e in events][-1] is True
    assert tap.usage is not None and (tap.usage.prompt_tokens, tap.usage.completion_tokens) == (7, 4)
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("behavior", "status", "klass"),
    [
        (content_filter_error(), 400, ContentPolicyError),
        (context_window_error(), 400, ContextWindowExceededError),
        (rate_limited(7), 429, ProviderError),
        (Behavior(status=500, error_message="The server had an error"), 500, ProviderError),
    ],
)
async def test_errors_are_mapped(
    fake: FakeAzure, client: httpx.AsyncClient, behavior: Behavior, status: int, klass: type
) -> None:
    provider = AzureOpenAIProvider(client)
    for attempt in ("plain", "stream"):
        fake.enqueue(behavior)
        with pytest.raises(klass) as exc:
            if attempt == "plain":
                await provider.chat(az_call(fake))
            else:
                await anext(aiter(provider.chat_stream(az_call(fake))))
        err = exc.value
        assert err.status_code == status and err.retryable == (status >= 429)
        if klass is ContentPolicyError:
            assert err.content_policy_violation and err.code == "content_filter"
            assert "content management policy" in err.message
        if status == 429:
            assert err.retry_after == 7.0 and "retry after 7 seconds" in err.message


async def test_content_filter_marked_only_in_innererror_is_a_policy_error(
    fake: FakeAzure, client: httpx.AsyncClient
) -> None:
    body = {
        "error": {
            "code": "BadRequest",
            "message": "Your request was rejected.",
            "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {}},
        }
    }
    fake.enqueue(Behavior(status=400, raw_body=orjson.dumps(body)))
    with pytest.raises(ContentPolicyError) as exc:
        await AzureOpenAIProvider(client).chat(az_call(fake))
    assert exc.value.content_policy_violation and exc.value.code == "BadRequest"


async def test_a_filtered_answer_keeps_finish_reason_content_filter(
    fake: FakeAzure, client: httpx.AsyncClient
) -> None:
    answer = {
        "id": "chatcmpl-f",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "content_filter"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5},
    }
    provider = AzureOpenAIProvider(client)
    fake.enqueue(Behavior(raw_body=orjson.dumps(answer)), Behavior(raw_body=orjson.dumps(answer)))
    raw = await provider.chat(az_call(fake))
    assert orjson.loads(raw.body)["choices"][0]["finish_reason"] == "content_filter"
    request = GenerationRequest(model="x", messages=[Message("user", [TextPart("hi")])])
    typed = await provider.generate(request, az_call(fake, body={}))
    assert typed.finish_reason == "content_filter"


@pytest.mark.parametrize(
    ("call_kw", "status", "text"),
    [
        ({"api_key": "wrong-key-0000000"}, 401, "Access denied"),
        ({"upstream_model": "no-such-deployment"}, 404, "deployment for this resource does not exist"),
        ({"body": {**BODY, "logit_bias_typo": 1}}, 400, "Unrecognized request argument supplied"),
    ],
)
async def test_azure_refusals_keep_status_and_message(
    fake: FakeAzure, client: httpx.AsyncClient, call_kw: dict, status: int, text: str
) -> None:
    with pytest.raises(ProviderError) as exc:
        await AzureOpenAIProvider(client).chat(az_call(fake, **call_kw))
    assert exc.value.status_code == status and text in exc.value.message


async def test_secrets_from_the_environment_are_scrubbed_from_errors(
    fake: FakeAzure, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_API_KEY", API_KEY)
    echo = {"error": {"code": "500", "message": f"internal error for key {API_KEY}"}}
    fake.enqueue(Behavior(status=500, raw_body=orjson.dumps(echo)))
    with pytest.raises(ProviderError) as exc:
        await AzureOpenAIProvider(client).chat(az_call(fake, api_key=None))
    assert API_KEY not in exc.value.message and "redacted" in exc.value.message


async def test_embeddings_and_completions_use_the_deployment_paths(
    fake: FakeAzure, client: httpx.AsyncClient
) -> None:
    provider = AzureOpenAIProvider(client)
    emb = await provider.embeddings(
        az_call(fake, {"model": "x", "input": ["a b", "c"]}, upstream_model="embed-prod")
    )
    assert len(orjson.loads(emb.body)["data"]) == 2 and emb.usage is not None and emb.usage.prompt_tokens == 3
    assert fake.requests[-1].path == "/openai/deployments/embed-prod/embeddings"
    done = await provider.completions(az_call(fake, {"model": "x", "prompt": "say"}))
    assert orjson.loads(done.body)["object"] == "text_completion"
    assert fake.requests[-1].path == "/openai/deployments/gpt4o-prod/completions"


# ---- Azure AI model inference


async def test_ai_chat_sends_the_model_in_the_body_at_the_inference_url(
    fake: FakeAzure, client: httpx.AsyncClient
) -> None:
    resp = await AzureAIProvider(client).chat(ai_call(fake, {**BODY, "seed": None}))
    assert orjson.loads(resp.body)["choices"][0]["message"]["content"] == Behavior().text()
    sent = fake.requests[-1]
    assert sent.path == "/models/chat/completions" and sent.body["model"] == "mistral-large"
    assert sent.headers["api-key"] == API_KEY
    assert AzureAIProvider(client)._url(ai_call(fake)).params["api-version"] == "2024-05-01-preview"


async def test_ai_stream_reports_usage_without_stream_options(
    fake: FakeAzure, client: httpx.AsyncClient
) -> None:
    fake.set_behavior(Behavior(chunks=5))
    body = {**BODY, "stream_options": {"include_usage": True}}
    events = [e async for e in AzureAIProvider(client).chat_stream(ai_call(fake, body))]
    assert "stream_options" not in fake.requests[-1].body
    tap = UsageTap()
    for event in events:
        tap.inspect(event)
    assert tap.usage is not None and (tap.usage.prompt_tokens, tap.usage.completion_tokens) == (7, 5)


async def test_ai_extra_parameters_are_refused_or_dropped_with_drop_params(
    fake: FakeAzure, client: httpx.AsyncClient
) -> None:
    body = {**BODY, "logit_bias": {"1": 2}}
    with pytest.raises(ProviderError) as exc:
        await AzureAIProvider(client).chat(ai_call(fake, body))
    assert exc.value.status_code == 400 and "Extra parameters ['logit_bias']" in exc.value.message
    resp = await AzureAIProvider(client).chat(ai_call(fake, body, params={"drop_params": True}))
    assert resp.status == 200 and fake.requests[-1].headers["extra-parameters"] == "drop"


async def test_ai_unknown_model_and_bad_key(fake: FakeAzure, client: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderError) as exc:
        await AzureAIProvider(client).chat(ai_call(fake, upstream_model="gpt-9"))
    assert exc.value.status_code == 400 and "Unknown model: gpt-9" in exc.value.message
    with pytest.raises(ProviderError) as exc:
        await AzureAIProvider(client).chat(ai_call(fake, api_key="bad-key-000000"))
    assert exc.value.status_code == 401


async def test_ai_embeddings(fake: FakeAzure, client: httpx.AsyncClient) -> None:
    resp = await AzureAIProvider(client).embeddings(ai_call(fake, {"model": "x", "input": "one two"}))
    assert orjson.loads(resp.body)["data"][0]["index"] == 0
    assert fake.requests[-1].path == "/models/embeddings"
    assert AzureAIProvider.capabilities == frozenset({"chat", "embeddings"})


async def test_typed_stream_is_named_after_the_answer_not_the_prompt_filter_chunk(
    fake: FakeAzure, client: httpx.AsyncClient
) -> None:
    request = GenerationRequest(model="x", messages=[Message("user", [TextPart("hi")])])
    provider = AzureOpenAIProvider(client)
    events = [e async for e in provider.generate_stream(request, az_call(fake, body={}))]
    start = events[0]
    assert isinstance(start, StreamStart) and start.id.startswith("chatcmpl-") and start.model == "gpt4o-prod"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == Behavior().text()
    assert isinstance(events[-1], UsageReport) and events[-1].usage.prompt_tokens == 7
