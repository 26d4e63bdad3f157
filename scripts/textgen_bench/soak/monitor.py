"""Watching the server while the soak's clients run: RSS and the slot drain (/health: common.client.HealthProbe)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from ..common.machine import tree_rss_bytes
from .records import Memory

MIB = 1024 * 1024


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
