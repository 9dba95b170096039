"""`switchyard config check` and `switchyard serve` on LiteLLM config files, run as a user runs them:
warnings once each, --strict refusing them, typos with the closest spelling, every error at once,
environment_variables applied, secrets masked; and a real gateway routing a model_group_alias to a
fake OpenAI upstream, with a deployment of an unknown provider disabled and shown on /health.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import yaml

from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import gateway_process, run_switchyard

LITELLM_FILE = """\
environment_variables:
  SY_CHECK_BASE: http://127.0.0.1:9/v1
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: os.environ/SY_CHECK_BASE
      api_key: sk-upstream-secret-0123456789
    rpm: 30
  - model_name: sagemaker-model
    litellm_params:
      model: sagemaker/some-endpoint
router_settings:
  routing_strategy: usage-based-routing-v2
  redis_host: 127.0.0.1
  redis_port: 6390
  redis_password: redis-secret-pw
litellm_settings:
  callbacks: ["langfuse"]
  success_callback: ["langfuse"]
general_settings:
  master_key: sk-master-secret-0123456789
  database_url: postgresql://sy:db-secret-pw@127.0.0.1:5432/sy
  alerting: ["slack"]
  store_model_in_db: true
"""

WARNED = [
    "litellm_settings.callbacks",
    "litellm_settings.success_callback",
    "general_settings.alerting",
    "general_settings.store_model_in_db",
    "model_list[1].litellm_params.model: provider 'sagemaker' is not available",
]


def _check(path: Path, *args: str) -> tuple[int, str, str]:
    result = run_switchyard(["config", "check", str(path), *args], env={"REDIS_URL": ""})
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout, result.stderr


def test_check_prints_resolved_config_masked_and_each_warning_once(tmp_path: Path) -> None:
    path = tmp_path / "litellm.yaml"
    path.write_text(LITELLM_FILE)
    code, out, err = _check(path)
    assert code == 0, err
    for setting in WARNED:
        lines = [line for line in err.splitlines() if setting in line]
        assert len(lines) == 1, (setting, err)
        assert lines[0].startswith(f"warning: {path}:")
    resolved = yaml.safe_load(out)
    params = resolved["model_list"][0]["params"]
    assert params["api_base"] == "http://127.0.0.1:9/v1"  # environment_variables, then os.environ/
    assert params["rpm"] == 30  # entry-level rpm
    assert resolved["router_settings"]["routing_strategy"] == "usage-based-routing"
    assert resolved["general_settings"]["redis_url"] == "redis://:********@127.0.0.1:6390/0"
    assert resolved["general_settings"]["database_url"] == "postgresql://sy:********@127.0.0.1:5432/sy"
    assert resolved["disabled_deployments"][0]["model"] == "sagemaker/some-endpoint"
    for secret in ("sk-upstream-secret", "sk-master-secret", "redis-secret-pw", "db-secret-pw"):
        assert secret not in out and secret not in err


def test_strict_turns_warnings_into_errors(tmp_path: Path) -> None:
    path = tmp_path / "litellm.yaml"
    path.write_text(LITELLM_FILE)
    code, _, err = _check(path, "--strict")
    assert code == 1
    for setting in WARNED:
        assert sum(setting in line and line.startswith("error:") for line in err.splitlines()) == 1, err
    served = run_switchyard(["serve", "--config", str(path), "--strict", "--port", "9"])
    assert served.returncode == 2
    assert "litellm_settings.callbacks" in served.stderr and "Traceback" not in served.stderr


def test_typo_gets_the_closest_spelling(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(
        "modle_list: []\ngeneral_settings:\n  master_kye: sk-x\nrouter_settings:\n  num_retires: 2\n"
    )
    code, _, err = _check(path)
    assert code == 1
    assert f"{path}:1: modle_list: unknown field; did you mean 'model_list'?" in err
    assert f"{path}:3: general_settings.master_kye: unknown field; did you mean 'master_key'?" in err
    assert f"{path}:5: router_settings.num_retires: unknown field; did you mean 'num_retries'?" in err


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model_list:\n"
        "  - model_name: a\n"
        "    litellm_params:\n"
        "      model: openai/x\n"
        "      api_key: os.environ/SY_CHECK_NEVER_SET\n"
        "      rpm: lots\n"
        "router_settings:\n"
        "  routing_strategy: fastest\n"
        "wat: 1\n"
    )
    code, _, err = _check(path)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 4, err
    assert any(
        ":5: model_list[0].litellm_params.api_key: environment variable SY_CHECK_NEVER_SET" in e
        for e in errors
    )
    assert any(":6: model_list[0].litellm_params.rpm" in e for e in errors)
    assert any(":8: router_settings.routing_strategy" in e for e in errors)
    assert any(":9: wat: unknown field" in e for e in errors)


def test_alias_routes_through_a_real_gateway_and_disabled_shows_on_health() -> None:
    with FakeOpenAI() as fake:
        config = {
            "environment_variables": {"SY_ALIAS_UPSTREAM": fake.base_url},
            "model_list": [
                {
                    "model_name": "gpt-4o",
                    "litellm_params": {
                        "model": "openai/upstream-4o",
                        "api_base": "os.environ/SY_ALIAS_UPSTREAM",
                    },
                    "tpm": 100000,
                },
                {"model_name": "gpt-4o", "litellm_params": {"model": "sagemaker/endpoint"}},
            ],
            "router_settings": {
                "model_group_alias": {"gpt4": "gpt-4o", "secret-gpt": {"model": "gpt-4o", "hidden": True}}
            },
            "litellm_settings": {"success_callback": ["langfuse"]},
        }
        with gateway_process(config) as gw:
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
            for name in ("gpt4", "secret-gpt", "gpt-4o"):
                reply = client.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": "hi"}]
                )
                assert reply.choices[0].message.content
            health = httpx.get(gw.base_url + "/health", timeout=30).json()
            logs = gw.logs()
        assert [r.body["model"] for r in fake.requests if r.path.endswith("/chat/completions")] == [
            "upstream-4o"
        ] * 3
    unhealthy = [e for e in health["unhealthy_endpoints"] if e["model"] == "sagemaker/endpoint"]
    assert len(unhealthy) == 1 and "not available in Switchyard" in unhealthy[0]["error"]
    assert health["unhealthy_count"] == len(health["unhealthy_endpoints"])
    # Each warning once at start.
    assert logs.count("litellm_settings.success_callback: LiteLLM setting not implemented") == 1, logs
    assert logs.count("provider 'sagemaker' is not available") == 1, logs
    assert logs.count("hidden: true is not applied yet: /v1/models lists 'secret-gpt'") == 1, logs
