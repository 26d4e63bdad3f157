"""End to end: the OCI image from scripts/build_image.py, run with docker and probed from the host.

    .venv/bin/pytest -m container tests/e2e -s                               # builds the image first (minutes)
    TEXTGEN_IMAGE=textgen:latest .venv/bin/pytest -m container tests/e2e -s  # reuses a built image

Needs a Docker engine (scripts/docker_engine.sh). The image is built offline with random weights;
extra CA certificates come from TEXTGEN_EXTRA_CA, else /usr/local/share/ca-certificates when it has
any (a TLS-intercepting proxy's CA must be in the image for pip and uv to reach PyPI).
The port is published on 127.0.0.1 only. Tests run in file order: the SIGTERM test stops the container.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from tests.e2e.docker_support import ROOT, docker, free_loopback_port, logs_of

pytestmark = pytest.mark.container

API_KEY = secrets.token_urlsafe(24)  # given at `docker run` only: the image has no key
READY_TIMEOUT_S = 180
SIZE_TARGET_BYTES = 1.5e9
READY_TARGET_S = float(os.environ.get("TEXTGEN_READY_TARGET_S", "20"))
CONCURRENCY_LIMIT = 5


@dataclass
class Container:
    name: str
    url: str
    image: str
    ready_s: float
    load_per_cpu: float  # 1-minute load average per CPU just before `docker run`


def auth(key: str = API_KEY) -> dict[str, str]:
    return {"x-api-key": key}


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Container]:
    name = f"textgen-e2e-{secrets.token_hex(4)}"
    port = free_loopback_port()
    load_per_cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    started = time.monotonic()
    # Config comes from env vars at `docker run`; a long queue timeout keeps a busy shared CPU from failing waits.
    env = {"API_KEY": API_KEY, "QUEUE_TIMEOUT_S": "600"}
    docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:3000", *(f"-e{k}={v}" for k, v in env.items()), image)
    try:
        url = f"http://127.0.0.1:{port}"
        ready_s = wait_ready(url, name, started)
        measured = {"image_size_bytes": image_size(image), "docker_run_to_ready_s": round(ready_s, 2)}
        report({"image": image, **measured, "load_per_cpu_before_run": round(load_per_cpu, 2)})
        yield Container(name, url, image, ready_s, load_per_cpu)
    finally:
        docker("rm", "-f", name, check=False)


def wait_ready(url: str, name: str, started: float) -> float:
    while time.monotonic() - started < READY_TIMEOUT_S:
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:  # docker-proxy accepts before the server listens
            pass
        state = docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
        assert state == "true", f"container exited before ready:\n{logs_of(name)[-3000:]}"
        time.sleep(0.1)
    pytest.fail(f"not ready within {READY_TIMEOUT_S} s:\n{logs_of(name)[-3000:]}")


def image_size(image: str) -> int:
    return int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout)


def report(measured: dict[str, object]) -> None:
    print(f"\ncontainer measurements: {json.dumps(measured)}")
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build/container-measurements.json").write_text(json.dumps(measured, indent=2) + "\n")


def test_image_size_within_target(container: Container) -> None:
    size = image_size(container.image)
    assert size < SIZE_TARGET_BYTES, f"image is {size / 1e9:.2f} GB"


def test_ready_time_within_target(container: Container) -> None:
    if container.load_per_cpu > 1.0:
        # A start time says nothing about the image when other work already fills every CPU.
        pytest.skip(f"CPUs busy (load {container.load_per_cpu:.1f}/CPU): ready after {container.ready_s:.1f} s")
    assert container.ready_s < READY_TARGET_S, f"ready after {container.ready_s:.1f} s"


def test_image_bakes_in_no_key(container: Container) -> None:
    env = json.loads(docker("image", "inspect", "-f", "{{json .Config.Env}}", container.image).stdout)
    names = {e.split("=", 1)[0] for e in env}
    assert not names & {"API_KEY", "API_KEYS", "API_KEYS_FILE", "AUTH_DISABLED"}
    assert docker("exec", container.name, "test", "-e", "/home/bentoml/bento/src/.env", check=False).returncode != 0


def test_health_is_open(container: Container) -> None:
    r = requests.get(f"{container.url}/health", timeout=5)
    assert r.status_code == 200
    body = r.json()
    assert body["model_loaded"] is True
    assert body["generations"]["limit"] == CONCURRENCY_LIMIT


def test_model_info_needs_key_and_shows_the_packed_model(container: Container) -> None:
    assert requests.get(f"{container.url}/model-info", timeout=5).status_code == 401
    r = requests.get(f"{container.url}/model-info", headers=auth(), timeout=5)
    assert r.status_code == 200
    info = r.json()
    env = json.loads(docker("image", "inspect", "-f", "{{json .Config.Env}}", container.image).stdout)
    assert f"MODEL_TAG={info['tag']}" in env  # the model `bentoml build` packed, by name and version
    if info["tag"].startswith("distilgpt2-random:"):
        assert info["labels"]["weights"] == "random"
    assert info["architecture"] == "GPT2LMHeadModel"
    assert info["device"] == "cpu"


@pytest.mark.parametrize("headers", [auth(), {"Authorization": f"Bearer {API_KEY}"}], ids=["x-api-key", "bearer"])
def test_generate_with_key(container: Container, headers: dict[str, str]) -> None:
    body = {"prompt": "The container says", "max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
    r = requests.post(f"{container.url}/generate", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["completion"]
    assert out["generated_text"] == body["prompt"] + out["completion"]
    assert out["finish_reason"] == "length"
    usage = out["usage"]
    assert usage["completion_tokens"] == 12
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("headers", [{}, auth("not-the-key")], ids=["no-key", "wrong-key"])
def test_generate_without_valid_key_is_401(container: Container, headers: dict[str, str]) -> None:
    r = requests.post(f"{container.url}/generate", json={"prompt": "hi"}, headers=headers, timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "unauthorized"


def test_concurrency_limit_queues_the_rest(container: Container) -> None:
    n_requests, tokens = 10, 48
    body = {"prompt": "Count with me:", "max_new_tokens": tokens, "ignore_eos": True}
    seen: list[dict[str, int]] = []
    done = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 300  # bounded even if requests hang
        while not done.is_set() and time.monotonic() < deadline:
            seen.append(requests.get(f"{container.url}/health", timeout=5).json()["generations"])
            time.sleep(0.05)

    def generate(_: int) -> requests.Response:
        return requests.post(f"{container.url}/generate", json=body, headers=auth(), timeout=300)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(n_requests) as pool:
            responses = list(pool.map(generate, range(n_requests)))
    finally:
        done.set()
        watcher.join()

    assert [r.status_code for r in responses] == [200] * n_requests
    assert all(r.json()["usage"]["completion_tokens"] == tokens for r in responses)
    assert max(s["running"] for s in seen) == CONCURRENCY_LIMIT  # the limit was reached ...
    assert all(s["running"] <= CONCURRENCY_LIMIT for s in seen)  # ... and never passed
    assert max(s["waiting"] for s in seen) >= 1  # the rest queued instead of failing
    # The queued ones waited about as long as a generation takes: for a slot, not for a batch step.
    timings = [r.json()["timings"] for r in responses]
    longest_waits = sorted(t["queue_ms"] for t in timings)[CONCURRENCY_LIMIT:]
    assert min(longest_waits) > 0.5 * min(t["inference_ms"] for t in timings)


def test_runs_as_non_root_user(container: Container) -> None:
    uid = docker("exec", container.name, "id", "-u").stdout.strip()
    assert uid.isdigit() and int(uid) != 0


def test_sigterm_stops_cleanly(container: Container) -> None:
    """Runs last: `docker stop` sends SIGTERM; BentoML runs the shutdown hooks and exits 0 well before SIGKILL."""
    started = time.monotonic()
    docker("stop", "-t", "10", container.name, timeout=60)
    elapsed = time.monotonic() - started
    exit_code = int(docker("inspect", "-f", "{{.State.ExitCode}}", container.name).stdout)
    logs = logs_of(container.name)
    print(f"\ndocker stop took {elapsed:.1f} s, exit code {exit_code}")
    assert elapsed < 8, "not stopped by SIGTERM: docker waited for the timeout and sent SIGKILL"
    assert exit_code == 0  # 143 would mean SIGTERM killed it without a graceful shutdown
    assert "Running cleanup hook: stop_engine" in logs
