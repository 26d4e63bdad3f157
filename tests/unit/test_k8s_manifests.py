"""deploy/k8s renders with `kubectl kustomize`, every object is valid against its schema, and the numbers that
must agree do (probes and ports, grace period and drain, threads and CPU, autoscaler and Deployment).

Built-in objects: Kubernetes' own JSON schemas from kubernetes-validate (shipped in the package, strict: an unknown
field is an error). ScaledObject and ServiceMonitor: pydantic models generated from the KEDA and Prometheus
Operator CRDs (cloudcoil), and the object must come back unchanged from them, so an unknown field (dropped) or a
wrong type (refused or coerced) fails. The live server's side is tests/integration/test_k8s_consistency.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.k8s_render import (
    COMPONENTS,
    ENTRY_POINTS,
    GENERATED_VARIANTS,
    K8S,
    Manifest,
    cpu_cores,
    env,
    example_secret,
    example_secret_keys,
    memory_bytes,
    objects,
    one,
    probes,
    query_labels,
    query_metrics,
    secret_env_names,
    server_container,
)
from textgen.config import Settings

# The oldest Kubernetes the manifests are checked against, and the newest kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSIONS = ("1.29", "1.37")
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
# Measured (docs/kubernetes.md): `docker run` to /readyz 200 took up to 31 s on a busy 2-core machine; the server
# exits about 3 s after its drain bound; 5 generations at a nearly full context peaked at 1.35 GiB (page cache in).
SLOWEST_MEASURED_READY_S = 31
EXIT_AFTER_DRAIN_S = 5
MEASURED_PEAK_MEMORY = 1.35 * 2**30
IMAGE_PORT = 3000
IMAGE_UID = 1034
# Read by BentoML or the image, not by textgen's Settings.
BENTOML_ENV = {"BENTOML_HOME", "BENTOML_DO_NOT_TRACK"}
# The image's entrypoint moves the server off 3000 when one of these is set, and the probes with it.
PORT_MOVERS = {"PORT", "BENTOML_PORT", "BENTOML_HOST"}
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}


def is_custom(manifest: Manifest) -> bool:
    return manifest["apiVersion"].startswith(CUSTOM_GROUPS)


def crd_models() -> dict[tuple[str, str], type]:
    from cloudcoil.models.keda.v1alpha1 import ScaledObject
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    return {
        ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
        ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    }


def kustomization_components(folder: Path) -> list[Path]:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return [(folder / path).resolve() for path in spec.get("components", [])]


def deployment_parts(manifests: list[Manifest]) -> tuple[Manifest, Manifest, Manifest]:
    deployment = one(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    return deployment, pod, server_container(deployment)


def max_concurrency(container: Manifest) -> int:
    item = env(container).get("MAX_CONCURRENCY")
    return int(item["value"]) if item else Settings.model_fields["max_concurrency"].default


def autoscalers(manifests: list[Manifest]) -> list[Manifest]:
    return objects(manifests, "HorizontalPodAutoscaler") + objects(manifests, "ScaledObject")


# --- rendering and schemas -------------------------------------------------------------------------------------


def test_each_entry_point_renders_the_server(k8s_rendered: dict[str, list[Manifest]]):
    for variant, k8s_manifests in k8s_rendered.items():
        kinds = sorted(m["kind"] for m in k8s_manifests)
        for kind in ("Namespace", "Deployment", "Service", "PodDisruptionBudget"):
            assert kinds.count(kind) == 1, f"{variant}: {kinds}"
    assert [m["kind"] for m in autoscalers(k8s_rendered["default"])] == ["HorizontalPodAutoscaler"]
    assert [m["kind"] for m in autoscalers(k8s_rendered["example"])] == ["ScaledObject"]


def test_every_component_is_rendered_somewhere():
    used = {c for folder in ENTRY_POINTS.values() for c in kustomization_components(folder)}
    used |= {(COMPONENTS / name).resolve() for names in GENERATED_VARIANTS.values() for name in names}
    assert {p.resolve() for p in COMPONENTS.iterdir() if p.is_dir()} == used


def test_no_kustomization_applies_two_autoscalers(k8s_manifests: list[Manifest]):
    # An HPA and a ScaledObject (which makes an HPA of its own) would fight over the replica count.
    assert len(autoscalers(k8s_manifests)) <= 1


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_objects_match_the_kubernetes_schema(k8s_manifests: list[Manifest], version: str):
    for manifest in k8s_manifests:
        if not is_custom(manifest):
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']} at {path}: {exc.message}")


def test_custom_resources_match_their_crds(k8s_manifests: list[Manifest]):
    models = crd_models()
    for manifest in filter(is_custom, k8s_manifests):
        model = models.get((manifest["apiVersion"], manifest["kind"]))
        assert model, f"no CRD model for {manifest['apiVersion']} {manifest['kind']}"
        parsed = model.model_validate(manifest)
        assert parsed.model_dump(by_alias=True, exclude_unset=True, mode="json") == manifest


def test_crd_check_refuses_unknown_fields_and_wrong_types(k8s_rendered: dict[str, list[Manifest]]):
    scaled = one(k8s_rendered["example"], "ScaledObject")
    model = crd_models()[("keda.sh/v1alpha1", "ScaledObject")]
    unknown = {**scaled, "spec": {**scaled["spec"], "minReplicas": 2}}  # the HPA's spelling
    assert model.model_validate(unknown).model_dump(by_alias=True, exclude_unset=True, mode="json") != unknown
    with pytest.raises(ValueError, match="minReplicaCount"):
        model.model_validate({**scaled, "spec": {**scaled["spec"], "minReplicaCount": "two"}})
    with pytest.raises(ValueError, match="scaleTargetRef"):
        model.model_validate({**scaled, "spec": {k: v for k, v in scaled["spec"].items() if k != "scaleTargetRef"}})


def test_every_namespaced_object_is_in_the_rendered_namespace(k8s_manifests: list[Manifest]):
    namespace = one(k8s_manifests, "Namespace")["metadata"]["name"]
    for manifest in k8s_manifests:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"].get("namespace") == namespace, manifest["kind"]


# --- the Deployment ---------------------------------------------------------------------------------------------


def test_probes_use_the_container_port_and_the_open_health_routes(k8s_manifests: list[Manifest]):
    _, _, container = deployment_parts(k8s_manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": IMAGE_PORT}
    found = probes(container)
    assert {name: probe["httpGet"]["path"] for name, probe in found.items()} == {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/livez",
    }
    for probe in found.values():
        port = probe["httpGet"]["port"]
        assert ports.get(port, port) == IMAGE_PORT
        assert "httpHeaders" not in probe["httpGet"]  # open routes: no key in the pod spec


def test_startup_probe_covers_a_slow_model_load(k8s_manifests: list[Manifest]):
    _, _, container = deployment_parts(k8s_manifests)
    startup = container["startupProbe"]
    budget = startup.get("initialDelaySeconds", 0) + startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 4 * SLOWEST_MEASURED_READY_S
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30  # a busy event loop is not a dead one


def test_grace_period_outlasts_the_prestop_sleep_and_the_drain(k8s_manifests: list[Manifest]):
    _, pod, container = deployment_parts(k8s_manifests)
    args = container.get("args", [])
    assert "--timeout-graceful-shutdown" in args, "without it the containerized server's drain has no bound"
    drain = int(args[args.index("--timeout-graceful-shutdown") + 1])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    sleep = int(command[1])
    assert sleep >= 5  # the endpoint must have time to leave the Service
    assert pod["terminationGracePeriodSeconds"] > sleep + drain + EXIT_AFTER_DRAIN_S


def test_torch_threads_equal_the_cpu_limit(k8s_manifests: list[Manifest]):
    _, _, container = deployment_parts(k8s_manifests)
    limit = cpu_cores(container["resources"]["limits"]["cpu"])
    assert limit.is_integer(), "a fractional CPU limit has no thread count equal to it"
    threads = env(container)["TORCH_THREADS"]
    if "value" in threads:
        assert int(threads["value"]) == limit
    else:
        ref = threads["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == "limits.cpu" and str(ref.get("divisor", "1")) == "1"
        assert ref.get("containerName", container["name"]) == container["name"]


def test_resources_cover_the_measured_memory(k8s_manifests: list[Manifest]):
    _, _, container = deployment_parts(k8s_manifests)
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert memory_bytes(requests["memory"]) >= MEASURED_PEAK_MEMORY
    assert memory_bytes(limits["memory"]) >= memory_bytes(requests["memory"])
    assert cpu_cores(limits["cpu"]) >= cpu_cores(requests["cpu"]) >= 1


def test_security_context(k8s_manifests: list[Manifest]):
    _, pod, container = deployment_parts(k8s_manifests)
    pod_context, own = pod.get("securityContext", {}), container.get("securityContext", {})

    def effective(key: str) -> object:
        return own.get(key, pod_context.get(key))

    assert effective("runAsNonRoot") is True
    assert effective("runAsUser") == IMAGE_UID
    assert effective("seccompProfile") == {"type": "RuntimeDefault"}
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"] and not own["capabilities"].get("add")
    assert own["readOnlyRootFilesystem"] is True
    assert pod.get("automountServiceAccountToken") is False


def test_what_the_server_writes_is_on_volumes(k8s_manifests: list[Manifest]):
    # Measured with `docker run --read-only`: BentoML's home (moved under /tmp) and /tmp itself.
    _, pod, container = deployment_parts(k8s_manifests)
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    assert mounts.get("/tmp") in empty_dirs
    home = env(container)["BENTOML_HOME"]["value"]
    assert any(home == path or home.startswith(path.rstrip("/") + "/") for path in mounts), home


def test_env_names_are_settings_the_server_reads(k8s_manifests: list[Manifest]):
    _, _, container = deployment_parts(k8s_manifests)
    names = set(env(container))
    assert not names - SETTINGS_ENV - BENTOML_ENV, "a misspelt setting is silently ignored"
    assert not names & PORT_MOVERS
    literal = {
        name.lower(): item["value"] for name, item in env(container).items() if name in SETTINGS_ENV and "value" in item
    }
    Settings(_env_file=None, auth_disabled=True, **literal)  # within their bounds


def test_api_keys_come_from_the_secret_and_no_placeholder_is_applied(k8s_manifests: list[Manifest]):
    _, _, container = deployment_parts(k8s_manifests)
    assert secret_env_names(container), "the API keys must come from a Secret"
    secret = example_secret()
    for name in secret_env_names(container):
        ref = env(container)[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in example_secret_keys()
        assert not ref.get("optional"), "without keys the server must not start"
    assert not objects(k8s_manifests, "Secret"), "the real Secret is made with kubectl, never rendered"


def test_the_example_secret_is_valid_and_unusable():
    secret = example_secret()
    kubernetes_validate.validate(secret, KUBERNETES_VERSIONS[-1], strict=True)
    assert example_secret_keys() == ["API_KEYS"]
    assert all(not value.strip() for value in secret["stringData"].values()), "no usable key in the repository"
    assert "kubectl -n textgen create secret generic textgen-api-keys" in (K8S / "secret.example.yaml").read_text()


def test_replica_count_is_left_to_the_autoscaler(k8s_manifests: list[Manifest]):
    deployment, _, _ = deployment_parts(k8s_manifests)
    assert "replicas" not in deployment["spec"]


# --- Service, PDB, NetworkPolicy, ServiceMonitor, autoscalers -------------------------------------------------------


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def test_selectors_reach_the_pods_and_ports_the_container(k8s_manifests: list[Manifest]):
    deployment, _, container = deployment_parts(k8s_manifests)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = one(k8s_manifests, "Service")
    assert matches(service["spec"]["selector"], pod_labels)
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        assert port["port"] == container_ports.get(port["targetPort"], port["targetPort"]) == IMAGE_PORT
    assert matches(one(k8s_manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    for policy in objects(k8s_manifests, "NetworkPolicy"):
        assert matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
        for rule in policy["spec"]["ingress"]:
            assert all(container_ports.get(p["port"], p["port"]) == IMAGE_PORT for p in rule["ports"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for monitor in objects(k8s_manifests, "ServiceMonitor"):
        assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports


def test_autoscaler_targets_the_deployment(k8s_manifests: list[Manifest]):
    deployment, _, _ = deployment_parts(k8s_manifests)
    for scaler in autoscalers(k8s_manifests):
        assert scaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "textgen"}
        assert deployment["metadata"]["name"] == "textgen"
        assert scaler["metadata"]["namespace"] == deployment["metadata"]["namespace"]
        spec = scaler["spec"]
        low, high = (
            spec.get("minReplicas", spec.get("minReplicaCount")),
            spec.get("maxReplicas", spec.get("maxReplicaCount")),
        )
        assert 1 <= low <= high


def test_queue_depth_trigger_reads_this_deployment_and_one_wave_of_its_slots(k8s_manifests: list[Manifest]):
    _, _, container = deployment_parts(k8s_manifests)
    service = one(k8s_manifests, "Service")
    for scaled in objects(k8s_manifests, "ScaledObject"):
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "prometheus" and trigger.get("metricType", "AverageValue") == "AverageValue"
        query = trigger["metadata"]["query"]
        assert query_metrics(query) == ["textgen_generations_waiting"]
        assert re.match(r"sum\(", query), "the total over the pods: KEDA divides it by the threshold"
        labels = query_labels(query)
        assert labels == {"namespace": scaled["metadata"]["namespace"], "service": service["metadata"]["name"]}
        assert int(trigger["metadata"]["threshold"]) == max_concurrency(container)
