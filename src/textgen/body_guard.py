"""Reads request bodies up to a size cap (413 past it) and refuses malformed JSON with a 400.

BentoML reads any body whole, however large, and answers malformed JSON with a 500.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

BODY_METHODS = {"POST", "PUT", "PATCH"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`; a missing header counts as JSON."""
    return "application/json" if content_type is None else content_type.split(";")[0].strip().lower()


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
            413, "payload_too_large", f"request body is larger than the limit of {self.max_bytes} bytes"
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
        if body and media_type in ("application/json", ""):
            try:
                json.loads(body)
            except ValueError as exc:
                reason = exc.args[0] if isinstance(exc, json.JSONDecodeError) else "body is not valid UTF-8"
                await error_response(400, "invalid_json", f"request body is not valid JSON: {reason}")(
                    scope, receive, send
                )
                return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
