"""Faults, disconnects, logs and shutdown against a real `bentoml serve`: failures stay with their own request."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.integration.conftest import API_KEY, FAULT_MARKER, FILE_KEY, MODEL_NAME, Server, start_server, wait_ready
from tests.integration.test_server import assert_error
from tests.integration.test_streaming_openai import parse_sse

LONG = {"prompt": "Keep going:", "max_new_tokens": 900, "temperature": 0, "ignore_eos": True}


def greedy(prompt: str, tokens: int) -> dict:
    return {"prompt": prompt, "max_new_tokens": tokens, "temperature": 0, "ignore_eos": True}


def test_an_injected_fault_fails_only_its_own_request(server: Server):
    bodies = [greedy(f"Request number {i} says", 120) for i in range(4)]
    alone = [server.post("/generate", json=body).json()["completion"] for body in bodies]
    with ThreadPoolExecutor(5) as pool:
        batch = [pool.submit(server.post, "/generate", json=body) for body in bodies]
        server.wait_running(4)
        faulty = server.post("/generate", json=greedy(FAULT_MARKER + " and then", 50))  # joins their batch
        responses = [future.result() for future in batch]

    error = assert_error(faulty, 500, "generation_failed")
    assert "Injected" not in faulty.text and "Traceback" not in faulty.text  # no internals for the client
    assert [r.status_code for r in responses] == [200] * 4
    assert [r.json()["completion"] for r in responses] == alone  # the batch it broke lost nothing
    log = server.log_text()
    assert re.search(r"recomputing its [2-5] job\(s\)", log)  # the fault did hit a shared forward pass
    failure = next(json.loads(line) for line in log.splitlines() if error["request_id"] in line and "failed" in line)
    assert failure["level"] == "ERROR" and "InjectedFault" in failure["message"]


def test_an_injected_fault_in_a_stream_ends_it_with_an_error_event(server: Server):
    response = server.post("/generate_stream", json=greedy(FAULT_MARKER, 50))
    assert response.status_code == 200  # headers went out before the fault
    events = parse_sse(response.text)
    assert [e["type"] for e in events[:2]] == ["token", "token"]
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "generation_failed"
    assert server.post("/generate", json=greedy("Still fine", 5)).status_code == 200


def test_a_client_that_drops_a_plain_request_frees_its_slot(server: Server):
    started = time.monotonic()
    try:
        server.post("/generate", json=LONG, timeout=(5, 0.3))  # read timeout: the client hangs up after 0.3 s
        raise AssertionError("the long generation finished within a second; it cannot test a disconnect")
    except requests.ReadTimeout:
        pass
    server.wait_idle(timeout=10)  # freed long before its 900 tokens could have run
    assert time.monotonic() - started < 10
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert re.search(r'textgen_requests_total\{outcome="cancelled"\} [1-9]', metrics), metrics
    assert '"status": 499' in server.log_text()  # the access log says the client went away


def test_logs_are_json_lines_with_request_ids_and_no_keys_or_prompts(server: Server):
    canary, wrong_key = f"CANARY-{uuid.uuid4().hex}", f"wrong-{uuid.uuid4().hex}"
    ok = server.post("/generate", json=greedy(canary, 5))
    assert ok.status_code == 200
    assert server.post("/generate", json={"prompt": canary, "temperature": "hot"}).status_code == 400
    assert server.post("/generate", json={"prompt": canary * 1000}).status_code == 400  # longer than the context
    assert server.post("/v1/completions", json={"model": MODEL_NAME, "prompt": [canary, ""]}).status_code == 400
    assert server.post("/generate", json={"prompt": canary}, key=wrong_key).status_code == 401
    assert server.post("/generate_stream", json=greedy(canary, 5)).status_code == 200
    time.sleep(0.5)  # the access line is written after the response

    log = server.log_text()
    for secret in (API_KEY, FILE_KEY, wrong_key, canary):
        assert secret not in log
    records = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    access = [r for r in records if r.get("request_id") == ok.headers["x-bentoml-request-id"]]
    assert access and access[-1]["logger"] == "bentoml.access"
    assert (access[-1]["path"], access[-1]["status"], access[-1]["method"]) == ("/generate", 200, "POST")
    rejected = [r for r in records if r["message"].startswith("rejected bad request")]
    assert rejected and all("exc_info" not in r and r["level"] == "INFO" for r in rejected)


def test_sigterm_drains_in_flight_requests_then_exits(store_home, tmp_path):
    log = tmp_path / "serve.log"
    process, url = start_server(store_home, log, {"MODEL_TAG": f"{MODEL_NAME}:latest", "API_KEY": API_KEY})
    server = Server(url, process, log, tmp_path / "no-keys-file")
    try:
        wait_ready(process, url, log)
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(server.post, "/generate", json=LONG) for _ in range(3)]
            server.wait_running(3)
            os.killpg(process.pid, signal.SIGTERM)
            responses = [future.result() for future in futures]
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert [r.status_code for r in responses] == [200] * 3
    assert all(r.json()["usage"]["completion_tokens"] == LONG["max_new_tokens"] for r in responses)
    assert "Completed cleanup hook: stop_engine" in log.read_text()
