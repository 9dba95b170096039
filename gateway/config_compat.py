"""LiteLLM's proxy config read as ours: before validation, every key of a file is kept (a
Switchyard setting), mapped onto one (``redis_host``, ``model_group_alias``, entry-level ``tpm``...),
accepted with a warning (a LiteLLM setting Switchyard does not implement: named, with what happens
instead) or refused (a key neither knows, with the closest spelling). See config.example.yaml.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from gateway import config_litellm as litellm_keys
from gateway.config_report import ConfigReport

ENV_PREFIX = "os.environ/"

# LiteLLM's routing strategy names that differ from ours: an alias, or one we lack.
_STRATEGY_ALIASES = {"usage-based-routing-v2": "usage-based-routing"}
_STRATEGIES_WE_LACK = {"provider-budget-routing"}
# Variables LiteLLM never sets from environment_variables (proxy_server.py _BLOCKED_ENV_KEYS).
_BLOCKED_ENV = frozenset(
    {"PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "DYLD_INSERT_LIBRARIES", "PYTHONPATH"}
    | {"PYTHONSTARTUP", "PYTHONHOME", "HOME", "USER", "SHELL", "LOGNAME", "NO_PROXY", "no_proxy"}
)


@dataclass
class Translated:
    """What the translation took out of the file for after validation."""

    # alias name -> (target model group, hidden from /v1/models)
    aliases: dict[str, tuple[str, bool]] = field(default_factory=dict)
    # For each model_list item that reaches validation, its index in the file.
    model_list_index: list[int] = field(default_factory=list)
    # model_list items skipped (no litellm_params), by their index in the file.
    skipped: set[int] = field(default_factory=set)
    # Our (section, key) -> the LiteLLM (section, key) the file wrote it as, for error messages.
    renamed: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)


def _suggest(key: str, candidates: set[str] | frozenset[str]) -> str:
    close = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    return "unknown field (neither a Switchyard nor a LiteLLM setting; see config.example.yaml)"


def _ignore(report: ConfigReport, loc: tuple[str | int, ...], section: str, key: str) -> None:
    report.warn(loc, f"LiteLLM setting not implemented, ignored: {litellm_keys.instead(section, key)}")


def _filter(
    report: ConfigReport,
    mapping: dict[str, Any],
    loc: tuple[str | int, ...],
    ours: frozenset[str],
    section: str | None,
) -> None:
    """Keep our keys; drop LiteLLM-only keys of ``section`` with a warning, and others with an
    error (``section`` None: a section LiteLLM does not have)."""
    theirs = litellm_keys.SECTIONS.get(section, frozenset()) if section else frozenset()
    for key in list(mapping):
        if key in ours:
            continue
        if not isinstance(key, str):
            report.error((*loc, str(key)), "keys must be strings")
        elif key in theirs:
            _ignore(report, (*loc, key), section or "", key)
        else:
            report.error((*loc, key), _suggest(key, ours | theirs))
        del mapping[key]


def apply_environment(data: dict[str, Any], report: ConfigReport) -> None:
    """LiteLLM's top-level ``environment_variables``: set in the process environment (as LiteLLM
    does, replacing what is there) before any ``os.environ/NAME`` is read."""
    env = data.pop("environment_variables", None)
    if env is None:
        return
    if not isinstance(env, dict):
        report.error(("environment_variables",), "must be a mapping of NAME: value")
        return
    for name, value in env.items():
        loc = ("environment_variables", str(name))
        if name in _BLOCKED_ENV:
            report.warn(loc, "not applied (LiteLLM refuses it too): set it in the process environment")
            continue
        if value is None:
            continue  # `NAME:` with no value sets nothing
        if not isinstance(value, str | int | float | bool):
            report.error(loc, "must be a string or a number")
            continue
        text = str(value)
        if text.startswith(ENV_PREFIX):
            ref = text[len(ENV_PREFIX) :]
            if ref not in os.environ:
                report.error(loc, f"environment variable {ref} is not set")
                continue
            text = os.environ[ref]
        os.environ[str(name)] = text


def _redis_url(host: Any, port: Any, password: Any) -> str:
    auth = f":{quote(str(password), safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port or 6379}/0"


def _router(data: dict[str, Any], rs: dict[str, Any], report: ConfigReport, out: Translated) -> None:
    loc: tuple[str | int, ...] = ("router_settings",)
    strategy = rs.get("routing_strategy")
    if strategy in _STRATEGY_ALIASES:
        rs["routing_strategy"] = _STRATEGY_ALIASES[strategy]
    elif strategy in _STRATEGIES_WE_LACK:
        report.warn(
            (*loc, "routing_strategy"), f"LiteLLM's {strategy} is not implemented: simple-shuffle is used"
        )
        del rs["routing_strategy"]
    redis = {k: rs.pop(k) for k in ("redis_host", "redis_port", "redis_password", "redis_url") if k in rs}
    general = data.get("general_settings")
    if (
        redis
        and not (isinstance(general, dict) and general.get("redis_url"))
        and not os.environ.get("REDIS_URL")
    ):
        url = redis.get("redis_url") or (
            _redis_url(redis["redis_host"], redis.get("redis_port"), redis.get("redis_password"))
            if redis.get("redis_host")
            else None
        )
        if url:
            data["general_settings"] = {**(general if isinstance(general, dict) else {}), "redis_url": url}
    aliases = rs.pop("model_group_alias", None) or {}
    if not isinstance(aliases, dict):
        report.error((*loc, "model_group_alias"), "must be a mapping of alias: model group")
        return
    for name, target in aliases.items():
        # LiteLLM's two forms: {alias: group} and {alias: {model: group, hidden: true}}.
        if (
            isinstance(target, dict)
            and isinstance(target.get("model"), str)
            and set(target) <= {"model", "hidden"}
        ):
            out.aliases[str(name)] = (target["model"], bool(target.get("hidden", False)))
        elif isinstance(target, str) and target:
            out.aliases[str(name)] = (target, False)
        else:
            report.error(
                (*loc, "model_group_alias", str(name)),
                "must be a model group name or {model: name, hidden: true}",
            )


def _litellm_cache_redis(data: dict[str, Any], ls: dict[str, Any]) -> None:
    # litellm_settings.cache_params {type: redis, host, port, password}: the Redis to use, unless
    # general_settings or REDIS_URL name one.
    params = ls.get("cache_params")
    if not isinstance(params, dict) or params.get("type") != "redis" or not params.get("host"):
        return
    general = data.get("general_settings")
    if (isinstance(general, dict) and general.get("redis_url")) or os.environ.get("REDIS_URL"):
        return
    url = _redis_url(params["host"], params.get("port"), params.get("password"))
    data["general_settings"] = {**(general if isinstance(general, dict) else {}), "redis_url": url}


def _renamed(data: dict[str, Any], report: ConfigReport, out: Translated) -> None:
    """Move LiteLLM settings that Switchyard has under another name to that name (see RENAMED)."""
    for (section, key), (ours, our_key) in litellm_keys.RENAMED.items():
        source = data.get(section)
        if not isinstance(source, dict) or key not in source:
            continue
        value = source.pop(key)
        if value is None or (value == 0 and not isinstance(value, bool)):
            # LiteLLM's reference writes 0 for "unset"; ours must be positive.
            report.warn((section, key), f"{value!r} is not a value for {ours}.{our_key}: its default applies")
            continue
        target = data.get(ours)
        target = dict(target) if isinstance(target, dict) else {}
        if our_key not in target:
            target[our_key] = value
            out.renamed[(ours, our_key)] = (section, key)
        data[ours] = target


def _prepare_model_list(
    items: list[Any], entry_fields: frozenset[str], report: ConfigReport, out: Translated
) -> None:
    for i, item in enumerate(items):
        loc: tuple[str | int, ...] = ("model_list", i)
        if not isinstance(item, dict):
            continue
        if "litellm_params" not in item and "params" not in item:
            # LiteLLM's examples list such entries (model_info alone, or a bare model_name).
            what = "has model_info but no litellm_params" if "model_info" in item else "has no litellm_params"
            report.warn(loc, f"entry {item.get('model_name')!r} {what}: skipped, not served")
            out.skipped.add(i)
            continue
        _filter(report, item, loc, entry_fields | litellm_keys.MODEL_ENTRY, None)


def _otel_callbacks(data: dict[str, Any]) -> None:
    """LiteLLM's ``callbacks: ["otel"]`` (or ``success_callback``) is our ``general_settings.otel``;
    the other callbacks stay, to be warned about as ignored."""
    ls = data.get("litellm_settings")
    if not isinstance(ls, dict):
        return
    found = False
    for key in ("callbacks", "success_callback"):
        value = ls.get(key)
        if isinstance(value, list) and "otel" in value:
            found = True
            rest = [v for v in value if v != "otel"]
            if rest:
                ls[key] = rest
            else:
                del ls[key]
    if found:
        general = data.get("general_settings")
        general = dict(general) if isinstance(general, dict) else {}
        general.setdefault("otel", True)
        data["general_settings"] = general


def _mapped(section: str) -> frozenset[str]:
    """The LiteLLM keys of ``section`` that ``translate`` maps onto ours."""
    renamed = {key for (sec, key) in litellm_keys.RENAMED if sec == section}
    return litellm_keys.MAPPED.get(section, frozenset()) | renamed


def prepare(data: dict[str, Any], fields: Mapping[str, frozenset[str]], report: ConfigReport) -> Translated:
    """Before ``os.environ/`` references are read: drop from ``data`` every key Switchyard does not
    use (warning about LiteLLM's, refusing the others), so a setting that is ignored never needs
    its environment variable. ``fields`` holds our own keys by section ("" the top level,
    "model_entry")."""
    out = Translated()
    _otel_callbacks(data)
    theirs_top = litellm_keys.TOP_LEVEL
    for key in list(data):
        if key in fields[""]:
            continue
        if isinstance(key, str) and key in theirs_top:
            _ignore(report, (key,), "", key)
        else:
            report.error((str(key),), _suggest(str(key), fields[""] | theirs_top))
        del data[key]
    for section in (
        "general_settings",
        "router_settings",
        "litellm_settings",
        "cache_settings",
        "limit_settings",
    ):
        value = data.get(section)
        if isinstance(value, dict):
            litellm_section = section if section in litellm_keys.SECTIONS else None
            _filter(
                report,
                value,
                (section,),
                fields[section] | _mapped(section),
                litellm_section,
            )
    items = data.get("model_list")
    if isinstance(items, list):
        _prepare_model_list(items, fields["model_entry"], report, out)
    return out


def translate(data: dict[str, Any], report: ConfigReport, out: Translated) -> None:
    """After ``os.environ/`` references are read: map the LiteLLM settings kept by ``prepare`` onto
    ours, in place, so our models validate ``data``."""
    rs = data.get("router_settings")
    if isinstance(rs, dict):
        _router(data, rs, report, out)
    ls = data.get("litellm_settings")
    if isinstance(ls, dict):
        _litellm_cache_redis(data, ls)
    _renamed(data, report, out)
    items = data.get("model_list")
    if not isinstance(items, list):
        return
    kept: list[Any] = []
    for i, item in enumerate(items):
        if i in out.skipped:
            continue
        if isinstance(item, dict):
            params = item.get("litellm_params", item.get("params"))
            for limit in ("tpm", "rpm"):
                # LiteLLM allows a deployment's limits beside its litellm_params; those inside win.
                if limit in item and isinstance(params, dict):
                    params.setdefault(limit, item.pop(limit))
        kept.append(item)
        out.model_list_index.append(i)
    data["model_list"] = kept
