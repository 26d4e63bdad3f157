"""The soak runner's pure parts: how answers are classified, back-off, the mix, checks and the table."""

from __future__ import annotations

import random

import pytest

from textgen_bench.common.records import Distribution, MachineInfo
from textgen_bench.soak.mix import DEFAULT_MIX, backoff_s, parse_mix, without_faults
from textgen_bench.soak.records import Attempt, Memory, SlotState, SoakConfig, SoakReport, summarise_attempts
from textgen_bench.soak.report import check_soak, format_soak
from textgen_bench.soak.verdicts import classify_response, classify_stream_end


def err(error_type: str) -> dict:
    return {"error": {"type": error_type, "message": "m", "request_id": "abc"}}


DONE = {"completion": " x", "usage": {"completion_tokens": 16}}


@pytest.mark.parametrize(
    ("kind", "status", "body", "retry_after", "outcome"),
    [
        ("generate", 200, DONE, None, "ok"),
        ("generate", 200, {**DONE, "usage": {"completion_tokens": 3}}, None, "error"),  # cut short
        ("generate", 429, err("overloaded"), "1", "rejected"),
        ("stream", 503, err("queue_timeout"), "5", "rejected"),  # a stream refused before it started
        ("generate", 429, err("overloaded"), None, "error"),  # no Retry-After
        ("generate", 429, {"detail": "busy"}, "1", "error"),  # not the structured shape
        ("generate", 503, err("internal_error"), "1", "error"),
        ("fault", 500, err("generation_failed"), None, "fault_failed"),
        ("fault", 200, DONE, None, "error"),  # the fault did not fire
        ("fault_stream", 500, err("generation_failed"), None, "error"),  # a stream must fail in-stream, after 200
        ("generate", 500, err("generation_failed"), None, "error"),  # someone else's fault leaked
        ("generate", 500, {"error": {"type": "internal_error", "message": "m"}}, None, "error"),  # no request_id
    ],
)
def test_classify_response(kind, status, body, retry_after, outcome) -> None:
    assert classify_response(kind, status, body, retry_after, max_new_tokens=16).outcome == outcome


@pytest.mark.parametrize(
    ("kind", "last_event", "outcome"),
    [
        ("stream", {"type": "done", **DONE}, "ok"),
        ("stream", None, "lost"),  # cut before its last event
        ("fault_stream", {"type": "error", **err("generation_failed")}, "fault_failed"),
        ("stream", {"type": "error", **err("generation_failed")}, "error"),
        ("fault_stream", {"type": "error", **err("internal_error")}, "error"),
        ("fault_stream", {"type": "done", **DONE}, "error"),
    ],
)
def test_classify_stream_end(kind, last_event, outcome) -> None:
    assert classify_stream_end(kind, last_event, max_new_tokens=16).outcome == outcome


def test_backoff_honours_retry_after_with_jitter_and_a_cap() -> None:
    rng = random.Random(0)
    waits = [backoff_s("2", 1, rng, cap_s=5.0) for _ in range(200)]
    assert min(waits) >= 2.0 and max(waits) <= 3.0  # at least what the server asked, at most +50 %
    assert max(waits) - min(waits) > 0.5  # spread out, not in lockstep
    assert backoff_s("60", 1, rng, cap_s=5.0) <= 7.5
    assert backoff_s("Wed, 21 Oct 2026 07:28:00 GMT", 1, rng, cap_s=5.0, jitter=0) == 0.1


def test_backoff_without_retry_after_doubles_per_rejection_in_a_row() -> None:
    rng = random.Random(0)
    assert [backoff_s(None, n, rng, cap_s=1.0, jitter=0) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]


def test_mix_parsing_normalises_and_faults_can_be_turned_off() -> None:
    mix = parse_mix("generate=3,fault=1")
    assert mix["generate"] == 0.75 and mix["fault"] == 0.25 and mix["stream"] == 0
    assert without_faults(mix)["generate"] == 1.0
    assert sum(DEFAULT_MIX.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown request kind"):
        parse_mix("generate=1,chat=1")
    with pytest.raises(ValueError):
        parse_mix("fault=0")


def _report(attempts: list[Attempt], memory: Memory | None, freed_after_s: float | None = 0.2) -> SoakReport:
    report = SoakReport(
        started_at="2026-11-23T12:00:00",
        config=SoakConfig(
            command="python scripts/soak.py",
            model_tag="distilgpt2-random:abc",
            model_source="random (seed 0, ...)",
            limit=5,
            max_queue=64,
            queue_timeout_s=10,
            clients=276,
            duration_s=60,
            mix=dict(DEFAULT_MIX),
            fault_marker="__inject_fault__",
            request_timeout_s=70,
            health_interval_s=0.1,
        ),
        machine=MachineInfo(
            cpu_count=2, torch_threads=2, torch_version="2", platform="x", python="3.11", load_avg_at_start=(0, 0, 0)
        ),
        counts=summarise_attempts(attempts),
        latency_s=Distribution.of([a.latency_s for a in attempts if a.outcome == "ok"]),
        health_ms=Distribution.of([2.0, 3.0, 4.0]),
        health_failures=0,
        slots=SlotState(peak_running=5, peak_waiting=64, freed_after_s=freed_after_s),
        memory=memory,
    )
    report.checks = check_soak(report)
    return report


ATTEMPTS = [
    Attempt("generate", "ok", 1.0, 200),
    Attempt("stream", "ok", 2.0, 200),
    Attempt("generate", "rejected", 0.01, 429),
    Attempt("fault", "rejected", 0.01, 429),
    Attempt("stream", "rejected", 10.0, 503),
    Attempt("disconnect_stream", "disconnected", 0.5, 200),
    Attempt("fault_stream", "fault_failed", 0.3, 200),
]


def test_a_clean_run_passes_and_its_table_counts_every_request() -> None:
    report = _report(ATTEMPTS, Memory(before_mib=1000, peak_mib=1030, after_mib=1020))
    assert report.passed, report.checks
    table = format_soak(report)
    assert "RANDOM weights" in table and "2 CPU cores" in table
    for row in (
        "| requests sent | 7 |",
        "| succeeded | 2 (generate 1, stream 1) |",
        "| rejected (clean, with Retry-After) | 429: 2, 503: 1 |",
        "| intentional disconnects | 1 (mid-stream 1) |",
        "| injected faults | 2 sent: 1 failed with `generation_failed` (expected), 1 rejected before admission |",
        "| **lost** | **0** |",
        "| RSS growth | +20.0 MiB (+2.0 %) |",
    ):
        assert row in table


def test_lost_requests_errors_slot_leaks_and_memory_growth_fail_the_run() -> None:
    bad = [*ATTEMPTS, Attempt("generate", "lost", 70.0, None, "ReadError"), Attempt("stream", "error", 1.0, 500, "x")]
    report = _report(bad, Memory(before_mib=1000, peak_mib=1200, after_mib=1150), freed_after_s=None)
    assert not report.passed
    missed = {check.name for check in report.checks if check.verdict == "MISS"}
    assert missed == {
        "no request lost",
        "no errors",
        "slots within bounds, all free after the load",
        "server RSS growth <= 10 %",
    }
    assert "- 1 x lost: generate: ReadError" in format_soak(report)
