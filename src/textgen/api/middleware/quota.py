"""Applies each key's limits (textgen.api.quota) to the requests it authenticates, and charges its usage.

Sits after the auth middleware (which names the key) and before the body is read: a refused request gets
429 `rate_limited` with Retry-After at once, and a key's stalled bodies hold its own concurrency places.
Every response to a key with limits carries OpenAI's x-ratelimit-* headers.
"""

from __future__ import annotations

from functools import partial

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from textgen.api.errors import RATE_LIMITED, error_response
from textgen.api.keys import caller
from textgen.api.quota import QuotaBook
from textgen.serving.usage import usage_sink


class QuotaMiddleware:
    def __init__(self, app: ASGIApp, book: QuotaBook) -> None:
        self.app = app
        self.book = book

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = caller(scope) if scope["type"] == "http" else None
        if key is None:  # open paths, websockets
            await self.app(scope, receive, send)
            return
        name = key.name
        if refused := self.book.admit(name):
            headers = {"Retry-After": str(refused.retry_after_s), **self.book.headers(name)}
            await error_response(RATE_LIMITED, refused.message, headers=headers)(scope, receive, send)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.encode(), v.encode()) for k, v in self.book.headers(name).items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        token = usage_sink.set(partial(self.book.charge, name))
        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            usage_sink.reset(token)
            self.book.release(name)
