"""The Kubernetes manifests of deploy/k8s as `kubectl kustomize` renders them, and what the tests read from them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy/k8s"
COMPONENTS = K8S / "components"
SECRET_EXAMPLE = K8S / "secret.example.yaml"

# What `kubectl apply -k` is pointed at: the shipped entry points, and the base with the queue-depth autoscaler
# exactly as its component ships (the example overlay changes it).
ENTRY_POINTS = {"base": K8S / "base", "default": K8S, "example": K8S / "overlays/example"}
GENERATED_VARIANTS = {"keda": ["servicemonitor", "keda", "networkpolicy"]}
VARIANTS = [*ENTRY_POINTS, *GENERATED_VARIANTS]

Manifest = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip(
            "kubectl is not on PATH: it renders deploy/k8s (`kubectl kustomize`, kustomize built in since 1.14)"
        )
    return path


def kustomize(folder: Path) -> list[Manifest]:
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render(variant: str, scratch: Path) -> list[Manifest]:
    """Render an entry point, or the base plus components in a kustomization written under `scratch`."""
    if variant in ENTRY_POINTS:
        return kustomize(ENTRY_POINTS[variant])
    folder = scratch / variant
    folder.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "textgen",
        "resources": [os.path.relpath(K8S / "base", folder)],  # kustomize refuses absolute paths
        "components": [os.path.relpath(COMPONENTS / name, folder) for name in GENERATED_VARIANTS[variant]],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return kustomize(folder)


def render_all(scratch: Path) -> dict[str, list[Manifest]]:
    return {variant: render(variant, scratch) for variant in VARIANTS}


def objects(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str) -> Manifest:
    found = objects(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def server_container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the pod runs the server alone"
    return containers[0]


def probes(container: Manifest) -> dict[str, Manifest]:
    return {name: container[name] for name in ("startupProbe", "readinessProbe", "livenessProbe") if name in container}


def env(container: Manifest) -> dict[str, Manifest]:
    return {item["name"]: item for item in container.get("env", [])}


def secret_env_names(container: Manifest) -> list[str]:
    """The environment variables the container takes from a Secret (named ones and envFrom)."""
    names = [name for name, item in env(container).items() if "secretKeyRef" in item.get("valueFrom", {})]
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            names += [source.get("prefix", "") + key for key in example_secret_keys()]
    return names


def example_secret() -> Manifest:
    return yaml.safe_load(SECRET_EXAMPLE.read_text())


def example_secret_keys() -> list[str]:
    secret = example_secret()
    return [*secret.get("stringData", {}), *secret.get("data", {})]


def query_metrics(query: str) -> list[str]:
    """The metric names a PromQL query selects (ours all start with textgen_)."""
    return sorted(set(re.findall(r"\b(textgen_[a-z_]+)\b", query)))


def query_labels(query: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', query))


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(quantity: str | int) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    assert match, quantity
    return float(match[1]) * units.get(match[2], 1)
