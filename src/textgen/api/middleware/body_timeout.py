"""A total deadline on reading the request body: BODY_TIMEOUT_S from the moment its headers arrived.

A client that sends headers and part of a body, then nothing, would otherwise hold its connection (and a
task) for as long as it likes; one that trickles a byte at a time defeats a per-read timeout. Past the
deadline the request gets 408 `request_timeout` and the connection closes (`Connection: close`).
Reads after the body (waiting for a disconnect, while a generation runs) have no deadline.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from textgen.api.errors import REQUEST_TIMEOUT, error_response


class BodyTimedOut(Exception):
    pass


class BodyTimeout:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body_done = response_started = timed_out = False

        async def receive_by_deadline() -> Message:
            nonlocal body_done, timed_out
            if body_done:
                return await receive()
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0))
            except TimeoutError:
                if response_started:
                    raise
                # Answered here, not where the exception is caught: a framework inside may turn it into a 500.
                timed_out = True
                message = f"the request body did not arrive within {self.timeout_s:g} s"
                await error_response(REQUEST_TIMEOUT, message)(scope, receive, send)
                raise BodyTimedOut from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def send_unless_answered(message: Message) -> None:
            nonlocal response_started
            if timed_out:
                return  # the app's own answer to the exception: the client has its 408
            response_started = True
            await send(message)

        with contextlib.suppress(BodyTimedOut):  # the 408 is sent
            await self.app(scope, receive_by_deadline, send_unless_answered)
