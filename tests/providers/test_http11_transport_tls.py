"""The gateway's HTTP/1.1 transport over TLS (hosted providers are HTTPS), against a real server."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from providers.contract import ProviderCall
from providers.errors import ProviderUnreachableError
from providers.http import build_client
from providers.http11_transport import HTTP11Transport
from providers.openai_compat import OpenAICompatProvider
from tests.support.fake_openai import Behavior, FakeOpenAI

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1."""
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


@pytest.fixture(scope="module")
def tls_fake(cert: tuple[Path, Path]) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(ssl_certfile=str(cert[0]), ssl_keyfile=str(cert[1])) as server:
        yield server


async def test_chat_and_stream_over_tls(tls_fake: FakeOpenAI, cert: tuple[Path, Path]) -> None:
    assert tls_fake.base_url.startswith("https://")
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    client = build_client(HTTP11Transport(ssl_context=ctx))
    provider = OpenAICompatProvider(client)
    try:
        call = ProviderCall("m", {"messages": MESSAGES}, api_base=tls_fake.base_url)
        for _ in range(2):  # the second call reuses the pooled TLS connection
            resp = await provider.chat(call)
            assert orjson.loads(resp.body)["choices"][0]["message"]["content"] == Behavior().text()
        events = [e async for e in provider.chat_stream(call)]
        assert len(events) == 1 + 3 + 1 + 1  # role, 3 deltas, finish, usage
    finally:
        await client.aclose()


async def test_untrusted_certificate_is_refused(tls_fake: FakeOpenAI) -> None:
    client = build_client(HTTP11Transport())  # default trust store: the self-signed cert is unknown
    try:
        with pytest.raises(ProviderUnreachableError):
            await OpenAICompatProvider(client).chat(
                ProviderCall("m", {"messages": MESSAGES}, api_base=tls_fake.base_url)
            )
    finally:
        await client.aclose()
