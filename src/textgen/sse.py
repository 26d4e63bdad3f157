"""Server-sent events: the framing, and the event stream of `/generate_stream`."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from pydantic import BaseModel

from .errors import ApiError, error_body
from .generation import TextDelta
from .schemas import GenerateResponse

logger = logging.getLogger(__name__)

STREAM_FAILED = "generation failed; see the server log with this request_id"


def sse(data: BaseModel | dict | str) -> str:
    """One event: `data: <json>` and a blank line."""
    if isinstance(data, BaseModel):
        data = data.model_dump_json()
    elif isinstance(data, dict):
        data = json.dumps(data)
    return f"data: {data}\n\n"


def stream_error(exc: Exception) -> dict[str, object]:
    """The body of an in-stream error event: once headers are sent, an error can only be an event."""
    if isinstance(exc, ApiError):
        return error_body(exc.type, exc.message)
    logger.exception("streamed generation failed")
    return error_body("internal_error", STREAM_FAILED)


async def generate_events(events: AsyncIterator[object]) -> AsyncIterator[str]:
    """`{"type": "token", "text"}` per piece, then `{"type": "done", ...the /generate response}`."""
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                yield sse({"type": "token", "text": event.text})
            elif isinstance(event, GenerateResponse):
                yield sse({"type": "done", **event.model_dump()})
    except Exception as exc:
        yield sse({"type": "error", **stream_error(exc)})
