"""How the `@bentoml.api` methods answer: work cancelled when the client leaves, refusals as error responses.

BentoML takes the status and headers of an API method that has a context from `ctx.response`, so a refusal
sets them there and returns the error body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import bentoml
from pydantic import ValidationError
from starlette.responses import Response

from textgen.serving.errors import ServingError

from .disconnect import cancel_on_disconnect
from .errors import ApiError, Refusal, as_api_error

REFUSALS = (ApiError, ServingError, ValidationError)


def refuse(ctx: bentoml.Context, exc: Refusal) -> Response:
    error = as_api_error(exc)
    ctx.response.status_code = error.status
    ctx.response.headers.update(error.headers)
    return error.to_response()


async def answer(ctx: bentoml.Context, work: Callable[[], Awaitable[Any]]) -> Any:
    """The result of `work()`, or the error response of its refusal."""
    try:
        return await cancel_on_disconnect(ctx.request, work())
    except REFUSALS as exc:
        return refuse(ctx, exc)


async def answer_stream(ctx: bentoml.Context, start: Callable[[], Awaitable[AsyncIterator[str]]]) -> AsyncIterator[str]:
    """The chunks of the stream `start()` opens once admitted; a refusal before that keeps its HTTP status."""
    try:
        chunks = await start()
    except REFUSALS as exc:
        yield refuse(ctx, exc).body.decode()
        return
    async with aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            yield chunk
