"""Client-side HTTP both tools share: warming a server up, and polling /health alongside a load."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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


@contextlib.contextmanager
def health_poller(base_url: str, interval_s: float) -> Iterator[HealthLog]:
    """Poll /health on a thread with its own event loop and connection for as long as the block runs.

    A probe on the load's own event loop also timed the client's queue: with 32 responses arriving at once it
    waited behind their parsing, which a kubelet's probe never does. Its own loop measures the server.
    """
    log, loop = HealthLog(), asyncio.new_event_loop()
    stop = asyncio.Event()

    async def poll() -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=5.0) as client:
            await poll_health(client, interval_s, stop, log)

    thread = threading.Thread(target=loop.run_until_complete, args=(poll(),), name="health-poller", daemon=True)
    thread.start()
    try:
        yield log
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join()
        loop.close()


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
