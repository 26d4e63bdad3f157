"""FIFO admission: at most `limit` generations run; later requests wait in order for a slot.

A request for several sequences (`n`, a list of prompts) takes one slot per sequence, all at once: the
oldest waiter is served first even when a later one would fit, so a big request is never starved, and one
that needs more slots than exist is refused before it can wait forever.

BentoML's own `max_concurrency` answers 429 at once instead of queueing, so the
waiting lives here. The queue is bounded in length and in time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import BaseModel

from .errors import Overloaded, QueueTimedOut


class GenerationLoad(BaseModel):
    """The gate's counters, as /health reports them."""

    running: int
    waiting: int
    limit: int
    max_queue: int


HOLD_SMOOTHING = 0.2  # weight of the latest slot hold time in the running mean
MAX_RETRY_AFTER_S = 60


class AdmissionGate:
    def __init__(self, limit: int, max_queue: int, timeout_s: float) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.running = 0
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()  # each with the slots it needs
        self._mean_hold_s: float | None = None  # how long a request keeps its slot, smoothed

    def retry_after_s(self) -> int:
        """When a refused client should come back: about when the queue ahead of it will have drained.

        A fixed 1 s brings every refused client back at once, over and over; under a flood their rejections then
        crowd the event loop that also answers /health and feeds the engine.
        """
        if self._mean_hold_s is None:
            return 1
        drain_s = (self.waiting + 1) * self._mean_hold_s / self.limit
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(drain_s)))

    @property
    def waiting(self) -> int:
        return sum(1 for w, _ in self._waiters if not w.done())

    def snapshot(self) -> GenerationLoad:
        return GenerationLoad(running=self.running, waiting=self.waiting, limit=self.limit, max_queue=self.max_queue)

    @asynccontextmanager
    async def slot(self, count: int = 1) -> AsyncIterator[None]:
        """`count` slots for one request, held together."""
        if not 1 <= count <= self.limit:
            raise ValueError(f"a request may take 1 to {self.limit} slots, not {count}")
        await self._acquire(count)
        admitted = time.monotonic()
        try:
            yield
        finally:
            self._release(count)
            self._observe_hold(time.monotonic() - admitted)

    def _observe_hold(self, held_s: float) -> None:
        previous = self._mean_hold_s
        self._mean_hold_s = held_s if previous is None else previous + HOLD_SMOOTHING * (held_s - previous)

    async def _acquire(self, count: int) -> None:
        if self.running + count <= self.limit and not self.waiting:
            self.running += count
            return
        if self.waiting >= self.max_queue:
            raise Overloaded(
                f"all {self.limit} generation slots are busy and {self.max_queue} requests are waiting",
                retry_after_s=self.retry_after_s(),
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (waiter, count)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(waiter, self.timeout_s)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release(count)  # the slots were handed over as we gave up: pass them on
            if isinstance(exc, TimeoutError):
                message = f"no generation slot came free within {self.timeout_s:g} s"
                raise QueueTimedOut(message, retry_after_s=self.retry_after_s()) from None
            raise
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
                self._grant()  # a big request that gave up at the head may have held back smaller ones

    def _release(self, count: int) -> None:
        self.running -= count
        self._grant()

    def _grant(self) -> None:
        # Hand free slots to the oldest live waiters in order, taking them now, so nobody jumps the queue.
        while self._waiters:
            waiter, count = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if self.running + count > self.limit:
                return
            self._waiters.popleft()
            self.running += count
            waiter.set_result(None)
