"""FirstByteTimeout against BentoML's TimeoutMiddleware, on a bare ASGI app in a real event loop."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import weakref

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from textgen.api.middleware.first_byte_timeout import FirstByteTimeout

request_state: contextvars.ContextVar[object] = contextvars.ContextVar("request_state")


class Span:
    """Stands in for what a request keeps in its context (BentoML's tracing span)."""


async def app(scope, receive, send, delay: float = 0.0) -> None:
    await asyncio.sleep(delay)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


LOOP = asyncio.new_event_loop()  # one loop that outlives each request, as a server's does
threading.Thread(target=LOOP.run_forever, daemon=True).start()


def run_request(middleware_cls, delay: float = 0.0, timeout: float = 3600) -> tuple[list[dict], weakref.ref]:
    """One request in a task of its own, with a span in its context set by an outer layer (as BentoML's tracing)."""
    sent: list[dict] = []
    spans: list[weakref.ref] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def request():
        request_state.set(span := Span())
        spans.append(weakref.ref(span))
        del span
        await middleware_cls(lambda *a: app(*a, delay=delay), timeout=timeout)({"type": "http"}, receive, send)

    async def main():
        await asyncio.ensure_future(request())
        gc.collect()
        return spans[0]

    return sent, asyncio.run_coroutine_threadsafe(main(), LOOP).result(10)


def test_bentoml_timeout_middleware_keeps_each_request_context_for_the_whole_timeout():
    _, span = run_request(TimeoutMiddleware)
    assert span() is not None  # the bug FirstByteTimeout exists for (BentoML 1.4.39)


def test_first_byte_timeout_lets_the_request_context_go():
    sent, span = run_request(FirstByteTimeout)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"
    assert span() is None


def test_first_byte_timeout_answers_504_when_nothing_started_in_time():
    sent, _ = run_request(FirstByteTimeout, delay=1.0, timeout=0.05)
    assert sent[0]["status"] == 504 and b"0.05 seconds" in sent[1]["body"]
    assert len(sent) == 2  # the cancelled app sent nothing after the 504
