"""LiteLLM config files start unchanged: the examples shipped in LiteLLM's wheel (when the peer is
installed under bench/.peers/litellm) and the ones copied from its docs into litellm_configs/.

Each file loads with every ``os.environ/NAME`` it references set, LiteLLM settings Switchyard does
not implement come back as warnings (never errors), and only YAML that does not parse is refused.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "litellm_configs"
_PEER_SITE = sorted((REPO / "bench" / ".peers" / "litellm" / "lib").glob("python3*/site-packages/litellm"))
PEER = _PEER_SITE[0] if _PEER_SITE else None


def _peer_configs() -> list[Path]:
    if PEER is None:
        return []
    proxy = PEER / "proxy"
    return sorted([*proxy.glob("example_config_yaml/*.yaml"), *proxy.glob("*.yaml")])


@pytest.fixture
def env_restored() -> Iterator[None]:
    """Loading applies the file's environment_variables to os.environ (as LiteLLM does): undo it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _set_references(path: Path) -> None:
    for name in re.findall(r"os\.environ/([A-Za-z_][A-Za-z0-9_]*)", path.read_text()):
        os.environ.setdefault(name, f"test-{name.lower()}")


def _load(path: Path) -> list[str]:
    """The file's warnings; a ConfigError only when its YAML does not parse."""
    _set_references(path)
    os.environ.pop("REDIS_URL", None)
    try:
        return load_config(path).warnings
    except ConfigError as exc:
        message = str(exc)
        assert "invalid YAML" in message and len(message.splitlines()) == 1, message
        return []


@pytest.mark.skipif(
    PEER is None, reason="LiteLLM peer not installed (bench/.peers/litellm); CI uses the fixtures"
)
@pytest.mark.parametrize("path", _peer_configs(), ids=lambda p: p.name)
def test_litellm_wheel_example_configs_load(path: Path, env_restored: None) -> None:
    for warning in _load(path):
        assert warning.startswith(f"{path}:"), warning


def test_peer_examples_found_when_installed() -> None:
    # The parametrized test above must not pass by finding nothing.
    if PEER is None:
        pytest.skip("LiteLLM peer not installed (bench/.peers/litellm)")
    assert len(_peer_configs()) >= 20


# Per fixture: warnings expected (substrings), models served, deployments disabled.
EXPECTED: dict[str, tuple[list[str], list[str], list[str]]] = {
    "configs_quick_start.yaml": (
        ["general_settings.alerting: LiteLLM setting not implemented", "litellm_settings.success_callback"],
        ["gpt-4o", "bedrock-claude-v1", "anthropic-claude", "vllm-models"],
        [],
    ),
    "proxy_server_config.yaml": (
        [
            "general_settings.store_model_in_db",
            "general_settings.database_connection_pool_limit",
            "router_settings.enable_pre_call_checks",
            "litellm_settings.default_team_settings",
            "provider 'sagemaker' is not available in Switchyard",
            "no model group 'fake-openai-endpoint-3' to alias",
        ],
        ["gpt-3.5-turbo", "gpt-3.5-turbo-large", "text-embedding-ada-002"],
        ["sagemaker/berri-benchmarking-Llama-2-70b-chat-hf-4"],
    ),
    "config_settings_reference.yaml": (
        [
            "litellm_settings.failure_callback",
            "callback_settings",
            "general_settings.enable_jwt_auth",
            "general_settings.background_health_checks",
            "general_settings.health_check_interval",
        ],
        ["string"],
        [],
    ),
    "load_balancing.yaml": ([], ["gpt-3.5-turbo", "gpt-4"], []),
    "guardrails_mcp_logging.yaml": (
        [
            ":16: guardrails: LiteLLM setting not implemented",
            "mcp_servers",
            "search_tools",
            "entry 'claude-3-5-sonnet' has model_info but no litellm_params: skipped",
        ],
        ["gpt-3.5-turbo"],
        [],
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_litellm_docs_configs_load(name: str, env_restored: None) -> None:
    path = FIXTURES / name
    _set_references(path)
    os.environ.pop("REDIS_URL", None)
    config = load_config(path)
    warnings, models, disabled = EXPECTED[name]
    for expected in warnings:
        assert sum(expected in w for w in config.warnings) == 1, (expected, config.warnings)
    assert list(dict.fromkeys(e.model_name for e in config.model_list)) == models
    assert [d.model for d in config.disabled] == disabled
    # --strict refuses a file with warnings, and only such a file.
    with pytest.raises(ConfigError) if config.warnings else contextlib.nullcontext():
        load_config(path, strict=True)


def test_every_fixture_is_covered() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.yaml")) == sorted(EXPECTED)


def test_load_balancing_maps_limits_strategy_alias_and_redis(env_restored: None) -> None:
    os.environ.pop("REDIS_URL", None)
    config = load_config(FIXTURES / "load_balancing.yaml")
    first = config.model_list[0].params
    assert (first.tpm, first.rpm) == (20000, 3)  # entry-level limits beside litellm_params
    assert config.model_list[2].params.rpm == 1440  # the one inside litellm_params
    assert config.router_settings.routing_strategy == "usage-based-routing"  # usage-based-routing-v2
    assert (
        config.general_settings.redis_url == "redis://:%3Cyour%20redis%20password%3E@<your redis host>:1992/0"
    )
    # The alias serves the target's three deployments under its own name.
    assert [e.params.model for e in config.model_list if e.model_name == "gpt-4"] == [
        e.params.model for e in config.model_list if e.model_name == "gpt-3.5-turbo"
    ]
    assert os.environ["REDIS_HOST"] == "localhost"  # environment_variables applied


def test_renamed_settings_move_to_ours(env_restored: None) -> None:
    _set_references(FIXTURES / "proxy_server_config.yaml")
    config = load_config(FIXTURES / "proxy_server_config.yaml")
    assert config.general_settings.spend_flush_interval_s == 1  # proxy_batch_write_at
    text = (
        "general_settings:\n  max_request_size_mb: 3\n  global_max_parallel_requests: 9\n"
        "  user_api_key_cache_ttl: 11\n  database_connection_timeout: 0\n  spend_flush_interval_s: 2\n"
        "  proxy_batch_write_at: 60\n"
    )
    config = parse_config(text, "c.yaml")
    general = config.general_settings
    assert (general.max_request_body_mb, general.key_cache_ttl_s) == (3, 11)
    assert config.limit_settings.max_parallel_requests == 9
    assert general.spend_flush_interval_s == 2  # ours, set in the same file, wins
    assert general.database_timeout_s == 5  # LiteLLM's 0 ("unset"): the default, with a warning
    assert config.warnings == [
        "c.yaml:5: general_settings.database_connection_timeout: 0 is not a value for "
        "general_settings.database_timeout_s: its default applies"
    ]
    with pytest.raises(
        ConfigError, match=r"c.yaml:2: general_settings.proxy_batch_write_at: Input should be"
    ):
        parse_config("general_settings:\n  proxy_batch_write_at: -1\n", "c.yaml")


def test_ignored_settings_need_no_environment_variables(env_restored: None) -> None:
    # A setting Switchyard ignores is not read, so its os.environ/ reference need not be set.
    text = (
        "model_list:\n  - model_name: a\n    model_info: {key: os.environ/SY_UNSET_1}\n"
        "litellm_settings:\n  default_team_settings: [{langfuse_public_key: os.environ/SY_UNSET_2}]\n"
        "guardrails: [{guardrail_name: g, litellm_params: {api_key: os.environ/SY_UNSET_3}}]\n"
    )
    config = parse_config(text, "c.yaml")
    assert config.model_list == [] and len(config.warnings) == 3


def test_redis_url_from_env_wins_over_router_redis_host(env_restored: None) -> None:
    os.environ["REDIS_URL"] = "redis://127.0.0.1:6379/3"
    config = parse_config("router_settings:\n  redis_host: elsewhere\n  redis_port: 1\n")
    assert config.general_settings.redis_url == "redis://127.0.0.1:6379/3"


def test_invalid_yaml_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model_list:\n  - model_name: a\n    litellm_params: {model: openai/x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len(str(err.value).splitlines()) == 1
    assert str(err.value).startswith(f"{path}:") and "invalid YAML" in str(err.value)


def test_cache_params_redis_and_environment_edge_cases(env_restored: None) -> None:
    os.environ.pop("REDIS_URL", None)
    text = (
        "environment_variables:\n  PATH: /nowhere\n  SY_EMPTY:\n  SY_NUMBER: 5\n"
        "litellm_settings:\n  cache: true\n"
        "  cache_params: {type: redis, host: cachehost, port: 6380, password: p w}\n"
        "router_settings:\n  routing_strategy: provider-budget-routing\n"
    )
    path = os.environ["PATH"]
    config = parse_config(text, "c.yaml")
    assert os.environ["PATH"] == path and "SY_EMPTY" not in os.environ and os.environ["SY_NUMBER"] == "5"
    assert config.general_settings.redis_url == "redis://:p%20w@cachehost:6380/0"
    assert config.cache_settings.enabled is True
    assert config.router_settings.routing_strategy == "simple-shuffle"
    assert [w.split(": ")[1] for w in config.warnings] == [
        "environment_variables.PATH",
        "router_settings.routing_strategy",
    ]
    assert all(w.startswith(("c.yaml:2: ", "c.yaml:9: ")) for w in config.warnings), config.warnings
