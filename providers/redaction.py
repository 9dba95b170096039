"""Keep configured secrets (provider keys, bearer tokens, URL passwords) out of every outgoing text.

An upstream can echo what it was sent: "Incorrect API key provided: sk-live-...", or the whole
``Authorization`` header in a debugging 500. The gateway holds every tenant's provider keys, so
text that came from an upstream (error messages, stream error events) and everything the gateway
writes (logs, health reports, spend rows) passes through a ``Scrubber`` first.

Two layers use it. Adapters own their secrets: they scrub an upstream's error with the secrets of
the call that provoked it (``call_scrubber``), whatever else is configured. The gateway registers
every configured secret once at start (``protect``) and scrubs what leaves the process with the
process-wide scrubber (``scrub``); ``install_log_redaction`` applies it to every log record.

A secret is replaced in its raw form and in the forms it takes on the wire: URL-encoded, and a
URL's ``user:password`` as HTTP Basic credentials (base64). Values shorter than
``MIN_SECRET_CHARS`` are not treated as secrets: redacting a 3-letter key would mangle ordinary
words everywhere, and a key that short protects nothing anyway.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

import orjson

__all__ = [
    "MIN_SECRET_CHARS",
    "Scrubber",
    "call_scrubber",
    "credential_values",
    "install_log_redaction",
    "protect",
    "scrub",
]

MIN_SECRET_CHARS = 6
REDACTED = "[redacted]"

# A params or header name that holds a credential: a segment (split on "_" and "-") such as
# "key", "token", "secret". Segments, not substrings: "max_tokens" is not a credential.
_CREDENTIAL_SEGMENTS = frozenset(
    {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials", "authorization"}
    | {"cookie", "signature"}
)
# A key's own prefix ("sk-", "gsk_", "xai-") says what kind of key it was without revealing it.
_KIND_PREFIX = re.compile(r"[A-Za-z]{1,4}[-_]")


def _is_credential_name(name: str) -> bool:
    return any(part in _CREDENTIAL_SEGMENTS for part in re.split(r"[-_.\s]+", name.lower()))


def _mask(secret: str) -> str:
    prefix = _KIND_PREFIX.match(secret)
    if prefix is not None and len(secret) >= 16:
        return f"{prefix.group(0)}...{REDACTED}"
    return REDACTED


def _url_credentials(value: str) -> list[str]:
    """The password and ``user:password`` of a URL with userinfo (``https://u:p@host``), if any."""
    if "@" not in value or "://" not in value:
        return []
    try:
        parts = urlsplit(value)
    except ValueError:
        return []
    if parts.password is None:
        return []
    user, password = unquote(parts.username or ""), unquote(parts.password)
    return [password, f"{user}:{password}"]


def _wire_forms(secret: str) -> set[str]:
    """The secret as it may appear in echoed text: raw, URL-encoded, Basic (for ``user:pass``)."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret)}
    user, sep, password = secret.partition(":")
    if sep and user and password:
        forms.add(base64.b64encode(secret.encode()).decode("ascii"))
    return {f for f in forms if len(f) >= MIN_SECRET_CHARS}


class Scrubber:
    """Replaces every form of a set of secrets in text; an empty scrubber returns text unchanged."""

    __slots__ = ("_masks", "_pattern")

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self._masks: dict[str, str] = {}
        for secret in secrets:
            if not secret or len(secret) < MIN_SECRET_CHARS:
                continue
            for form in _wire_forms(secret):
                self._masks.setdefault(form, _mask(secret))
        self._pattern = _compile(tuple(sorted(self._masks))) if self._masks else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        masks = self._masks
        return self._pattern.sub(lambda m: masks[m.group(0)], text)

    def union(self, other: Scrubber) -> Scrubber:
        merged = Scrubber(())
        merged._masks = {**other._masks, **self._masks}
        merged._pattern = _compile(tuple(sorted(merged._masks))) if merged._masks else None
        return merged


@functools.lru_cache(maxsize=256)
def _compile(forms: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first: a secret that contains another is replaced whole, not around the shorter one.
    ordered = sorted(forms, key=len, reverse=True)
    return re.compile("|".join(re.escape(f) for f in ordered))


def _leaves(value: Any, out: list[str]) -> None:
    """Every string inside ``value`` (a credential field may hold a dict or a JSON document)."""
    if isinstance(value, str):
        out.append(value)
        out.extend(_url_credentials(value))
        if value.startswith("{"):
            try:
                _leaves(orjson.loads(value), out)
            except orjson.JSONDecodeError:
                pass
    elif isinstance(value, Mapping):
        for item in value.values():
            _leaves(item, out)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _leaves(item, out)


def _header_values(headers: Any, out: list[str]) -> None:
    if not isinstance(headers, Mapping):
        return
    for name, value in headers.items():
        if isinstance(value, str) and _is_credential_name(str(name)):
            out.append(value)
            scheme, sep, credential = value.partition(" ")  # "Bearer <token>", "Basic <b64>"
            if sep and scheme.isalpha():
                out.append(credential.strip())


def credential_values(params: Mapping[str, Any]) -> list[str]:
    """The secrets in a deployment's params: credential-named fields, auth headers, URL passwords."""
    out: list[str] = []
    for name, value in params.items():
        if name == "extra_headers":
            _header_values(value, out)
        elif _is_credential_name(name):
            _leaves(value, out)
        elif isinstance(value, str):
            out.extend(_url_credentials(value))
    return out


def call_scrubber(
    api_key: str | None, params: Mapping[str, Any], extra_headers: Mapping[str, str] | None = None
) -> Scrubber:
    """A scrubber for one upstream call's own secrets (what that upstream was sent)."""
    values = [api_key or "", *credential_values(params)]
    _header_values(extra_headers, values)
    return Scrubber(values)


# The process-wide scrubber: every secret the gateway was configured with (``protect``).
_process = Scrubber(())


def protect(values: Iterable[str | None]) -> None:
    """Add ``values`` (keys, tokens, URLs whose password counts) to the process-wide scrubber."""
    global _process
    secrets: list[str] = []
    for value in values:
        if value and "://" in value:
            secrets.extend(_url_credentials(value))  # a URL is not secret, its password is
        elif value:
            secrets.append(value)
    _process = _process.union(Scrubber(secrets))


def scrub(text: str) -> str:
    """``text`` with every secret registered through ``protect`` replaced."""
    return _process(text)


# ---- logs ----------------------------------------------------------------------------------


def _redact_record(record: logging.LogRecord, clean: Callable[[str], str]) -> None:
    try:
        message = record.getMessage()
    except Exception:
        return  # arguments that do not fit the format: the handler reports that, as usual
    if clean(message) != message:
        # Keep the record's shape when the secret is in a string argument: some formatters
        # (uvicorn's access log) read ``args`` positionally.
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(clean(a) if isinstance(a, str) else a for a in args)
        if isinstance(record.msg, str):
            record.msg = clean(record.msg)
        if clean(record.getMessage()) != record.getMessage():
            record.msg, record.args = clean(message), ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        # Tracebacks are formatted late, by each handler; format it now, scrubbed, so every
        # handler prints this text instead (Formatter uses ``exc_text`` when it is set).
        record.exc_text = clean(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = clean(record.stack_info)


def install_log_redaction() -> None:
    """Scrub every log record of this process as it is created.

    A record factory rather than a filter on handlers: it also covers handlers added later (uvicorn
    configures its own once the server starts), Python's last-resort stderr handler, and records
    of every library, whichever handler ends up printing them.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts_secrets", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _process:
            _redact_record(record, _process)
        return record

    factory.redacts_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
