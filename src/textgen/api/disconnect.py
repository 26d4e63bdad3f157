"""Cancel a non-streaming request's work when its client goes away.

BentoML keeps running an API call whose client disconnected; without this, an abandoned
request would hold its generation slot and batch row until its last token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from .errors import CLIENT_DISCONNECTED, ApiError

T = TypeVar("T")

POLL_S = 0.2  # how soon a disconnect is noticed; the engine drops the row at its next step after that


async def cancel_on_disconnect(request: Request, work: Awaitable[T], poll_s: float = POLL_S) -> T:
    """Await `work`; if the client disconnects first, cancel it and raise a `client_disconnected` ApiError."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.wait({task})  # let it unwind: the job is cancelled and its slot released
                raise ApiError(CLIENT_DISCONNECTED, "the client closed the connection before the answer")
    finally:
        task.cancel()  # no-op once done; stops the work if we are cancelled ourselves
