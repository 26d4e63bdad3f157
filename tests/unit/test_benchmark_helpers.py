"""The benchmark's pure helpers: statistics, summaries, targets and report text (no servers, no model)."""

from __future__ import annotations

import math

import pytest

from textgen_bench.benchmark.load import arrival_delays
from textgen_bench.benchmark.records import LoadResult, RawResult, RequestSample, summarise_load
from textgen_bench.benchmark.report import check_targets, format_level, format_overview, summarise_level
from textgen_bench.common.records import Distribution, percentile
from textgen_bench.common.text import format_targets


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)  # numpy.percentile([1, 2, 3, 4], 90)
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_nan_and_range_is_checked() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_distribution_of_values() -> None:
    d = Distribution.of([float(v) for v in range(1, 101)])
    assert (d.count, d.mean, d.p50, d.max) == (100, 50.5, 50.5, 100.0)
    assert d.p99 == pytest.approx(99.01)
    assert Distribution.of([]).count == 0


def _sample(latency: float, tokens: int = 64, queue_ms: float = 1.0) -> RequestSample:
    return RequestSample(ok=True, latency_s=latency, prompt_tokens=30, completion_tokens=tokens, queue_ms=queue_ms)


def _load(system: str = "server", tok_s: float = 100.0, p99: float = 2.0, concurrency: int = 5) -> LoadResult:
    return summarise_load(
        system=system,  # type: ignore[arg-type]
        concurrency=concurrency,
        limit=concurrency,
        request_rate=None,
        max_new_tokens=64,
        samples=[_sample(p99)] * 4,
        health_ms=[2.0, 3.0],
        health_failures=0,
        duration_s=4 * 64 / tok_s,  # 4 requests of 64 tokens at tok_s
    )


def _summarise_two_second_run(samples: list[RequestSample], health_ms: list[float], health_failures: int):
    return summarise_load(
        system="server",
        concurrency=2,
        limit=2,
        request_rate=None,
        max_new_tokens=64,
        samples=samples,
        health_ms=health_ms,
        health_failures=health_failures,
        duration_s=2.0,
    )


def test_summarise_load_counts_only_completed_requests() -> None:
    samples = [_sample(1.0), _sample(3.0, tokens=60), RequestSample(ok=False, latency_s=9.0, error="HTTP 503")]
    result = _summarise_two_second_run(samples, health_ms=[1.0, 2.0, 3.0], health_failures=1)
    assert (result.requests, result.completed, result.failed) == (3, 2, 1)
    assert result.errors == {"HTTP 503": 1}
    assert result.total_output_tokens == 124
    assert result.output_tokens_per_s == 62.0
    assert result.request_throughput == 1.0
    assert result.wrong_length == 1
    assert result.latency_s.p50 == 2.0  # the failed request's 9 s is not a latency
    assert result.health_ms.p50 == 2.0
    assert result.ttft_ms is None  # not a streamed run


def test_summarise_load_reports_time_to_first_token_of_streamed_requests() -> None:
    samples = [RequestSample(ok=True, latency_s=2.0, completion_tokens=64, ttft_s=t) for t in (0.1, 0.3)]
    samples.append(RequestSample(ok=False, latency_s=1.0, ttft_s=5.0, error="HTTP 500"))
    result = _summarise_two_second_run(samples, health_ms=[1.0], health_failures=0)
    assert result.ttft_ms is not None
    assert (result.ttft_ms.count, result.ttft_ms.p50) == (2, 200.0)  # failed requests do not count


def test_arrival_delays_all_at_once_or_poisson() -> None:
    assert arrival_delays(3, None, seed=0) == [0.0, 0.0, 0.0]
    delays = arrival_delays(2000, 10.0, seed=1)
    assert delays[0] == 0.0
    assert delays == sorted(delays)
    assert arrival_delays(2000, 10.0, seed=1) == delays  # reproducible
    assert delays[-1] / len(delays) == pytest.approx(0.1, rel=0.1)  # mean gap 1/rate


def _raw(batch: int, tok_s: float) -> RawResult:
    return RawResult(
        batch_size=batch, prompt_tokens=30, new_tokens=64, repeats=1, seconds=[1.0], output_tokens_per_s=tok_s
    )


def test_level_ratios_and_targets() -> None:
    five = summarise_level(5, _load(tok_s=95.0, p99=3.0), _load("baseline", tok_s=40.0, p99=8.0), _raw(5, 100.0))
    assert five.server_over_raw == pytest.approx(0.95)
    assert five.server_over_baseline == pytest.approx(95 / 40)
    assert five.baseline_p99_over_server_p99 == pytest.approx(8 / 3)
    big = summarise_level(
        32, _load(tok_s=200.0, p99=10.0, concurrency=32), _load("baseline", 30.0, 70.0, 32), _raw(32, 300.0)
    )
    verdicts = {t.name: t.verdict for t in check_targets([five, big])}
    assert list(verdicts.values()) == ["PASS", "PASS", "MISS", "PASS", "PASS"]  # 200/300 < 80%


def test_targets_skip_what_was_not_measured() -> None:
    only_server = summarise_level(1, _load(concurrency=1), None, None)
    assert only_server.server_over_raw is None
    targets = check_targets([only_server])
    assert [t.verdict for t in targets] == ["SKIP", "SKIP", "SKIP", "SKIP", "PASS"]


def test_report_text_has_the_numbers() -> None:
    level = summarise_level(5, _load(tok_s=95.0), _load("baseline", tok_s=40.0), _raw(5, 100.0))
    text = format_level(level)
    assert "### Concurrency 5" in text
    assert "| server | 5 | 4/4 |" in text
    assert "raw generate (batch 5)" in text
    assert "server/raw tok/s **0.95**" in text
    assert level.server is not None
    level.server.notes.append("server process ended during the run (signal 15)")
    assert "- server: server process ended during the run (signal 15)" in format_level(level)
    overview = format_overview([level, summarise_level(1, None, None, None)])
    assert overview.splitlines()[2].startswith("| 5 | 95.0 | 40.0 | 100.0 | 0.95 | 2.38 |")
    assert overview.splitlines()[3] == "| 1 | - | - | - | - | - | - | - | - |"
    assert format_targets(check_targets([level])).startswith("- PASS c5 (limit 5)")
