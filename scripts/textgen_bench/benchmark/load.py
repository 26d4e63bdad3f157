"""The load generator: N requests (/generate, or OpenAI's /v1/completions) at a fixed concurrency, /health alongside.

Like vLLM's benchmark_serving: requests are released on a Poisson schedule (or all at once) and
a semaphore caps how many are in flight. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from ..common.client import HealthProbe
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
    variations: tuple[dict[str, Any], ...] = ()  # request i also gets variations[i % len] (e.g. its adapter)
    route: str = "/generate"  # or "/v1/completions": any server speaking OpenAI's API (llama-server too)

    def payload_of(self, request: int) -> dict[str, Any]:
        if not self.variations:
            return self.payload
        return {**self.payload, **self.variations[request % len(self.variations)]}


@dataclass
class LoadOutcome:
    samples: list[RequestSample]
    health_ms: list[float]
    health_failures: int
    duration_s: float


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


async def _post(
    client: httpx.AsyncClient, route: str, payload: dict[str, Any]
) -> tuple[int, dict[str, Any] | None, None]:
    response = await client.post(route, json=payload)
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
    client: httpx.AsyncClient, plan: LoadPlan, gate: asyncio.Semaphore, delay_s: float, index: int
) -> RequestSample:
    await asyncio.sleep(delay_s)
    async with gate:
        started = time.perf_counter()
        try:
            if plan.stream:
                status, body, ttft_s = await _post_streaming(client, plan.payload_of(index), started)
            else:
                status, body, ttft_s = await _post(client, plan.route, plan.payload_of(index))
        except httpx.HTTPError as exc:
            return RequestSample(ok=False, latency_s=time.perf_counter() - started, error=type(exc).__name__)
        return _sample_from(status, body, time.perf_counter() - started, ttft_s)


async def run_load(plan: LoadPlan) -> LoadOutcome:
    headers = {"x-api-key": plan.api_key}
    limits = httpx.Limits(max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency)
    timeout = httpx.Timeout(plan.request_timeout_s, connect=10.0)
    gate = asyncio.Semaphore(plan.concurrency)
    probe = HealthProbe(plan.base_url, plan.health_interval_s)
    with probe.running():
        async with httpx.AsyncClient(base_url=plan.base_url, headers=headers, limits=limits, timeout=timeout) as client:
            delays = arrival_delays(plan.requests, plan.request_rate, plan.seed)
            tasks = [asyncio.create_task(_one_request(client, plan, gate, d, i)) for i, d in enumerate(delays)]
            started = time.perf_counter()
            done, pending = await asyncio.wait(tasks, timeout=plan.run_timeout_s)
            duration = time.perf_counter() - started
            for task in pending:  # past the run's deadline
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    late = RequestSample(ok=False, latency_s=duration, error="run deadline")
    samples = [task.result() if task in done else late for task in tasks]
    health = probe.result()
    return LoadOutcome(samples, health.latencies_ms, health.failures, duration)
