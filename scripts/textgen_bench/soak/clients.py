"""The soak's looping clients: each sends a request of a kind drawn from the mix, judges the answer, backs off.

Every loop is bounded: clients stop sending at the deadline, each request has a client-side time limit,
and the run as a whole has a hard cap in requests and in time.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx

from .mix import FAULT_KINDS, STREAM_KINDS, Kind, backoff_s, pick_kind
from .records import Attempt
from .verdicts import Verdict, classify_response, classify_stream_end

PROMPTS = (
    "Once upon a time",
    "The weather today is",
    "In a distant galaxy, a small robot",
    "Here is a recipe for bread:",
)
KEEPALIVE_EXPIRY_S = 2.0


@dataclass(frozen=True)
class SoakPlan:
    base_url: str
    api_key: str
    clients: int
    duration_s: float
    mix: dict[Kind, float]
    fault_marker: str | None
    request_timeout_s: float
    max_new_tokens: tuple[int, int] = (16, 32)
    leave_after_s: tuple[float, float] = (0.2, 3.0)  # a disconnecting /generate client's patience
    backoff_cap_s: float = 60.0  # as the server says: it estimates when its queue will have drained
    max_requests: int = 200_000  # a hard cap besides the deadline
    seed: int = 0


@dataclass
class _Run:
    plan: SoakPlan
    client: httpx.AsyncClient
    attempts: list[Attempt] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @property
    def deadline(self) -> float:
        return self.started + self.plan.duration_s

    def may_send(self) -> bool:
        return time.perf_counter() < self.deadline and len(self.attempts) < self.plan.max_requests


def build_request(kind: Kind, rng: random.Random, plan: SoakPlan) -> tuple[str, dict[str, Any]]:
    """Route and body. `ignore_eos` fixes every length, so a short answer shows up as an error."""
    prompt = rng.choice(PROMPTS)
    if kind in FAULT_KINDS:
        prompt = f"{plan.fault_marker} {prompt}"
    body = {
        "prompt": prompt,
        "max_new_tokens": rng.randint(*plan.max_new_tokens),
        "temperature": rng.choice((0.0, 0.8)),
        "seed": rng.randrange(2**31),
        "ignore_eos": True,
    }
    return ("/generate_stream" if kind in STREAM_KINDS else "/generate"), body


class Answer(NamedTuple):
    verdict: Verdict
    status: int | None = None
    retry_after: str | None = None


def _answer(kind: Kind, response: httpx.Response, max_new_tokens: int) -> Answer:
    try:
        body = response.json()
    except ValueError:
        body = None
    retry_after = response.headers.get("retry-after")
    verdict = classify_response(kind, response.status_code, body, retry_after, max_new_tokens)
    return Answer(verdict, response.status_code, retry_after)


async def _post(run: _Run, kind: Kind, body: dict[str, Any], rng: random.Random) -> Answer:
    options: dict[str, httpx.Timeout] = {}
    if kind == "disconnect_generate":  # gives up while queued or mid-generation; the server must free the slot
        options["timeout"] = httpx.Timeout(run.plan.request_timeout_s, read=rng.uniform(*run.plan.leave_after_s))
    try:
        response = await run.client.post("/generate", json=body, **options)
    except httpx.ReadTimeout:
        if kind != "disconnect_generate":
            raise
        return Answer(Verdict("disconnected", "gave up waiting"))
    return _answer(kind, response, body["max_new_tokens"])


async def _stream(run: _Run, kind: Kind, body: dict[str, Any]) -> Answer:
    last: dict[str, Any] | None = None
    async with run.client.stream("POST", "/generate_stream", json=body) as response:
        if response.status_code != 200:  # a refusal keeps its status and error body
            await response.aread()
            return _answer(kind, response, body["max_new_tokens"])
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            try:
                event = json.loads(line.removeprefix("data: "))
            except ValueError:
                return Answer(Verdict("error", "stream event not JSON"), 200)
            if kind == "disconnect_stream" and event.get("type") == "token":
                return Answer(Verdict("disconnected", "closed after the first token"), 200)  # closes the connection
            if last is not None:  # read on to the end: the stream must close right after its last event
                return Answer(Verdict("error", f"{event.get('type')} event after {last.get('type')}"), 200)
            if event.get("type") in ("done", "error"):
                last = event
    return Answer(classify_stream_end(kind, last, body["max_new_tokens"]), 200)


async def _attempt(run: _Run, kind: Kind, rng: random.Random) -> tuple[Attempt, str | None]:
    """One request, bounded in time; returns it and the server's Retry-After, if any."""
    route, body = build_request(kind, rng, run.plan)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(run.plan.request_timeout_s):
            call = _stream(run, kind, body) if route == "/generate_stream" else _post(run, kind, body, rng)
            answer = await call
    except TimeoutError:
        answer = Answer(Verdict("lost", f"no answer within {run.plan.request_timeout_s:g} s"))
    except httpx.HTTPError as exc:  # connection refused or reset, protocol error, a read timing out
        answer = Answer(Verdict("lost", f"{type(exc).__name__} {exc}".strip()))
    verdict, since_load = answer.verdict, started - run.started
    attempt = Attempt(kind, verdict.outcome, time.perf_counter() - started, answer.status, verdict.detail, since_load)
    return attempt, answer.retry_after


async def _sleep_within(run: _Run, delay_s: float) -> None:
    await asyncio.sleep(max(0.0, min(delay_s, run.deadline - time.perf_counter())))


async def _client_loop(run: _Run, index: int) -> None:
    rng = random.Random(run.plan.seed * 1_000_003 + index)
    in_a_row = 0  # refusals (or failures) in a row: the back-off grows without a Retry-After
    while run.may_send():
        attempt, retry_after = await _attempt(run, pick_kind(run.plan.mix, rng), rng)
        run.attempts.append(attempt)
        if attempt.outcome in ("rejected", "lost"):  # lost: a dead server must not be hammered either
            in_a_row += 1
            await _sleep_within(run, backoff_s(retry_after, in_a_row, rng, run.plan.backoff_cap_s))
        else:
            in_a_row = 0


async def run_clients(plan: SoakPlan) -> list[Attempt]:
    """`plan.clients` loops until the deadline; requests in flight then run to their end (or their time limit)."""
    # Idle connections expire well before uvicorn's 5 s keep-alive: at httpx's default (also 5 s) a request sent
    # on a connection the server is closing fails with ReadError/RemoteProtocolError, never having been read.
    pool = plan.clients + 8
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=KEEPALIVE_EXPIRY_S)
    timeout = httpx.Timeout(plan.request_timeout_s, connect=10.0)
    headers = {"x-api-key": plan.api_key}
    async with httpx.AsyncClient(base_url=plan.base_url, headers=headers, limits=limits, timeout=timeout) as client:
        run = _Run(plan, client)
        loops = [asyncio.create_task(_client_loop(run, i)) for i in range(plan.clients)]
        done, pending = await asyncio.wait(loops, timeout=plan.duration_s + plan.request_timeout_s + 30)
        for task in pending:  # cannot happen while every request has its own time limit; never hang on it
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # a bug in a client loop surfaces instead of silently sending less
    # A loop still running here had a request in flight: count it as lost.
    stuck = Attempt("generate", "lost", plan.request_timeout_s, None, "in flight past the run's hard deadline")
    return run.attempts + [stuck] * len(pending)
