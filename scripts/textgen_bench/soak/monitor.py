"""Watching the server while the soak's clients run: /health from a process of its own, RSS, the slot drain."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import httpx

from ..common.client import HealthLog, poll_health
from ..common.machine import tree_rss_bytes
from .records import Memory

MIB = 1024 * 1024


# --- /health from its own process -----------------------------------------------------------------


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


# --- memory and slots -----------------------------------------------------------------------------


class RssSampler:
    """The server tree's RSS once a second under load; `before`/`after` are taken by the caller."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []

    def sample(self) -> None:
        self.samples.append(tree_rss_bytes(self.pid))

    async def run(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    def memory(self, before: int, after: int) -> Memory:
        during = [round(rss / MIB, 1) for rss in self.samples]
        peak = max([*during, after / MIB])
        return Memory(before_mib=before / MIB, peak_mib=peak, after_mib=after / MIB, during_mib=during)


def wait_slots_free(base_url: str, timeout_s: float) -> tuple[float | None, dict[str, int]]:
    """Seconds until /health shows nothing running or waiting (None if not within `timeout_s`), last counts."""
    started = time.monotonic()
    last: dict[str, int] = {}
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        while time.monotonic() - started < timeout_s:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                gen = client.get("/health").json()["generations"]
                last = {"running": gen["running"], "waiting": gen["waiting"]}
                if not last["running"] and not last["waiting"]:
                    return time.monotonic() - started, last
            time.sleep(0.1)
    return None, last
