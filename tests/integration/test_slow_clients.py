"""Slow and idle clients against a real `bentoml serve`: stalled bodies and heads get 408 and lose their
connection, idle connections close, over-long heads are refused, and 300 stalled sockets cost the other
clients nothing (generations succeed, /health p99 under 50 ms)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.integration.conftest import API_KEY, MODEL_NAME, NAMED_KEYS, SHORT_TIMEOUT_S, Server, served
from textgen_bench.common.client import HealthProbe
from textgen_bench.common.records import Distribution
from textgen_bench.soak.stalled import StalledSockets, answer_of, stalled_bytes

KEY = NAMED_KEYS["trickle"]


def address(server: Server) -> tuple[str, int]:
    parts = urlsplit(server.url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def stall(server: Server, kind: str) -> tuple[bytes, float, bytes]:
    """Open a socket, send `kind`'s partial request, wait: (what came back, seconds until the server closed, the
    bytes after the first read: b"" once closed)."""
    host, port = address(server)
    with socket.create_connection((host, port), timeout=SHORT_TIMEOUT_S * 5) as sock:
        sock.sendall(stalled_bytes(kind, host, KEY))
        started = time.monotonic()
        data = sock.recv(65536)
        while data and not data.endswith(b"}") and b"\r\n\r\n" in data:  # the rest of the body, if split
            if not (more := sock.recv(65536)):
                break
            data += more
        waited = time.monotonic() - started
        after = sock.recv(65536)
    return data, waited, after


def error_of(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]


def test_a_stalled_body_gets_408_within_the_body_timeout_and_loses_its_connection(keyed_server: Server):
    data, waited, after = stall(keyed_server, "body")
    assert answer_of(data) == "408", data[:200]
    assert SHORT_TIMEOUT_S - 0.2 <= waited <= SHORT_TIMEOUT_S + 2
    assert error_of(data)["type"] == "request_timeout" and error_of(data)["request_id"]
    assert b"connection: close" in data.lower()
    assert after == b""  # closed


def test_the_body_deadline_is_total_not_per_read(keyed_server: Server):
    """A byte every 0.3 s never leaves a read waiting 2 s; it still gets 408 at the deadline."""
    host, port = address(keyed_server)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(stalled_bytes("body", host, KEY))
        started = time.monotonic()
        sock.settimeout(0.3)
        data = b""
        while not data and time.monotonic() - started < SHORT_TIMEOUT_S * 4:
            try:
                sock.sendall(b" ")
                data = sock.recv(65536)
            except TimeoutError:
                continue
        waited = time.monotonic() - started
    assert answer_of(data) == "408", data[:200]
    assert waited <= SHORT_TIMEOUT_S + 2


def test_a_stalled_head_gets_408_and_an_idle_connection_is_closed(keyed_server: Server):
    data, waited, after = stall(keyed_server, "head")
    assert answer_of(data) == "408", data[:200]
    assert error_of(data)["type"] == "request_timeout"
    assert SHORT_TIMEOUT_S - 0.2 <= waited <= SHORT_TIMEOUT_S + 2 and after == b""

    data, waited, _ = stall(keyed_server, "idle")
    assert data == b"" and waited <= SHORT_TIMEOUT_S + 2  # closed without a word


def test_a_keep_alive_connection_still_serves_its_requests(keyed_server: Server):
    with requests.Session() as session:
        for _ in range(3):
            assert session.get(keyed_server.url + "/health", timeout=10).status_code == 200


def test_an_over_long_head_is_refused_with_a_4xx(keyed_server: Server):
    response = requests.get(keyed_server.url + "/health", headers={"x-padding": "a" * 16_000}, timeout=10)
    assert response.status_code == 431
    assert response.json()["error"]["type"] == "headers_too_large"
    assert keyed_server.get("/health", key=None).status_code == 200  # and the server is fine


@pytest.fixture(scope="module")
def default_bounds_server(store_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the default client bounds (5 s idle, 10 s head, 30 s body), as an attacker would meet it."""
    env = {"MODEL_TAG": f"{MODEL_NAME}:latest", "API_KEY": API_KEY, "QUEUE_TIMEOUT_S": "600"}
    with served(store_home, tmp_path_factory.mktemp("default-bounds"), env) as running:
        yield running


def test_300_stalled_sockets_cost_the_other_clients_nothing(default_bounds_server: Server):
    """300 sockets stalled (idle, half a head, half a body; replaced when closed) while three clients generate
    for 10 s: every generation succeeds and /health p99, from a process of its own, stays under 50 ms."""
    server = default_bounds_server
    host, port = address(server)
    sockets = StalledSockets(host, port, count=300, api_key=API_KEY)
    results: list[tuple[int, str]] = []

    def generate() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            body = {"prompt": "Once upon a time", "max_new_tokens": 16, "ignore_eos": True}
            response = server.post("/generate", key=API_KEY, json=body)
            results.append((response.status_code, response.json().get("finish_reason", response.text)))

    probe = HealthProbe(server.url, interval_s=0.05)
    with sockets.running() as stats:
        sockets.wait_open()
        with probe.running():
            clients = [threading.Thread(target=generate) for _ in range(3)]
            for client in clients:
                client.start()
            for client in clients:
                client.join(60)
    health = probe.result()

    assert stats.peak_open >= 300
    assert results and all(r == (200, "length") for r in results), results[:5]
    assert health.failures == 0 and len(health.latencies_ms) > 50
    p99 = Distribution.of(health.latencies_ms).p99
    print(f"/health p99 {p99:.1f} ms over {len(health.latencies_ms)} probes; {len(results)} generations; {stats}")
    assert p99 < 50, f"/health p99 {p99:.1f} ms with 300 stalled sockets"
    # The server closed them within its bounds (idle ones after 5 s, heads after 10 s), the stalled ones with a
    # 408; none was answered otherwise. (Bodies stall for 30 s: their 408 is tested above with short bounds.)
    assert stats.answers["idle:closed"] > 0, stats.answers
    assert set(stats.answers) <= {"body:408", "head:408", "idle:closed"}, stats.answers
