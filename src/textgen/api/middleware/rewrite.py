"""A `send` that holds back a response, and sends it rewritten once its body is whole."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Message, Send


def rewriting_send(
    send: Send,
    wanted: Callable[[Message], bool],
    rewrite: Callable[[Message, bytes], bytes],
    content_type: bytes | None = None,
) -> Send:
    """Responses whose start message `wanted` selects get the body `rewrite(start, body)` (and `content_type`,
    if given) with a new Content-Length; the others pass through as they come."""
    start: Message | None = None
    chunks: list[bytes] = []
    dropped = {b"content-length", b"content-type"} if content_type else {b"content-length"}

    async def wrapper(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and wanted(message):
            start = message
            return
        if start is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = rewrite(start, b"".join(chunks))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in dropped]
        headers += [(b"content-type", content_type)] if content_type else []
        headers += [(b"content-length", str(len(body)).encode())]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return wrapper
