"""Per-key limits and usage: requests per minute, generated tokens per minute, requests in flight.

Windows slide over the last 60 s. A request is counted when it is admitted (a refused one costs nothing);
generated tokens are charged when its generation ends (as OpenAI does: the cost is only known then), and
while a key's tokens in the window are at or over its `tpm` its new requests are refused. The concurrency
cap is applied before the shared admission queue, so one key's flood holds at most `concurrency` of its
places and other keys' requests go by.

Usage (requests, prompt and completion tokens) is kept per key name since the start, and counted in
Prometheus by key name: never by key.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from textgen.config import KeyLimits

from .schemas import KeyUsage

WINDOW_S = 60.0
CONCURRENCY_RETRY_S = 1  # nothing tells when a request in flight will end: ask to try again soon

Limit = Literal["requests", "tokens", "concurrency"]


@dataclass(frozen=True)
class Refused:
    limit: Limit
    retry_after_s: int
    message: str


def format_reset(seconds: float) -> str:
    """OpenAI's duration style: `0s`, `250ms`, `1.5s`, `59s`."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    return f"{round(seconds, 1):g}s"


@dataclass
class KeyWindow:
    """One key's sliding windows and requests in flight. Not thread-safe: used from the event loop only."""

    limits: KeyLimits
    requests: deque[float] = field(default_factory=deque)  # admission times
    tokens: deque[tuple[float, int]] = field(default_factory=deque)  # (charge time, generated tokens)
    tokens_in_window: int = 0
    in_flight: int = 0

    def expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.tokens_in_window -= self.tokens.popleft()[1]

    def refusal(self, now: float) -> Refused | None:
        """Why a request arriving `now` is refused, or None. Expired entries must be gone (`expire`)."""
        lim = self.limits
        if lim.concurrency is not None and self.in_flight >= lim.concurrency:
            message = f"this key has {self.in_flight} requests in flight, its limit"
            return Refused("concurrency", CONCURRENCY_RETRY_S, message)
        if lim.rpm is not None and len(self.requests) >= lim.rpm:
            wait = self.requests[0] + WINDOW_S - now
            return Refused("requests", _seconds(wait), f"this key's {lim.rpm} requests per minute are used up")
        if lim.tpm is not None and self.tokens_in_window >= lim.tpm:
            wait = self._tokens_free_in(now)
            return Refused("tokens", _seconds(wait), f"this key's {lim.tpm} tokens per minute are used up")
        return None

    def _tokens_free_in(self, now: float) -> float:
        """Seconds until the tokens in the window drop below the limit."""
        assert self.limits.tpm is not None
        left = self.tokens_in_window
        for charged_at, tokens in self.tokens:
            left -= tokens
            if left < self.limits.tpm:
                return charged_at + WINDOW_S - now
        return 0.0

    def headers(self, now: float) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers, for the limits this key has."""
        lim, out = self.limits, {}
        if lim.rpm is not None:
            newest = self.requests[-1] if self.requests else now - WINDOW_S
            out["x-ratelimit-limit-requests"] = str(lim.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, lim.rpm - len(self.requests)))
            out["x-ratelimit-reset-requests"] = format_reset(newest + WINDOW_S - now)
        if lim.tpm is not None:
            newest = self.tokens[-1][0] if self.tokens else now - WINDOW_S
            out["x-ratelimit-limit-tokens"] = str(lim.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, lim.tpm - self.tokens_in_window))
            out["x-ratelimit-reset-tokens"] = format_reset(newest + WINDOW_S - now)
        return out


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


class QuotaBook:
    """Every key's windows and usage, by key name. `limits_for(name)` gives a key's limits."""

    def __init__(self, limits_for: Callable[[str], KeyLimits], clock: Callable[[], float] = time.monotonic) -> None:
        self.limits_for = limits_for
        self.clock = clock
        self.windows: dict[str, KeyWindow] = {}
        self.usage: dict[str, KeyUsage] = {}
        self.started_at = time.time()

    def window(self, name: str) -> KeyWindow:
        if (found := self.windows.get(name)) is None:
            found = self.windows[name] = KeyWindow(self.limits_for(name))
        found.expire(self.clock())
        return found

    def _usage(self, name: str) -> KeyUsage:
        return self.usage.setdefault(name, KeyUsage())

    def admit(self, name: str) -> Refused | None:
        """Count a request of key `name` in, or say why not. An admitted request must be `release`d."""
        window, now = self.window(name), self.clock()
        if refused := window.refusal(now):
            self._usage(name).rate_limited += 1
            key_metrics().requests.labels(name, "rate_limited").inc()
            return refused
        window.requests.append(now)
        window.in_flight += 1
        self._usage(name).requests += 1
        key_metrics().requests.labels(name, "admitted").inc()
        return None

    def release(self, name: str) -> None:
        self.windows[name].in_flight -= 1

    def charge(self, name: str, prompt_tokens: int, completion_tokens: int) -> None:
        """A generation of key `name` ended: its generated tokens count against `tpm`, all of them as usage."""
        window = self.window(name)
        if completion_tokens:
            window.tokens.append((self.clock(), completion_tokens))
            window.tokens_in_window += completion_tokens
        usage = self._usage(name)
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        usage.total_tokens += prompt_tokens + completion_tokens
        metrics = key_metrics()
        metrics.prompt_tokens.labels(name).inc(prompt_tokens)
        metrics.completion_tokens.labels(name).inc(completion_tokens)

    def headers(self, name: str) -> dict[str, str]:
        return self.window(name).headers(self.clock())


class KeyMetrics:
    def __init__(self) -> None:
        # Imported here: BentoML sets PROMETHEUS_MULTIPROC_DIR in the worker after the service module is imported.
        from prometheus_client import Counter

        self.requests = Counter("textgen_key_requests", "Requests by key name and outcome.", ["key", "outcome"])
        self.prompt_tokens = Counter("textgen_key_prompt_tokens", "Prompt tokens by key name.", ["key"])
        self.completion_tokens = Counter("textgen_key_completion_tokens", "Generated tokens by key name.", ["key"])


@lru_cache
def key_metrics() -> KeyMetrics:
    return KeyMetrics()
