"""Reads request bodies up to a size cap (413 past it), refuses bodies that are not JSON (415) and malformed
JSON (400), so every body that reaches BentoML is one JSON object parse away from validation.

BentoML reads any body whole, however large, answers some malformed JSON with a 500 and reads other media
types as forms (a multipart body without a boundary is a 500). Every POST route of this service takes JSON.
"""

from __future__ import annotations

from pydantic_core import from_json
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from textgen.api.errors import INVALID_JSON, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, error_response

BODY_METHODS = {"POST", "PUT", "PATCH"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`; a missing header counts as JSON."""
    return "application/json" if content_type is None else content_type.split(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type in ("application/json", "") or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _with_json_content_type(scope: Scope) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


class RequestBodyGuard:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        too_large = error_response(
            PAYLOAD_TOO_LARGE, f"request body is larger than the limit of {self.max_bytes} bytes"
        )
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_large(scope, receive, send)
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)

        media_type = _media_type(_header(scope, b"content-type"))
        if media_type == "application/x-www-form-urlencoded" and body.lstrip().startswith(b"{"):
            # `curl -d '{...}'` labels JSON as a form: read it as the JSON it is.
            scope = _with_json_content_type(scope)
            media_type = "application/json"
        if not _is_json(media_type):
            message = f"request body must be JSON (Content-Type: application/json), not {media_type}"
            await error_response(UNSUPPORTED_MEDIA_TYPE, message)(scope, receive, send)
            return
        if body:
            try:
                # BentoML's own parser, strict: RFC 8259 has no NaN or Infinity (Python's json takes them), and a
                # depth limit (Python's json raises RecursionError on deep nesting, which hung the request).
                from_json(body, allow_inf_nan=False)
            except ValueError as exc:
                await error_response(INVALID_JSON, f"request body is not valid JSON: {exc}")(scope, receive, send)
                return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
