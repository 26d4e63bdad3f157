"""Slow and idle clients: a pool of raw sockets that open and then stall, kept at a fixed size.

Three kinds, in turn: `idle` (connects, sends nothing), `head` (half a request line and header), `body`
(complete headers, `Content-Length: 40`, 5 bytes of body). The server should close each within its bounds
(KEEPALIVE_TIMEOUT_S, HEADER_TIMEOUT_S, BODY_TIMEOUT_S): `head` and `body` with a 408, `idle` silently. A
closed socket is replaced at once, so `count` sockets stall the whole time, as an attacker's would.
Loopback only; bounded by the caller's stop event and by `max_opened`.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

KINDS = ("idle", "head", "body")


def stalled_bytes(kind: str, host: str, api_key: str) -> bytes:
    """What a socket of `kind` sends before it stalls."""
    if kind == "idle":
        return b""
    if kind == "head":
        return f"POST /generate HTTP/1.1\r\nHost: {host}\r\nx-api-k".encode()
    head = (
        f"POST /generate HTTP/1.1\r\nHost: {host}\r\nx-api-key: {api_key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 40\r\n\r\n"
    )
    return head.encode() + b'{"pro'


def answer_of(data: bytes) -> str:
    """`408`, `closed` (no answer), or the status line's code of another answer."""
    if not data:
        return "closed"
    first = data.split(b"\r\n", 1)[0].split()
    return first[1].decode() if len(first) > 1 else "garbage"


@dataclass
class StalledStats:
    opened: int = 0
    connect_failures: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # per kind and answer: "body:408", "idle:closed"
    peak_open: int = 0
    longest_open_s: float = 0.0  # the longest the server let one of them stall
    still_open: int = 0  # at the stop: stalled, not yet closed by the server


@dataclass
class _Stalled:
    sock: socket.socket
    kind: str
    opened_at: float


class StalledSockets:
    def __init__(self, host: str, port: int, count: int, api_key: str, max_opened: int = 200_000) -> None:
        if not host.startswith("127."):
            raise ValueError("stalled sockets target loopback addresses (127.0.0.0/8) only")
        self.host, self.port, self.count, self.api_key = host, port, count, api_key
        self.max_opened = max_opened
        self.stats = StalledStats()
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._open: dict[int, _Stalled] = {}

    def _open_one(self) -> None:
        kind = KINDS[self.stats.opened % len(KINDS)]
        self.stats.opened += 1
        try:
            sock = socket.create_connection((self.host, self.port), timeout=5)
            sock.sendall(stalled_bytes(kind, self.host, self.api_key))
        except OSError:
            self.stats.connect_failures += 1
            return
        sock.setblocking(False)
        self._open[sock.fileno()] = _Stalled(sock, kind, time.monotonic())
        self._selector.register(sock, selectors.EVENT_READ)

    def _close(self, stalled: _Stalled, answer: str) -> None:
        self._selector.unregister(stalled.sock)
        del self._open[stalled.sock.fileno()]
        stalled.sock.close()
        self.stats.answers[f"{stalled.kind}:{answer}"] += 1
        self.stats.longest_open_s = max(self.stats.longest_open_s, time.monotonic() - stalled.opened_at)

    def _run(self) -> None:
        while not self._stop.is_set():
            while len(self._open) < self.count and self.stats.opened < self.max_opened and not self._stop.is_set():
                self._open_one()
            self.stats.peak_open = max(self.stats.peak_open, len(self._open))
            for key, _ in self._selector.select(timeout=0.2):
                stalled = self._open[key.fd]
                try:
                    data = stalled.sock.recv(4096)
                except OSError:
                    data = b""
                self._close(stalled, answer_of(data))
        self.stats.still_open = len(self._open)
        for stalled in list(self._open.values()):
            self._selector.unregister(stalled.sock)
            stalled.sock.close()
        self._open.clear()

    @contextlib.contextmanager
    def running(self) -> Iterator[StalledStats]:
        """Keeps `count` sockets stalled until the block ends."""
        thread = threading.Thread(target=self._run, name="stalled-sockets", daemon=True)
        thread.start()
        try:
            yield self.stats
        finally:
            self._stop.set()
            thread.join(30)

    def wait_open(self, timeout_s: float = 30.0) -> None:
        """Until all `count` are open at once."""
        deadline = time.monotonic() + timeout_s
        while self.stats.peak_open < self.count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.stats.peak_open} of {self.count} stalled sockets opened")
            time.sleep(0.05)
