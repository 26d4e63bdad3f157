"""Rewrites every error response (BentoML's, Starlette's, ours) into the one error shape.

BentoML answers validation errors with `{"error", "detail": [...]}`, some errors
with a JSON list, and 404/405 with plain text; clients get one shape instead.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from textgen.api.errors import ApiError, error_body, kind_for_status
from textgen.api.middleware.rewrite import rewriting_send

INTERNAL_MESSAGE = "internal server error; see the server log with this request_id"


def normalise(status: int, raw: bytes) -> dict[str, Any]:
    """Our error body for a response of `status` whose body was `raw`."""
    try:
        data: Any = json.loads(raw) if raw else None
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict) and "type" in data["error"]:
        return data  # already ours
    if isinstance(data, list) and len(data) == 1:
        data = data[0]  # BentoML wraps some errors in a one-item list

    if status == 400 and isinstance(data, dict) and isinstance(data.get("detail"), list) and data["detail"]:
        invalid = ApiError.from_validation(data["detail"])
        return error_body(invalid.type, invalid.message, field=invalid.field)

    error_type = kind_for_status(status).type
    if status >= 500:
        return error_body(error_type, INTERNAL_MESSAGE if status == 500 else _message(data, raw, status))
    return error_body(error_type, _message(data, raw, status))


def _message(data: Any, raw: bytes, status: int) -> str:
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            if isinstance(data.get(key), str):
                return data[key]
    text = raw.decode("utf-8", "replace").strip()
    if text and data is None and len(text) < 200:
        return text
    return f"HTTP {status}"


class ErrorEnvelopeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        def is_error(start: Message) -> bool:
            return start["status"] >= 400

        def enveloped(start: Message, body: bytes) -> bytes:
            return json.dumps(normalise(start["status"], body)).encode()

        await self.app(scope, receive, rewriting_send(send, is_error, enveloped, b"application/json"))
