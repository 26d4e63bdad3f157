"""scripts/soak.py end to end: a real `bentoml serve` under looping clients, disconnects and injected faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.conftest import MODEL_NAME


def run_soak(tmp_path: Path, env: dict[str, str], *args: str, timeout_s: float) -> tuple[dict, str]:
    """Runs the script (it starts and stops its own server); returns its JSON results and its output."""
    command = [sys.executable, "scripts/soak.py", "--out-dir", str(tmp_path), "--name", "test", *args]
    run = subprocess.run(
        command, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout_s
    )
    results = tmp_path / "soak-test.json"
    assert results.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(results.read_text()), run.stdout


def assert_nothing_lost(report: dict, output: str) -> None:
    counts = report["counts"]
    assert counts["lost"] == 0 and counts["errors"] == 0, output
    assert set(counts["rejected"]) <= {"429", "503"}, counts["rejected"]
    assert counts["succeeded"] > 0 and counts["disconnected"] > 0, output
    assert counts["faults_failed_as_expected"] > 0, output  # faults fired, and failed only their own request
    slots = report["slots"]
    assert slots["freed_after_s"] is not None and slots["freed_after_s"] < 5, slots
    assert slots["peak_running"] <= report["config"]["limit"]
    assert slots["peak_waiting"] <= report["config"]["max_queue"]


def assert_flood_and_stalled_sockets_handled(report: dict, output: str, sockets: int) -> None:
    flood = report["flood"]
    assert flood["lost"] == 0 and flood["errors"] == 0, output  # every flooding request answered cleanly
    assert flood["rejected"].get("429", 0) > 0, output  # its own limit held it
    stalled = report["stalled"]
    assert stalled["peak_open"] >= sockets and stalled["connect_failures"] == 0, output
    assert set(stalled["answers"]) <= {"body:408", "head:408", "idle:closed"}, output


def test_a_short_soak_loses_nothing_and_frees_every_slot(store_home: Path, tmp_path: Path):
    # The tiny model, 2 slots and a queue of 4: 24 clients keep it full and overflowing for 10 s, while a
    # second key (1 request in flight) floods from 4 clients and 30 sockets stall (2 s body/head/idle bounds).
    # /health latency and RSS are reported but asserted only in the slow full run: a shared CI box skews them.
    args = ["--model-tag", f"{MODEL_NAME}:latest", "--max-concurrency", "2", "--max-queue", "4"]
    args += ["--queue-timeout", "2", "--duration", "10"]
    args += ["--flood-clients", "4", "--flood-concurrency", "1", "--stalled-sockets", "30"]
    env = {"BENTOML_HOME": str(store_home), "BODY_TIMEOUT_S": "2", "HEADER_TIMEOUT_S": "2", "KEEPALIVE_TIMEOUT_S": "2"}
    report, output = run_soak(tmp_path, env, *args, timeout_s=180)
    assert_nothing_lost(report, output)
    assert report["config"]["clients"] == 4 * (2 + 4)
    assert report["counts"]["rejected"].get("429", 0) > 0, output  # the overflow was refused, not queued forever
    assert "| **lost** | **0** |" in output
    assert_flood_and_stalled_sockets_handled(report, output, 30)
    assert report["stalled"]["answers"].get("body:408", 0) > 0, output  # the 2 s bounds closed them


@pytest.mark.slow
def test_a_full_minute_soak_of_distilgpt2_random_passes_every_check(tmp_path: Path):
    """The README's run: 5 slots, queue 64, 276 clients for 60 s; the model is imported if the store lacks it."""
    report, output = run_soak(tmp_path, {}, timeout_s=900)
    assert_nothing_lost(report, output)
    failed = [check for check in report["checks"] if check["verdict"] != "PASS"]
    assert not failed, output  # /health p99 < 50 ms and RSS growth <= 10 % included


@pytest.mark.slow
def test_a_minute_with_a_flooding_key_and_300_stalled_sockets_loses_no_accepted_request(tmp_path: Path):
    """The same minute, while a second key (2 in flight) floods from 24 clients that ignore Retry-After and
    300 sockets stall (idle, half a head, half a body) under the default bounds (5 s idle, 10 s head, 30 s body)."""
    report, output = run_soak(tmp_path, {}, "--flood-clients", "24", "--stalled-sockets", "300", timeout_s=900)
    print(output)
    assert_nothing_lost(report, output)
    assert_flood_and_stalled_sockets_handled(report, output, 300)
    # Every check but /health p99, which is reported, not asserted here: the flood's ~90 refusals a second are
    # generated on the server's own 2 cores (51-73 ms measured with another user on them, against 18 ms for the
    # plain minute). The 300 stalled sockets alone keep it under 50 ms: tests/integration/test_slow_clients.py.
    failed = [c for c in report["checks"] if c["verdict"] != "PASS" and not c["name"].startswith("/health")]
    assert not failed, output
