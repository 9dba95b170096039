"""`deploy/k8s/switchyard.yaml` as Kubernetes and the gateway would read it.

Every object is validated strictly (unknown fields refused) against the Kubernetes API's own JSON
schemas, bundled by `kubernetes-validate` (no API server needed: `kubectl --dry-run=client` needs one
for discovery, and none runs here). Then the parts that must agree with the gateway: the ConfigMap's
config passes `switchyard config check --strict` with the Secret's values as the environment; the
container's arguments, after the image's ENTRYPOINT, are ones `switchyard serve` accepts; the probes
and the Service reach the port the gateway listens on; the pod's termination grace outlasts the
gateway's own drain, so Kubernetes never SIGKILLs a replica still finishing requests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.app import create_app
from gateway.cli import build_parser
from gateway.config import GatewayConfig, parse_config
from tests.support.gateway_process import run_switchyard

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "k8s" / "switchyard.yaml"
K8S_VERSION = "1.30"  # the oldest Kubernetes release still maintained when this was written


def _objects() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc}


def _container() -> dict[str, Any]:
    (container,) = _objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _entrypoint() -> list[str]:
    match = re.search(r"^ENTRYPOINT (\[.*\])$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile has no exec-form ENTRYPOINT"
    return json.loads(match.group(1))


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
def test_every_object_is_valid_kubernetes(version: str) -> None:
    objects = _objects()
    assert set(objects) == {"Secret", "ConfigMap", "Deployment", "Service"}
    for obj in objects.values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_refuses_an_unknown_field() -> None:
    """The check above would catch a typo: a misspelt probe field is refused."""
    deployment = _objects()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_configmap_config_passes_the_strict_check(tmp_path: Path) -> None:
    objects = _objects()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(objects["ConfigMap"]["data"]["config.yaml"])
    result = run_switchyard(
        ["config", "check", "--strict", str(config_file)], env=objects["Secret"]["stringData"]
    )
    assert result.returncode == 0, result.stderr
    assert "gpt-4o-mini" in result.stdout
    # The master key comes from the Secret and is masked in what the check prints.
    assert objects["Secret"]["stringData"]["SWITCHYARD_MASTER_KEY"] not in result.stdout


def test_the_container_arguments_are_ones_serve_accepts() -> None:
    container = _container()
    entrypoint = _entrypoint()
    args = build_parser().parse_args([*entrypoint[1:], *container["args"]])
    assert args.command == "serve"
    # The config file is where the ConfigMap is mounted.
    (mount,) = container["volumeMounts"]
    assert Path(args.config).parent == Path(mount["mountPath"])
    assert Path(args.config).name in _objects()["ConfigMap"]["data"]
    # Probes and the Service reach the port the gateway binds, on every address.
    assert args.host == "0.0.0.0"
    (port,) = container["ports"]
    assert port["containerPort"] == args.port
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]
    (service_port,) = _objects()["Service"]["spec"]["ports"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])


def _configmap_config(monkeypatch: pytest.MonkeyPatch) -> GatewayConfig:
    """The ConfigMap's config as a pod reads it: the Secret's values in the environment."""
    objects = _objects()
    for name, value in objects["Secret"]["stringData"].items():
        monkeypatch.setenv(name, value)
    return parse_config(objects["ConfigMap"]["data"]["config.yaml"], "configmap")


def test_the_probes_ask_routes_the_gateway_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    container = _container()
    routes = {
        (route.path, method)
        for route in create_app(_configmap_config(monkeypatch)).routes
        for method in getattr(route, "methods", None) or ()
    }
    for probe in ("readinessProbe", "livenessProbe"):
        assert (container[probe]["httpGet"]["path"], "GET") in routes
    # Readiness, not liveness: a draining replica must leave the Service while it finishes requests.
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
    # The image's own HEALTHCHECK asks the same readiness route.
    assert "/health/readiness" in (REPO / "Dockerfile").read_text()


def test_termination_grace_outlasts_the_gateway_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _configmap_config(monkeypatch)
    grace = _objects()["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.general_settings.graceful_shutdown_s
