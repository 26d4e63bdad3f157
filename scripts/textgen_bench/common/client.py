"""Client-side HTTP both tools share: warming a server up, and polling /health alongside a load."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import httpx

MAX_HEALTH_POLLS = 100_000


@dataclass
class HealthLog:
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0


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


@dataclass
class ProbeResult:
    latencies_ms: list[float]
    failures: int
    peak_running: int = 0
    peak_waiting: int = 0


async def _probe(base_url: str, interval_s: float, stop: MpEvent) -> ProbeResult:
    log, result = HealthLog(), ProbeResult([], 0)

    def observe(body: dict[str, Any]) -> None:
        load = body.get("generations") or {}
        result.peak_running = max(result.peak_running, int(load.get("running", 0)))
        result.peak_waiting = max(result.peak_waiting, int(load.get("waiting", 0)))

    stopped = asyncio.Event()
    watcher = asyncio.create_task(asyncio.to_thread(stop.wait))
    watcher.add_done_callback(lambda _: stopped.set())
    async with httpx.AsyncClient(base_url=base_url, timeout=5.0) as client:
        await poll_health(client, interval_s, stopped, log, observe)
    await watcher
    result.latencies_ms, result.failures = log.latencies_ms, log.failures
    return result


def _probe_main(base_url: str, interval_s: float, stop: MpEvent, conn: Connection) -> None:
    conn.send(asyncio.run(_probe(base_url, interval_s, stop)))
    conn.close()


class HealthProbe:
    """Polls /health from a process of its own: the load generator's busy event loop would otherwise delay
    the probes and count its own lag as the server's."""

    def __init__(self, base_url: str, interval_s: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_probe_main, args=(base_url, interval_s, self._stop, send), name="health-probe", daemon=True
        )

    @contextlib.contextmanager
    def running(self) -> Iterator[HealthProbe]:
        self._process.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._process.join(15)
            if self._process.is_alive():
                self._process.kill()

    def result(self) -> ProbeResult:
        """After `running` ended."""
        if self._recv.poll(5):
            return self._recv.recv()
        return ProbeResult([], 1)  # the prober died: count it as a failure rather than as a perfect run


async def warm_up(
    base_url: str,
    api_key: str,
    payload: dict[str, Any],
    count: int,
    timeout_s: float,
    stream: bool = False,
    route: str | None = None,
) -> int:
    """A few short requests first, on the measured route: first calls pay one-off costs. Returns failures."""
    if count <= 0:
        return 0
    budget = "max_tokens" if "max_tokens" in payload else "max_new_tokens"  # OpenAI's name, or ours
    short = {**payload, budget: min(8, int(payload.get(budget, 8)))}
    route = route or ("/generate_stream" if stream else "/generate")
    async with httpx.AsyncClient(base_url=base_url, headers={"x-api-key": api_key}, timeout=timeout_s) as client:
        calls = (client.post(route, json=short) for _ in range(count))
        results = await asyncio.gather(*calls, return_exceptions=True)
    return sum(1 for r in results if not isinstance(r, httpx.Response) or r.status_code != 200)
