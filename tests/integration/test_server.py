"""Real HTTP against a real `bentoml serve`: health, model info, generation, auth, errors, the limit."""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import bentoml
import pytest
import requests
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.integration.conftest import API_KEY, FILE_KEY, MODEL_NAME, Server, start_server, stop, wait_ready


def assert_error(response: requests.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["request_id"]
    return error


def test_health_is_open_and_reports_the_model(server: Server):
    body = server.get("/health", key=None).json()
    assert body["status"] == "ok"
    assert body["model_loaded"] is True
    assert body["generations"] == {"running": 0, "waiting": 0, "limit": 5, "max_queue": 8}
    assert body["uptime_s"] > 0


def test_probes_and_metrics_are_open(server: Server):
    for path in ("/livez", "/readyz"):
        assert server.get(path, key=None).status_code == 200
    metrics = server.get("/metrics", key=None)
    assert metrics.status_code == 200
    assert "textgen_model_loaded 1.0" in metrics.text


def test_metrics_count_a_generation(server: Server):
    from prometheus_client.parser import text_string_to_metric_families

    def samples() -> dict[str, float]:
        text = server.get("/metrics", key=None).text
        return {
            s.name + str(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            if family.name.startswith("textgen_")
            for s in family.samples
        }

    before = samples()
    response = server.post("/generate", json={"prompt": "Count", "max_new_tokens": 7, "ignore_eos": True})
    assert response.status_code == 200
    after = samples()
    moved = {name for name, value in after.items() if value > before.get(name, 0)}
    for name in [
        "textgen_requests_total[('outcome', 'ok')]",
        "textgen_queue_wait_seconds_count[]",
        "textgen_generation_seconds_count[]",
        "textgen_time_to_first_token_seconds_count[]",
        "textgen_inter_token_latency_seconds_count[]",
        "textgen_generation_tokens_per_second_count[]",
        "textgen_batch_size_count[]",
    ]:
        assert name in moved, name
    assert after["textgen_generated_tokens_total[]"] - before.get("textgen_generated_tokens_total[]", 0) == 7
    assert {"textgen_generations_running[]", "textgen_generations_waiting[]"} <= after.keys()


def test_model_info_needs_a_key_and_tells_provenance(server: Server, tiny_model_dir):
    assert_error(server.get("/model-info", key=None), 401, "unauthorized")
    info = server.get("/model-info").json()
    assert info["tag"].startswith(f"{MODEL_NAME}:")
    assert info["source"] == f"local:{tiny_model_dir.resolve()}"
    assert info["architecture"] == "GPT2LMHeadModel"
    assert info["context_length"] == 1024
    assert (info["dtype"], info["device"]) == ("float32", "cpu")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())


def test_greedy_generation_equals_transformers_generate(server: Server, tiny_model_dir):
    prompt = "The meaning of life is"
    response = server.post("/generate", json={"prompt": prompt, "max_new_tokens": 24, "temperature": 0})
    assert response.status_code == 200, response.text
    body = response.json()

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    new_ids = out[0, ids.shape[1] :].tolist()
    expected = tokenizer.decode(new_ids, skip_special_tokens=True)

    assert body["completion"] == expected
    assert body["generated_text"] == prompt + expected
    assert body["usage"] == {"prompt_tokens": ids.shape[1], "completion_tokens": 24, "total_tokens": ids.shape[1] + 24}
    assert body["finish_reason"] == "length"
    assert body["model"].startswith(f"{MODEL_NAME}:")
    assert set(body["timings"]) == {"queue_ms", "time_to_first_token_ms", "inference_ms", "total_ms"}
    assert response.headers["x-bentoml-request-id"]


def test_curl_style_json_without_content_type(server: Server):
    headers = {"content-type": "application/x-www-form-urlencoded"}  # what `curl -d` sends
    response = server.post("/generate", data=b'{"prompt": "Hi", "max_new_tokens": 3}', headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3


def test_bentoml_python_client_with_token(server: Server):
    with bentoml.SyncHTTPClient(server.url, token=API_KEY) as client:
        result = client.generate(prompt="Hello", max_new_tokens=5, temperature=0)
    direct = server.post("/generate", json={"prompt": "Hello", "max_new_tokens": 5, "temperature": 0}).json()
    assert result["completion"] == direct["completion"]
    assert result["usage"]["completion_tokens"] == 5


def test_seeded_sampling_is_reproducible_over_http(server: Server):
    body = {"prompt": "Once", "max_new_tokens": 12, "temperature": 0.9, "top_p": 0.95, "seed": 42, "ignore_eos": True}
    first = server.post("/generate", json=body).json()["completion"]
    assert server.post("/generate", json=body).json()["completion"] == first


def test_stop_strings_over_http(server: Server):
    full = server.post("/generate", json={"prompt": "Hi", "max_new_tokens": 30, "temperature": 0, "ignore_eos": True})
    text = full.json()["completion"]
    stop = text[10:13]
    cut = server.post("/generate", json={"prompt": "Hi", "max_new_tokens": 30, "temperature": 0, "stop": [stop]})
    assert cut.json()["finish_reason"] == "stop"
    assert cut.json()["completion"] == text[: text.find(stop)]


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({}, False),
        ({"x-api-key": "wrong"}, False),
        ({"Authorization": "Bearer wrong"}, False),
        ({"Authorization": f"Basic {API_KEY}"}, False),
        ({"x-api-key": API_KEY}, True),
        ({"Authorization": f"Bearer {API_KEY}"}, True),
        ({"x-api-key": FILE_KEY}, True),
    ],
)
def test_auth_cases_on_generate(server: Server, headers: dict, ok: bool):
    response = server.post("/generate", key=None, headers=headers, json={"prompt": "x", "max_new_tokens": 1})
    if ok:
        assert response.status_code == 200
    else:
        error = assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert API_KEY not in response.text and FILE_KEY not in response.text
        assert "key" in error["message"]


def test_every_route_but_the_open_ones_needs_a_key(server: Server):
    """Routes are enumerated from the running app's OpenAPI document and the mounted app, so a new one is covered."""
    from textgen.api.middleware.auth import is_open_path
    from textgen.api.openai.handlers import OpenAIHandlers
    from textgen.api.quota import QuotaBook
    from textgen.api.routes import build_routes_app
    from textgen.config import Settings
    from textgen.serving.runtime import ModelRuntime

    documented = {
        (method.upper(), path)
        for path, operations in server.get("/docs.json").json()["paths"].items()
        for method in operations
    }
    settings = Settings(_env_file=None, auth_disabled=True)
    runtime = ModelRuntime(settings)
    app = build_routes_app(runtime, OpenAIHandlers(runtime), QuotaBook(settings.limits_for))
    mounted = {(m, r.path) for r in app.routes for m in r.methods if m != "HEAD"}
    routes = documented | mounted
    assert ("POST", "/generate") in routes and ("GET", "/v1/models") in routes and ("GET", "/v1/usage") in routes
    for method, path in sorted(routes):
        response = requests.request(method, server.url + path, json={}, timeout=30)
        if is_open_path(path, settings.open_paths()):  # the probes, /metrics and the docs
            assert response.status_code != 401, path
        else:
            assert response.status_code == 401, (method, path, response.status_code)


def test_keys_file_rotates_without_restart(server: Server):
    server.keys_file.write_text("rotated-key-0123456789\n")
    try:
        assert server.get("/model-info", key="rotated-key-0123456789").status_code == 200
        assert server.get("/model-info", key=FILE_KEY).status_code == 401
        assert server.get("/model-info", key=API_KEY).status_code == 200  # keys from settings stay
    finally:
        server.keys_file.write_text(FILE_KEY + "\n")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_new_tokens": 3}, "prompt"),
        ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "bogus": 1}, "bogus"),
        ({"prompt": ["not", "a", "string"]}, "prompt"),
    ],
)
def test_validation_errors_name_the_field(server: Server, body: dict, field: str):
    error = assert_error(server.post("/generate", json=body), 400, "validation_error")
    assert error["field"] == field


def test_malformed_json_oversized_body_and_long_prompt(server: Server):
    assert_error(
        server.post("/generate", data=b'{"prompt": "x",', headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    assert_error(server.post("/generate", json={"prompt": "x" * 70_000}), 413, "payload_too_large")
    error = assert_error(
        server.post("/generate", json={"prompt": " hello" * 1000, "max_new_tokens": 100}),
        400,
        "context_length_exceeded",
    )
    assert "1000 tokens" in error["message"] and "100" in error["message"] and "1024" in error["message"]
    assert server.get("/health", key=None).status_code == 200  # nothing broke


def test_unknown_route_gets_the_error_shape(server: Server):
    assert_error(server.get("/nope"), 404, "not_found")


class HealthPoller:
    """Polls /health while a load runs, recording load figures and latency."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.samples: list[dict] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            body = self.server.get("/health", key=None).json()
            self.latencies.append(time.perf_counter() - started)
            self.samples.append(body["generations"])
            time.sleep(0.05)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


SLOW = {"prompt": "Count with me:", "max_new_tokens": 300, "temperature": 0, "ignore_eos": True}


def test_concurrency_limit_queues_the_rest_and_health_stays_fast(server: Server):
    with HealthPoller(server) as poller, ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: server.post("/generate", json=SLOW), range(12)))
    assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses if r.status_code != 200]
    assert all(r.json()["usage"]["completion_tokens"] == 300 for r in responses)
    assert max(s["running"] for s in poller.samples) == 5  # full, never over
    assert max(s["waiting"] for s in poller.samples) >= 5
    queued = sorted(r.json()["timings"]["queue_ms"] for r in responses)
    assert queued[-1] > 10 * max(queued[0], 1.0)  # late arrivals waited for a slot
    assert statistics.median(poller.latencies) < 0.25
    assert max(poller.latencies) < 2.0


def test_past_the_queue_requests_get_429_with_retry_after(server: Server):
    with ThreadPoolExecutor(16) as pool:  # 5 running + 8 waiting fit; 3 do not
        responses = list(pool.map(lambda _: server.post("/generate", json=SLOW), range(16)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 13 and codes.count(429) == 3, codes
    rejected = next(r for r in responses if r.status_code == 429)
    assert_error(rejected, 429, "overloaded")
    assert rejected.headers["retry-after"]


def test_start_is_refused_without_a_key(store_home, tmp_path):
    log = tmp_path / "serve.log"
    process, _ = start_server(store_home, log, {"MODEL_TAG": f"{MODEL_NAME}:latest"})
    try:
        process.wait(60)  # the command ends (TimeoutExpired otherwise) instead of restarting workers forever
        assert "no API key configured" in log.read_text()
    finally:
        stop(process)


def test_missing_model_tag_names_the_import_command(store_home, tmp_path):
    log = tmp_path / "serve.log"
    process, _ = start_server(store_home, log, {"MODEL_TAG": "not-there:latest", "API_KEY": API_KEY})
    try:
        process.wait(60)
        text = log.read_text()
        assert "not-there:latest" in text and "scripts/import_model.py" in text
    finally:
        stop(process)


def test_disabled_auth_serves_openly_and_says_so(store_home, tmp_path):
    log = tmp_path / "serve.log"
    process, url = start_server(store_home, log, {"MODEL_TAG": f"{MODEL_NAME}:latest", "AUTH_DISABLED": "true"})
    try:
        wait_ready(process, url, log)
        assert requests.get(url + "/model-info", timeout=10).status_code == 200
        assert "AUTH_DISABLED=true" in log.read_text()
    finally:
        stop(process)
