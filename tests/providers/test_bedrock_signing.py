"""The Bedrock SigV4 signer is botocore's ``SigV4Auth``, byte for byte.

botocore signs the same request at the same instant (its ``add_auth`` with the clock fixed);
every header it produces, the Authorization header above all, must be what ``sign`` produced.
"""

from __future__ import annotations

import datetime

import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from providers.bedrock.credentials import Identity
from providers.bedrock.signing import sign

KEY = ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None)
TEMPORARY = ReadOnlyCredentials("ASIAEXAMPLE", "secret/with+chars", "session//token==")
AT = datetime.datetime(2026, 12, 4, 18, 30, 5, tzinfo=datetime.UTC)
JSON = {"content-type": "application/json", "accept": "application/json"}


@pytest.fixture
def pinned_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's add_auth reads the clock: pin it to the instant ``sign`` is given."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: AT.replace(tzinfo=None))


def botocore_headers(
    creds: ReadOnlyCredentials, region: str, url: str, body: bytes, headers: dict[str, str]
) -> dict[str, str]:
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(creds, "bedrock", region).add_auth(request)
    return {k.lower(): v for k, v in request.headers.items()}


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        (
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
            JSON,
        ),
        (
            "https://bedrock-runtime.us-east-1.amazonaws.com:443/model/amazon.nova-lite-v1%3A0/converse-stream",
            JSON,
        ),
        (
            "http://127.0.0.1:8123/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/invoke",
            JSON,
        ),
        ("https://vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com/prefix//model/m%3A0/converse", JSON),
        ("http://[::1]:9000/model/m/converse", JSON),
        (
            "https://bedrock-runtime.eu-west-1.amazonaws.com/model/m/converse",
            {**JSON, "x-custom": "  two   spaces  ", "user-agent": "never-signed", "anthropic-beta": "a,b"},
        ),
    ],
)
@pytest.mark.parametrize("creds", [KEY, TEMPORARY])
@pytest.mark.usefixtures("pinned_clock")
def test_signature_equals_botocore(url: str, headers: dict[str, str], creds: ReadOnlyCredentials) -> None:
    body = b'{"messages":[{"role":"user","content":[{"text":"h\xc3\xa9"}]}]}'
    region = "eu-west-1" if "eu-west-1" in url else "us-east-1"
    ours = {k.lower(): v for k, v in sign(Identity(creds), region, url, body, dict(headers), now=AT).items()}
    assert ours == botocore_headers(creds, region, url, body, dict(headers))
    assert ours["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={creds.access_key}/20261204/{region}/"
    )


def test_empty_body_and_a_new_day_use_a_new_key() -> None:
    url = "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse"
    first = sign(Identity(KEY), "us-east-1", url, b"", dict(JSON), now=AT)
    assert first["authorization"].split("Signature=")[1] != ""
    later = AT + datetime.timedelta(days=1)
    second = sign(Identity(KEY), "us-east-1", url, b"", dict(JSON), now=later)
    assert "/20261205/" in second["authorization"]


def test_bearer_identity_is_not_signed() -> None:
    out = sign(Identity(bearer="ABSK-key"), "us-east-1", "https://h/model/m/converse", b"{}", dict(JSON))
    assert out == {**JSON, "authorization": "Bearer ABSK-key"}
