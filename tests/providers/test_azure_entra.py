"""Azure credentials from Microsoft Entra ID (a service principal, or a user's password) against a
fake token endpoint and a fake Azure service that accepts only the tokens it issued, unexpired."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest

from providers.azure import AzureOpenAIProvider
from providers.azure.entra import DEFAULT_SCOPE
from providers.azure_ai import AzureAIProvider
from providers.contract import ProviderCall
from providers.errors import ProviderError
from providers.http import build_client
from providers.http11_transport import HTTP11Transport
from tests.support.fake_azure import API_KEY, FakeAzure
from tests.support.fake_entra import CLIENT_ID, CLIENT_SECRET, PASSWORD, TENANT, USERNAME, FakeEntra

pytestmark = pytest.mark.asyncio(loop_scope="session")

BODY = {"model": "public-name", "messages": [{"role": "user", "content": "hi"}]}
SP = {"tenant_id": TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
ENV = ("AZURE_API_KEY", "AZURE_AD_TOKEN", "AZURE_AI_API_KEY", "AZURE_TENANT_ID", "AZURE_CLIENT_ID")


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FakeEntra, FakeAzure]]:
    with FakeEntra() as entra, FakeAzure(ai_models={"mistral-large"}, entra=entra) as azure:
        yield entra, azure


@pytest.fixture
def entra(servers: tuple[FakeEntra, FakeAzure], monkeypatch: pytest.MonkeyPatch) -> FakeEntra:
    for name in (*ENV, "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", servers[0].authority)
    servers[0].reset()
    servers[1].reset()
    return servers[0]


@pytest.fixture
def azure(servers: tuple[FakeEntra, FakeAzure], entra: FakeEntra) -> FakeAzure:
    return servers[1]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    c = build_client(HTTP11Transport())
    yield c
    await c.aclose()


def az_call(azure: FakeAzure, **params: object) -> ProviderCall:
    return ProviderCall(upstream_model="gpt4o-prod", body=BODY, api_base=azure.endpoint, params=params)


def bearer_of(azure: FakeAzure) -> str:
    return azure.requests[-1].headers["authorization"].removeprefix("Bearer ")


async def test_service_principal_token_is_fetched_once_and_sent_as_bearer(
    entra: FakeEntra, azure: FakeAzure, client: httpx.AsyncClient
) -> None:
    provider = AzureOpenAIProvider(client)
    for _ in range(3):
        resp = await provider.chat(az_call(azure, **SP))
        assert orjson.loads(resp.body)["choices"][0]["message"]["content"]
    # The documented client-credentials form, once: the token is cached for the next calls.
    assert entra.token_requests == [
        {
            "client_id": CLIENT_ID,
            "scope": DEFAULT_SCOPE,
            "grant_type": "client_credentials",
            "client_secret": CLIENT_SECRET,
        }
    ]
    assert entra.accepts(bearer_of(azure))
    assert "api-key" not in azure.requests[-1].headers


async def test_concurrent_first_calls_share_one_token_request(
    entra: FakeEntra, azure: FakeAzure, client: httpx.AsyncClient
) -> None:
    entra.delay = 0.2
    provider = AzureOpenAIProvider(client)
    await asyncio.gather(*(provider.chat(az_call(azure, **SP)) for _ in range(20)))
    assert len(entra.token_requests) == 1
    assert len({r.headers["authorization"] for r in azure.requests}) == 1


async def test_token_is_refreshed_before_it_expires(
    entra: FakeEntra, azure: FakeAzure, client: httpx.AsyncClient
) -> None:
    # A 2 s token is refreshed after half its life; the fake Azure refuses an expired one.
    entra.reset(expires_in=2)
    provider = AzureOpenAIProvider(client)
    await provider.chat(az_call(azure, **SP))
    first = bearer_of(azure)
    await asyncio.sleep(1.2)
    await provider.chat(az_call(azure, **SP))
    assert len(entra.token_requests) == 2 and bearer_of(azure) != first
    await asyncio.sleep(1.0)  # the first token has now expired: never sent again
    await provider.chat(az_call(azure, **SP))
    assert not entra.accepts(first) and entra.accepts(bearer_of(azure))


async def test_failed_refresh_keeps_the_valid_token_and_no_token_is_a_retryable_error(
    entra: FakeEntra, azure: FakeAzure, client: httpx.AsyncClient
) -> None:
    provider = AzureOpenAIProvider(client)
    entra.fail_with.append(503)
    with pytest.raises(ProviderError) as exc:
        await provider.chat(az_call(azure, **SP))
    assert exc.value.status_code == 503 and exc.value.retryable
    assert "AADSTS50196" in exc.value.message

    entra.reset(expires_in=2)
    await provider.chat(az_call(azure, **SP))
    first = bearer_of(azure)
    await asyncio.sleep(1.1)  # in the refresh window, still valid
    entra.fail_with.append(503)
    await provider.chat(az_call(azure, **SP))
    assert bearer_of(azure) == first and len(entra.token_requests) == 2
    # Not asked again at once: the failed refresh is retried later, not on every call.
    await provider.chat(az_call(azure, **SP))
    assert len(entra.token_requests) == 2


async def test_wrong_secret_is_an_authentication_error_without_the_secret(
    entra: FakeEntra, azure: FakeAzure, client: httpx.AsyncClient
) -> None:
    wrong = "not-the-secret-value-987654"
    with pytest.raises(ProviderError) as exc:
        await AzureOpenAIProvider(client).chat(az_call(azure, **{**SP, "client_secret": wrong}))
    err = exc.value
    assert err.status_code == 401 and err.type == "authentication_error" and not err.retryable
    assert err.code == "invalid_client" and "AADSTS7000215" in err.message
    assert wrong not in err.message and wrong not in repr(err)
    assert azure.requests == []  # nothing went to Azure without a token

    with pytest.raises(ProviderError) as exc:
        await AzureOpenAIProvider(client).chat(az_call(azure, **{**SP, "tenant_id": "other-tenant"}))
    assert exc.value.status_code == 401 and "AADSTS90002" in exc.value.message


async def test_service_principal_from_the_environment_streams(
    entra: FakeEntra, azure: FakeAzure, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", CLIENT_SECRET)
    provider = AzureOpenAIProvider(client)
    events = [e async for e in provider.chat_stream(az_call(azure))]
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for e in events
        if (c := orjson.loads(e.removeprefix(b"data: "))) and c.get("choices")
    )
    assert text and entra.accepts(bearer_of(azure)) and len(entra.token_requests) == 1


async def test_a_key_or_a_configured_token_wins_over_the_service_principal(
    entra: FakeEntra, azure: FakeAzure, client: httpx.AsyncClient
) -> None:
    provider = AzureOpenAIProvider(client)
    await provider.chat(ProviderCall("gpt4o-prod", BODY, azure.endpoint, API_KEY, params=SP))
    assert azure.requests[-1].headers["api-key"] == API_KEY
    await provider.chat(az_call(azure, **SP, azure_ad_token=azure.ad_token))
    assert bearer_of(azure) == azure.ad_token
    assert entra.token_requests == []


async def test_username_and_password_use_the_password_grant(
    entra: FakeEntra, azure: FakeAzure, client: httpx.AsyncClient
) -> None:
    params = {"client_id": CLIENT_ID, "azure_username": USERNAME, "azure_password": PASSWORD}
    await AzureOpenAIProvider(client).chat(az_call(azure, **params))
    assert entra.accepts(bearer_of(azure))
    sent = entra.token_requests[-1]
    assert sent["grant_type"] == "password" and sent["username"] == USERNAME and "client_secret" not in sent

    with pytest.raises(ProviderError) as exc:
        await AzureOpenAIProvider(client).chat(az_call(azure, **{**params, "azure_password": "wrong-pw-123"}))
    assert exc.value.status_code == 401 and "AADSTS50126" in exc.value.message
    assert "wrong-pw-123" not in exc.value.message


async def test_azure_ai_inference_takes_the_service_principal_and_its_scope(
    entra: FakeEntra, azure: FakeAzure, client: httpx.AsyncClient
) -> None:
    call = ProviderCall("mistral-large", BODY, azure.ai_endpoint, params={**SP, "azure_scope": "api://x"})
    # The scope is the deployment's; Entra refuses one without /.default, and says so.
    with pytest.raises(ProviderError) as exc:
        await AzureAIProvider(client).chat(call)
    assert exc.value.status_code == 401 and "AADSTS1002012" in exc.value.message
    await AzureAIProvider(client).chat(
        ProviderCall("mistral-large", BODY, azure.ai_endpoint, params={**SP, "azure_scope": DEFAULT_SCOPE})
    )
    assert entra.accepts(bearer_of(azure)) and entra.token_requests[-1]["scope"] == DEFAULT_SCOPE


async def test_authority_host_must_be_https_except_on_loopback(
    entra: FakeEntra, azure: FakeAzure, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", "http://login.example.com")
    with pytest.raises(ProviderError) as exc:
        await AzureOpenAIProvider(client).chat(az_call(azure, **SP))
    assert exc.value.code == "invalid_authority_host" and CLIENT_SECRET not in exc.value.message
    assert entra.token_requests == []
