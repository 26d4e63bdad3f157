"""Result records of a benchmark run, and the summary that fills them from raw samples."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from ..common.records import CpuShare, Distribution, MachineInfo, TargetCheck

SystemName = Literal["server", "baseline"]


class RequestSample(BaseModel):
    """One /generate call as the client saw it."""

    ok: bool
    latency_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_ms: float | None = None  # as the server reports it
    ttft_s: float | None = None  # streamed requests: until the first token event
    error: str | None = None


class LoadResult(BaseModel):
    """One system under one concurrency level."""

    system: SystemName
    concurrency: int
    limit: int = Field(description="The server's admission limit (and batch size for the batched server).")
    request_rate: float | None = Field(None, description="Poisson arrivals per second; None = all at once.")
    requests: int
    completed: int
    failed: int
    errors: dict[str, int] = Field(default_factory=dict)
    duration_s: float
    request_throughput: float
    output_tokens_per_s: float
    total_output_tokens: int
    wrong_length: int = Field(description="Completed requests whose completion_tokens != max_new_tokens.")
    mean_prompt_tokens: float
    latency_s: Distribution
    queue_ms: Distribution
    health_ms: Distribution
    health_failures: int
    ttft_ms: Distribution | None = Field(None, description="Time to first token; streamed runs only.")
    cpu: CpuShare | None = None
    notes: list[str] = Field(default_factory=list)


class RawResult(BaseModel):
    """The model's own batched `generate`, in-process: the ceiling a server can approach."""

    batch_size: int
    prompt_tokens: int
    new_tokens: int
    repeats: int
    seconds: list[float]
    output_tokens_per_s: float
    cpu: CpuShare | None = None


class LevelSummary(BaseModel):
    """Side-by-side numbers at one concurrency level."""

    concurrency: int
    server: LoadResult | None = None
    baseline: LoadResult | None = None
    raw: RawResult | None = None
    server_over_raw: float | None = None
    server_over_baseline: float | None = None
    baseline_p99_over_server_p99: float | None = None


class BenchConfig(BaseModel):
    command: str
    model_tag: str
    model_weights: str
    prompt: str
    max_new_tokens: int
    levels: list[int]
    requests: dict[int, int]
    systems: list[str]
    fixed_limit: int | None
    request_rate: float | None
    health_interval_s: float
    raw_repeats: int
    warmup_requests: int


class BenchReport(BaseModel):
    started_at: str
    finished_at: str = ""
    config: BenchConfig
    machine: MachineInfo
    levels: list[LevelSummary] = Field(default_factory=list)
    targets: list[TargetCheck] = Field(default_factory=list)


def summarise_load(
    *,
    system: SystemName,
    concurrency: int,
    limit: int,
    request_rate: float | None,
    max_new_tokens: int,
    samples: Sequence[RequestSample],
    health_ms: Sequence[float],
    health_failures: int,
    duration_s: float,
    cpu: CpuShare | None = None,
) -> LoadResult:
    """Turn raw samples into a record. Throughput counts completed requests only, over the whole run."""
    done = [s for s in samples if s.ok]
    errors = Counter(s.error or "unknown" for s in samples if not s.ok)
    tokens = sum(s.completion_tokens for s in done)
    per_s = 1 / duration_s if duration_s > 0 else 0.0
    return LoadResult(
        system=system,
        concurrency=concurrency,
        limit=limit,
        request_rate=request_rate,
        requests=len(samples),
        completed=len(done),
        failed=len(samples) - len(done),
        errors=dict(errors),
        duration_s=duration_s,
        request_throughput=len(done) * per_s,
        output_tokens_per_s=tokens * per_s,
        total_output_tokens=tokens,
        wrong_length=sum(1 for s in done if s.completion_tokens != max_new_tokens),
        mean_prompt_tokens=sum(s.prompt_tokens for s in done) / len(done) if done else math.nan,
        latency_s=Distribution.of([s.latency_s for s in done]),
        queue_ms=Distribution.of([s.queue_ms for s in done if s.queue_ms is not None]),
        health_ms=Distribution.of(health_ms),
        health_failures=health_failures,
        ttft_ms=Distribution.of(ttft) if (ttft := [s.ttft_s * 1000 for s in done if s.ttft_s is not None]) else None,
        cpu=cpu,
    )
