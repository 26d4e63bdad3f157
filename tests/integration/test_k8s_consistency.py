"""The manifests of deploy/k8s against a live `bentoml serve`: what they name must exist in the server.

A renamed route, metric, port or setting fails here instead of in a cluster: probes that never pass, an
autoscaler that reads nothing, keys in a variable the server ignores.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib.resources import files

import pytest
import yaml

from tests.integration.conftest import Server
from tests.k8s_render import (
    Manifest,
    env,
    example_secret_keys,
    objects,
    one,
    probes,
    query_metrics,
    secret_env_names,
    server_container,
)
from textgen.config import Settings

IMAGE = "textgen:latest"


def metric_names(exposition: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", exposition, flags=re.MULTILINE))


def test_every_probe_path_answers_without_a_key(server: Server, k8s_manifests: list[Manifest]):
    container = server_container(one(k8s_manifests, "Deployment"))
    for name, probe in probes(container).items():
        response = server.get(probe["httpGet"]["path"], key=None)
        assert response.status_code == 200, f"{name} {probe['httpGet']['path']}: {response.status_code}"


def test_scraped_path_and_autoscaling_metric_exist(server: Server, k8s_manifests: list[Manifest]):
    monitors, scalers = objects(k8s_manifests, "ServiceMonitor"), objects(k8s_manifests, "ScaledObject")
    paths = {endpoint.get("path", "/metrics") for m in monitors for endpoint in m["spec"]["endpoints"]}
    queries = [trigger["metadata"]["query"] for m in scalers for trigger in m["spec"]["triggers"]]
    for path in paths | {"/metrics"}:
        response = server.get(path, key=None)
        assert response.status_code == 200, path
        names = metric_names(response.text)
        for query in queries:
            assert query_metrics(query), query
            assert set(query_metrics(query)) <= names, f"{query}: not in {path}"


def test_secret_feeds_settings_the_server_reads(k8s_manifests: list[Manifest]):
    settings = {name.upper() for name in Settings.model_fields}
    container = server_container(one(k8s_manifests, "Deployment"))
    names = secret_env_names(container)
    assert names and set(names) <= settings
    assert {"API_KEYS"} <= set(example_secret_keys()) <= settings


def test_service_and_container_port_are_the_port_the_image_serves(k8s_manifests: list[Manifest]):
    container = server_container(one(k8s_manifests, "Deployment"))
    (port,) = container["ports"]
    service = one(k8s_manifests, "Service")
    assert {p["port"] for p in service["spec"]["ports"]} == {port["containerPort"]}
    assert port["containerPort"] in image_ports()


def image_ports() -> set[int]:
    """The ports the image EXPOSEs (BentoML's HTTP port, and 3001 for gRPC metrics), else BentoML's default one."""
    docker = shutil.which("docker")
    if docker:
        result = subprocess.run(
            [docker, "image", "inspect", "-f", "{{json .Config.ExposedPorts}}", IMAGE],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode == 0:
            return {int(p.split("/")[0]) for p in json.loads(result.stdout)}
    try:  # the image serves `bentoml serve` without --port: BentoML's default
        defaults = files("bentoml._internal.configuration").joinpath("v2/default_configuration.yaml").read_text()
        return {int(yaml.safe_load(defaults)["services"]["http"]["port"])}
    except (ModuleNotFoundError, FileNotFoundError, KeyError, TypeError) as exc:
        pytest.skip(f"no {IMAGE} image in Docker and no BentoML default configuration to read the port from: {exc}")


def test_probes_need_no_setting_that_closes_them(k8s_manifests: list[Manifest]):
    # AUTH_OPEN_PATHS can close a default open path; a probe path closed that way would answer 401.
    container = server_container(one(k8s_manifests, "Deployment"))
    closing = env(container).get("AUTH_OPEN_PATHS", {}).get("value", "")
    closed = {entry.strip()[1:] for entry in closing.split(",") if entry.strip().startswith("-")}
    assert not closed & {p["httpGet"]["path"] for p in probes(container).values()}
