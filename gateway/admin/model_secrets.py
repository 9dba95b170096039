"""Provider credentials of database-managed models: which params are secret, sealed at rest, masked out.

A param is secret when its name, split on ``_``, holds one of LiteLLM's sensitive words (``key``,
``secret``, ``token``, ``credential(s)``, ``password``, ...) and no ``cost`` (``input_cost_per_token``
is a price): ``api_key``, ``aws_secret_access_key``, ``aws_session_token``, ``vertex_credentials``...
The same rule as LiteLLM's ``SensitiveDataMasker``, so what LiteLLM hides, Switchyard hides too.

Secret values are stored as ``"sy-enc:v1:<Fernet token>"`` (AES-128-CBC + HMAC-SHA256, from the
``cryptography`` package). The Fernet key is the SHA-256 of, in order of preference,
``SWITCHYARD_SALT_KEY``, LiteLLM's ``LITELLM_SALT_KEY`` (so a migrating team keeps its variable),
else the master key. Without any of them (local mode, no salt key) a secret cannot be stored and
``/model/new`` refuses it: a model without credentials still can be. Changing the key makes the
stored secrets unreadable: those models are skipped with an error naming them until they are saved
again. Responses never carry a secret, not even in part: every secret param reads ``MASKED``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

PREFIX = "sy-enc:v1:"
MASKED = "********"
ENV_VARS = ("SWITCHYARD_SALT_KEY", "LITELLM_SALT_KEY")

# LiteLLM's SensitiveDataMasker patterns (litellm_core_utils/sensitive_data_masker.py), matched on
# whole ``_``-separated segments of a param name.
_SENSITIVE = frozenset(
    {
        "password",
        "secret",
        "key",
        "token",
        "auth",
        "authorization",
        "cookie",
        "credential",
        "credentials",
        "access",
        "private",
        "certificate",
        "fingerprint",
        "tenancy",
    }
)
_NOT_SENSITIVE = frozenset({"cost"})


class SecretsUnavailable(Exception):
    """No encryption key is configured, or a stored secret was sealed with another one."""


def is_secret(name: str) -> bool:
    segments = set(name.lower().split("_"))
    return bool(segments & _SENSITIVE) and not segments & _NOT_SENSITIVE


def _fernet_key(master_key: str | None) -> bytes | None:
    for var in ENV_VARS:
        value = os.environ.get(var)
        if value:
            return base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest())
    if master_key:
        return base64.urlsafe_b64encode(hashlib.sha256(b"switchyard-models\0" + master_key.encode()).digest())
    return None


class ParamCipher:
    """Seals and opens the secret params of a deployment (``litellm_params``)."""

    def __init__(self, master_key: str | None) -> None:
        key = _fernet_key(master_key)
        self._fernet = Fernet(key) if key is not None else None

    def seal(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with every secret value encrypted, in nested mappings too (``extra_headers``'
        ``Authorization``); values already sealed are kept."""
        out: dict[str, Any] = {}
        for name, value in params.items():
            if isinstance(value, Mapping) and not is_secret(name):
                out[name] = self.seal(value)
            elif value is None or not is_secret(name) or _sealed(value):
                out[name] = value
            elif self._fernet is None:
                raise SecretsUnavailable(
                    f"litellm_params.{name}: set SWITCHYARD_SALT_KEY (or a master key) to store credentials"
                )
            else:
                plain = value if isinstance(value, str) else "json:" + json.dumps(value)
                out[name] = PREFIX + self._fernet.encrypt(plain.encode()).decode()
        return out

    def open(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with every sealed value decrypted."""
        out: dict[str, Any] = {}
        for name, value in params.items():
            if isinstance(value, Mapping):
                out[name] = self.open(value)
            elif not _sealed(value):
                out[name] = value
            elif self._fernet is None:
                raise SecretsUnavailable(f"litellm_params.{name} is encrypted and no key is configured")
            else:
                try:
                    plain = self._fernet.decrypt(value[len(PREFIX) :].encode()).decode()
                except InvalidToken:
                    raise SecretsUnavailable(
                        f"litellm_params.{name} was encrypted with another key (SWITCHYARD_SALT_KEY changed?)"
                    ) from None
                out[name] = json.loads(plain[5:]) if plain.startswith("json:") else plain
        return out


def mask(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` as a response may show them: every secret, nested ones included, reads ``MASKED``."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is not None and is_secret(name):
            out[name] = MASKED
        elif isinstance(value, Mapping):
            out[name] = mask(value)
        else:
            out[name] = value
    return out


def _sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)
