"""The load generator: N /generate requests at a fixed concurrency, /health polled alongside.

Like vLLM's benchmark_serving: requests are released on a Poisson schedule (or all at once) and
a semaphore caps how many are in flight. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .records import RequestSample


@dataclass(frozen=True)
class LoadPlan:
    base_url: str
    api_key: str
    payload: dict[str, Any]
    requests: int
    concurrency: int
    request_rate: float | None = None  # arrivals per second; None releases all at once
    request_timeout_s: float = 600.0
    run_timeout_s: float = 1800.0
    health_interval_s: float = 0.1
    seed: int = 0
    stream: bool = False  # /generate_stream: time to first token is measured too


@dataclass
class LoadOutcome:
    samples: list[RequestSample]
    health_ms: list[float]
    health_failures: int
    duration_s: float


@dataclass
class HealthLog:
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0


MAX_HEALTH_POLLS = 100_000


def arrival_delays(n: int, rate: float | None, seed: int) -> list[float]:
    """Release times (seconds from the start) of n requests: Poisson process at `rate`, or all at 0."""
    if rate is None or rate <= 0:
        return [0.0] * n
    rng = random.Random(seed)
    delays, t = [], 0.0
    for _ in range(n):
        delays.append(t)
        t += rng.expovariate(rate)
    return delays


def _sample_from(status: int, body: dict[str, Any] | None, latency_s: float, ttft_s: float | None) -> RequestSample:
    if status != 200 or body is None:
        return RequestSample(ok=False, latency_s=latency_s, error=f"HTTP {status}")
    return RequestSample(
        ok=True,
        latency_s=latency_s,
        prompt_tokens=body["usage"]["prompt_tokens"],
        completion_tokens=body["usage"]["completion_tokens"],
        queue_ms=body.get("timings", {}).get("queue_ms"),
        ttft_s=ttft_s,
    )


async def _post(client: httpx.AsyncClient, payload: dict[str, Any]) -> tuple[int, dict[str, Any] | None, None]:
    response = await client.post("/generate", json=payload)
    return response.status_code, response.json() if response.status_code == 200 else None, None


async def _post_streaming(
    client: httpx.AsyncClient, payload: dict[str, Any], started: float
) -> tuple[int, dict[str, Any] | None, float | None]:
    """Reads the server-sent events; the first token event gives the time to first token."""
    first_token_s, done = None, None
    async with client.stream("POST", "/generate_stream", json=payload) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, None, None
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[len("data: ") :])
            if event["type"] == "token" and first_token_s is None:
                first_token_s = time.perf_counter() - started
            elif event["type"] == "done":
                done = event
    return response.status_code, done, first_token_s


async def _one_request(
    client: httpx.AsyncClient, plan: LoadPlan, gate: asyncio.Semaphore, delay_s: float
) -> RequestSample:
    await asyncio.sleep(delay_s)
    async with gate:
        started = time.perf_counter()
        try:
            if plan.stream:
                status, body, ttft_s = await _post_streaming(client, plan.payload, started)
            else:
                status, body, ttft_s = await _post(client, plan.payload)
        except httpx.HTTPError as exc:
            return RequestSample(ok=False, latency_s=time.perf_counter() - started, error=type(exc).__name__)
        return _sample_from(status, body, time.perf_counter() - started, ttft_s)


async def poll_health(
    client: httpx.AsyncClient,
    interval_s: float,
    stop: asyncio.Event,
    log: HealthLog,
    observe: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """GET /health every `interval_s` until `stop`; `observe` sees each 200 body (the soak tracks the slots)."""
    # Its own client and connection: a pool busy with /generate calls must not delay the probe.
    while not stop.is_set() and len(log.latencies_ms) < MAX_HEALTH_POLLS:
        started = time.perf_counter()
        try:
            response = await client.get("/health")
            ok = response.status_code == 200
            if ok and observe is not None:
                observe(response.json())
        except (httpx.HTTPError, ValueError):
            ok = False
        # A failed or timed-out probe still counts with the time it took, so p99 shows it.
        log.latencies_ms.append((time.perf_counter() - started) * 1000)
        log.failures += not ok
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def run_load(plan: LoadPlan) -> LoadOutcome:
    headers = {"x-api-key": plan.api_key}
    limits = httpx.Limits(max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency)
    timeout = httpx.Timeout(plan.request_timeout_s, connect=10.0)
    gate = asyncio.Semaphore(plan.concurrency)
    stop, health = asyncio.Event(), HealthLog()
    async with (
        httpx.AsyncClient(base_url=plan.base_url, headers=headers, limits=limits, timeout=timeout) as client,
        httpx.AsyncClient(base_url=plan.base_url, timeout=5.0) as health_client,
    ):
        poller = asyncio.create_task(poll_health(health_client, plan.health_interval_s, stop, health))
        delays = arrival_delays(plan.requests, plan.request_rate, plan.seed)
        tasks = [asyncio.create_task(_one_request(client, plan, gate, d)) for d in delays]
        started = time.perf_counter()
        done, pending = await asyncio.wait(tasks, timeout=plan.run_timeout_s)
        duration = time.perf_counter() - started
        stop.set()
        for task in pending:  # past the run's deadline
            task.cancel()
        await asyncio.gather(*pending, poller, return_exceptions=True)
    late = RequestSample(ok=False, latency_s=duration, error="run deadline")
    samples = [task.result() if task in done else late for task in tasks]
    return LoadOutcome(samples, health.latencies_ms, health.failures, duration)


async def warm_up(
    base_url: str, api_key: str, payload: dict[str, Any], count: int, timeout_s: float, stream: bool = False
) -> int:
    """A few short requests first, on the measured route: first calls pay one-off costs. Returns failures."""
    if count <= 0:
        return 0
    short = {**payload, "max_new_tokens": min(8, int(payload.get("max_new_tokens", 8)))}
    route = "/generate_stream" if stream else "/generate"
    async with httpx.AsyncClient(base_url=base_url, headers={"x-api-key": api_key}, timeout=timeout_s) as client:
        calls = (client.post(route, json=short) for _ in range(count))
        results = await asyncio.gather(*calls, return_exceptions=True)
    return sum(1 for r in results if not isinstance(r, httpx.Response) or r.status_code != 200)
