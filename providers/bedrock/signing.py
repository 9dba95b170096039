"""AWS Signature Version 4 for one Bedrock request.

Reference: https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html
(service name ``bedrock`` for bedrock-runtime).

This is botocore's ``SigV4Auth`` algorithm, step for step (the canonical path double-encoded
and dot-segment-normalised with botocore's own helper, header values trimmed, botocore's list
of headers never signed, the host without a default port), written for one request shape: a
POST with a JSON body and no query. botocore's version costs ~150 us a request in header-object
overhead; this one ~20 us, and it caches the derived signing key per day. It is checked
byte-for-byte against botocore's ``SigV4Auth`` (tests/providers/test_bedrock_signing.py), and
the fake bedrock-runtime verifies every test request's signature with botocore.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from urllib.parse import quote, urlsplit

from botocore.auth import SIGNED_HEADERS_BLACKLIST
from botocore.utils import normalize_url_path

from providers.bedrock.credentials import Identity

SERVICE = "bedrock"  # bedrock-runtime's signing name
_ALGORITHM = "AWS4-HMAC-SHA256"
_UNSIGNED = frozenset(SIGNED_HEADERS_BLACKLIST)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# (secret, yyyymmdd, region, service) -> the day's signing key; a handful of deployments at most.
_KEYS: dict[tuple[str, str, str, str], bytes] = {}
_MAX_KEYS = 64


def sign(
    identity: Identity,
    region: str,
    url: str,
    body: bytes,
    headers: dict[str, str],
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """``headers`` plus the authentication for a POST of ``body`` to ``url`` (signed at ``now``).

    ``url`` must be exactly what goes on the wire (the model id already percent-encoded): the
    signature covers the path as sent.
    """
    if identity.bearer is not None:
        return {**headers, "authorization": f"Bearer {identity.bearer}"}
    creds = identity.credentials
    if creds is None:
        raise ValueError("an Identity signs with credentials or a bearer token")
    stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
    out = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "x-amz-date")}
    out["x-amz-date"] = stamp
    if creds.token:
        out["x-amz-security-token"] = creds.token
    parts = urlsplit(url)
    signed: dict[str, list[str]] = {}
    for name, value in out.items():
        lname = name.lower()
        if lname not in _UNSIGNED:
            signed.setdefault(lname, []).append(" ".join(value.split()))
    if "host" not in signed:
        signed["host"] = [_host(parts.scheme, parts.hostname or "", parts.port)]
    names = sorted(signed)
    signed_names = ";".join(names)
    canonical = "\n".join(
        (
            "POST",
            quote(normalize_url_path(parts.path), safe="/~"),
            "",  # no query string
            "\n".join(f"{n}:{','.join(signed[n])}" for n in names) + "\n",
            signed_names,
            hashlib.sha256(body).hexdigest(),
        )
    )
    day = stamp[:8]
    scope = f"{day}/{region}/{SERVICE}/aws4_request"
    to_sign = f"{_ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(
        _signing_key(creds.secret_key, day, region), to_sign.encode(), hashlib.sha256
    ).hexdigest()
    out["authorization"] = (
        f"{_ALGORITHM} Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={signed_names}, Signature={signature}"
    )
    return out


def _host(scheme: str, hostname: str, port: int | None) -> str:
    host = f"[{hostname}]" if ":" in hostname else hostname  # an IPv6 literal keeps its brackets
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return host


def _signing_key(secret: str, day: str, region: str) -> bytes:
    cache_key = (secret, day, region, SERVICE)
    key = _KEYS.get(cache_key)
    if key is None:
        key = f"AWS4{secret}".encode()
        for part in (day, region, SERVICE, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        if len(_KEYS) >= _MAX_KEYS:
            _KEYS.clear()  # keys of past days and rotated secrets: cheap to derive again
        _KEYS[cache_key] = key
    return key
