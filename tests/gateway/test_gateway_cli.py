"""`switchyard serve` as a user runs it: embedded defaults, refused binds, bad config files."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.gateway_process import free_port, gateway_process, run_switchyard


def test_serves_with_no_config_in_local_mode() -> None:
    with gateway_process() as gw:
        # No key needed on loopback with no master key configured.
        r = httpx.post(
            gw.base_url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user"}]}
        )
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "model_not_found"
        # With no config the bundled SmolLM2 is served by the in-process engine (loaded on first use).
        assert [m["id"] for m in httpx.get(gw.base_url + "/v1/models").json()["data"]] == ["smollm2"]
        logs = gw.logs()
    assert f"http://127.0.0.1:{gw.port}" in logs
    assert "curl" in logs and "/v1/chat/completions" in logs


def test_non_loopback_bind_without_master_key_is_refused() -> None:
    result = run_switchyard(["serve", "--host", "0.0.0.0", "--port", str(free_port())])
    assert result.returncode == 2
    assert "master key" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unusable_embedded_database_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # data_dir under a file: the embedded server cannot create its directory
    config = tmp_path / "config.yaml"
    config.write_text(f"general_settings:\n  data_dir: {blocker / 'data'}\nmodel_list: []\n")
    result = run_switchyard(
        ["serve", "--config", str(config), "--port", str(free_port())], env={"DATABASE_URL": ""}
    )
    assert result.returncode == 2
    assert "no database" in result.stderr and "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_names_field_and_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: a\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        "router_settings:\n"
        "  num_retries: 2\n"
        "  routing_stratgy: simple-shuffle\n"
    )
    result = run_switchyard(["serve", "--config", str(config), "--port", str(free_port())])
    assert result.returncode == 2
    assert f"{config}:7: router_settings.routing_stratgy" in result.stderr
    assert "unknown field" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_value_names_field_and_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "general_settings:\n  master_key: sk-x\nmodel_list:\n  - model_name: a\n    params:\n"
        "      model: openai/x\n      rpm: lots\n"
    )
    result = run_switchyard(["serve", "--config", str(config), "--port", str(free_port())])
    assert result.returncode == 2
    assert f"{config}:7: model_list[0].params.rpm" in result.stderr
    assert "Traceback" not in result.stderr
