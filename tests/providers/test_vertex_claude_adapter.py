"""The Vertex AI adapter's Claude path against fake Vertex servers on loopback: what is sent (URL,
headers, body), Anthropic's parameters for Claude and Gemini's for Google's models, early close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from providers.contract import ProviderCall
from providers.errors import ProviderError
from providers.http import build_client
from providers.http11_transport import HTTP11Transport
from providers.vertex_ai import VertexAIProvider
from tests.support.fake_anthropic import Behavior
from tests.support.fake_gemini import FakeGemini
from tests.support.fake_vertex_claude import FakeVertexClaude

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "claude-sonnet-4@20250514"
THINK = {"type": "enabled", "budget_tokens": 2048}


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FakeGemini, FakeVertexClaude]]:
    with FakeGemini() as google, FakeVertexClaude(google, models={MODEL}) as vertex:
        yield google, vertex


@pytest.fixture
def fake(servers: tuple[FakeGemini, FakeVertexClaude]) -> FakeVertexClaude:
    servers[1].reset()
    return servers[1]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    c = build_client(HTTP11Transport())
    yield c
    await c.aclose()


def call(fake: FakeVertexClaude, body: dict, model: str = MODEL, **params: object) -> ProviderCall:
    credentials = fake.google.service_account(project="adapter-project")
    return ProviderCall(
        upstream_model=model,
        body=body,
        api_base=fake.base_url,
        params={"vertex_credentials": credentials, "vertex_location": "europe-west1", **params},
    )


async def test_thinking_and_betas_reach_claude_with_the_version_in_the_body(
    fake: FakeVertexClaude, client: httpx.AsyncClient
) -> None:
    fake.set_behavior(Behavior(thinking="Let me think.", text="42"))
    body = {
        "model": "x",
        "messages": [{"role": "user", "content": "?"}],
        "max_tokens": 4096,
        "thinking": THINK,
    }
    resp = await VertexAIProvider(client).chat(call(fake, body, anthropic_beta="context-1m-2025-08-07"))
    assert b'"42"' in resp.body
    sent = fake.requests[-1]
    assert sent.path == (
        f"/v1/projects/adapter-project/locations/europe-west1/publishers/anthropic/models/{MODEL}:rawPredict"
    )
    assert sent.body["thinking"] == THINK and sent.body["anthropic_version"] == "vertex-2023-10-16"
    assert sent.headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert "anthropic-version" not in sent.headers and "x-api-key" not in sent.headers


async def test_parameters_are_the_model_family_s(fake: FakeVertexClaude, client: httpx.AsyncClient) -> None:
    provider = VertexAIProvider(client)
    # seed: Anthropic has none, so a Claude deployment names it in a 400 (Gemini would take it).
    body = {"model": "x", "messages": [{"role": "user", "content": "?"}], "seed": 7}
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake, body))
    assert exc.value.status_code == 400 and exc.value.param == "seed"
    assert fake.requests == []
    # thinking: Claude's parameter, not Gemini's: a Gemini model on the same adapter refuses it.
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake, {**body, "seed": None, "thinking": THINK}, model="gemini-2.5-flash"))
    assert exc.value.status_code == 400 and exc.value.param == "thinking"


async def test_closing_a_stream_early_cancels_the_upstream_request(
    fake: FakeVertexClaude, client: httpx.AsyncClient
) -> None:
    fake.set_behavior(Behavior(text="x" * 400, fragment=1, chunk_delay_s=0.01))
    body = {"model": "x", "messages": [{"role": "user", "content": "?"}], "stream": True}
    stream = VertexAIProvider(client).chat_stream(call(fake, body))
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    assert await asyncio.to_thread(fake.wait_for_cancel, 10.0)
