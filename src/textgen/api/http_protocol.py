"""uvicorn's h11 protocol with the bounds a public server needs on slow and idle clients.

uvicorn 0.54 (which BentoML runs) closes a keep-alive connection idle after a response, but has no timer
on a connection that never sends a request, nor on request headers that never finish: a socket that sends
half a request line holds its connection for ever. This protocol adds:

- an idle timer from the moment a connection opens: no byte of a request within KEEPALIVE_TIMEOUT_S, and the
  connection closes (as uvicorn closes one idle after a response, with the same timer);
- a total deadline on the request head: HEADER_TIMEOUT_S from its first byte, else 408 `request_timeout` in
  the usual error body, and the connection closes;
- MAX_HEADER_BYTES: a longer request head (request line and headers) gets 431 `headers_too_large`, and the
  connection closes. (h11's own bound only counts a head that arrives in pieces.)

The body has its own deadline (BODY_TIMEOUT_S), in the `BodyTimeout` ASGI middleware.
`textgen.bentoml_compat.use_http_protocol` makes BentoML's uvicorn use it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from textgen.config import Settings

from .errors import HEADERS_TOO_LARGE, REQUEST_TIMEOUT, ErrorKind, error_body


def raw_error(kind: ErrorKind, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response in the usual body, for answers given before there is a request."""
    body = json.dumps(error_body(kind.type, message)).encode()
    head = (
        f"HTTP/1.1 {kind.status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 5.0
    max_header_bytes: int = 16_384

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
        self.timeout_keep_alive = self.keepalive_timeout_s  # type: ignore[assignment]
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_size(data) > self.max_header_bytes:
            message = f"the request head is larger than the limit of {self.max_header_bytes} bytes"
            self._refuse(raw_error(HEADERS_TOO_LARGE, "Request Header Fields Too Large", message))
            return
        super().data_received(data)
        self._watch_head()

    def _head_size(self, data: bytes) -> int:
        """The size of the request head in the buffer plus `data` (all of it, if the head has not ended)."""
        pending = self.conn.trailing_data[0] + data
        end = pending.find(b"\r\n\r\n")
        return len(pending) if end < 0 else end + 4

    def _refuse(self, response: bytes) -> None:
        self._stop_head_timer()
        self._unset_keepalive_if_required()
        self.transport.write(response)
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()  # a pipelined request's head may be waiting, incomplete

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _head_incomplete(self) -> bool:
        """Some bytes of a request head are buffered, and the head is not complete."""
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])

    def _watch_head(self) -> None:
        if self.transport.is_closing() or not self._head_incomplete():
            self._stop_head_timer()
        elif self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._head_incomplete():
            return
        message = f"the request headers did not arrive within {self.header_timeout_s:g} s"
        self._refuse(raw_error(REQUEST_TIMEOUT, "Request Timeout", message))


def guarded_protocol(settings: Settings) -> type[GuardedH11Protocol]:
    """The protocol class with the bounds of `settings`."""
    bounds = {
        "header_timeout_s": settings.header_timeout_s,
        "keepalive_timeout_s": settings.keepalive_timeout_s,
        "max_header_bytes": settings.max_header_bytes,
    }
    return type("GuardedH11Protocol", (GuardedH11Protocol,), bounds)
