"""``switchyard config check FILE [--strict]``: validate a config file as ``serve`` would load it,
print what was resolved (secrets masked) and every warning; exit 1 on errors.

The resolved config goes to stdout as YAML; warnings and errors go to stderr, one line each.
"""

from __future__ import annotations

import re
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

MASK = "********"
# A field holding a secret: a name segment such as "key" or "password" ("max_tokens" is not one).
_SECRET_SEGMENTS = frozenset(
    {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials", "authorization"}
)
_NOT_SECRET = frozenset({"cache_key", "key_prefix"})


def _is_secret_name(name: str) -> bool:
    return name not in _NOT_SECRET and any(
        part in _SECRET_SEGMENTS for part in re.split(r"[-_.\s]+", name.lower())
    )


def _mask_url(value: str) -> str:
    """A URL with its password replaced (``postgresql://u:****@host/db``)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if parts.password is None:
        return value
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def mask_secrets(value: Any, name: str = "") -> Any:
    """``value`` (a dumped config) with every secret masked: credential-named fields, header
    values such as ``Authorization``, and URL passwords."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, name) for v in value]
    if isinstance(value, str):
        if _is_secret_name(name) and value:
            return MASK
        if "://" in value and "@" in value:
            return _mask_url(value)
    return value


def _resolved(config: Any) -> dict[str, Any]:
    data: dict[str, Any] = config.model_dump(mode="json", exclude_none=True)
    for entry in data.get("model_list", []):
        headers = entry.get("params", {}).get("extra_headers")
        if isinstance(headers, dict):  # header values may carry credentials of any name
            entry["params"]["extra_headers"] = {k: MASK for k in headers}
    if config.ray_engines:  # `model: ray/<app>` entries: their deployments are found at run time
        data["ray_engines"] = [e.model_dump(mode="json", exclude_none=True) for e in config.ray_engines]
    if config.disabled:
        data["disabled_deployments"] = [
            {"model_name": d.model_name, "model": d.model, "reason": d.reason} for d in config.disabled
        ]
    return mask_secrets(data)


def check(file: str, *, strict: bool = False) -> int:
    """Validate ``file``; the process exit status (0 valid, 1 errors)."""
    from gateway.config import ConfigError, load_config

    try:
        config = load_config(file, strict=strict)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        print(f"switchyard: {file}: {len(str(exc).splitlines())} error(s)", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    sys.stdout.write(yaml.safe_dump(_resolved(config), sort_keys=False))
    served = len({e.model_name for e in (*config.model_list, *config.ray_engines)})
    print(
        f"switchyard: {file}: OK, {served} model(s), {len(config.disabled)} disabled deployment(s), "
        f"{len(config.warnings)} warning(s)",
        file=sys.stderr,
    )
    return 0
