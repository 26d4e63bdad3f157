"""Server-sent events framing, and the error event that ends a stream which has already started."""

from __future__ import annotations

import json
import logging

from pydantic import BaseModel

from textgen.serving.errors import ServingError

from .errors import INTERNAL_ERROR, ApiError, as_api_error, error_body

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
    if isinstance(exc, ApiError | ServingError):
        error = as_api_error(exc)
        return error_body(error.type, error.message)
    logger.exception("streamed generation failed")
    return error_body(INTERNAL_ERROR.type, STREAM_FAILED)
