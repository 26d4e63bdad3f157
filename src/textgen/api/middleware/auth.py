"""API-key authentication as ASGI middleware.

Keys come from settings (`API_KEY`, `API_KEYS`) and an optional keys file that
is re-read when it changes, so a key can be rotated without a restart. A key
is accepted as `x-api-key: KEY` or `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from textgen.api.errors import UNAUTHORIZED, error_response
from textgen.config import Settings

logger = logging.getLogger(__name__)


class AuthNotConfigured(RuntimeError):
    pass


def check_auth_configured(settings: Settings) -> None:
    """Secure by default: no key and no explicit opt-out means no start."""
    if settings.auth_disabled:
        logger.warning("!!! AUTH_DISABLED=true: every route is open to anyone who can reach this port !!!")
        return
    if not settings.auth_configured():
        raise AuthNotConfigured(
            "no API key configured: set API_KEY (or API_KEYS, or API_KEYS_FILE), "
            "or set AUTH_DISABLED=true to serve without authentication"
        )


def _digest(key: str) -> bytes:
    # Comparing fixed-size digests keeps the comparison time independent of the key's length too.
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The accepted keys: static ones from settings plus those in the keys file."""

    def __init__(self, static_keys: list[str], keys_file: Path | None = None) -> None:
        self._static = [_digest(k) for k in static_keys]
        self._file = keys_file
        self._file_mtime: float | None = None
        self._file_keys: list[bytes] = []

    def _current_file_keys(self) -> list[bytes]:
        if self._file is None:
            return []
        try:
            mtime = self._file.stat().st_mtime_ns
        except OSError:
            if self._file_mtime is not None:
                logger.error("API keys file %s is unreadable; accepting only keys from settings", self._file)
            self._file_mtime, self._file_keys = None, []
            return []
        if mtime != self._file_mtime:
            lines = self._file.read_text().splitlines()
            self._file_keys = [_digest(s) for line in lines if (s := line.strip()) and not s.startswith("#")]
            self._file_mtime = mtime
            logger.info("loaded %d API key(s) from the keys file", len(self._file_keys))
        return self._file_keys

    def __len__(self) -> int:
        return len(self._static) + len(self._current_file_keys())

    def accepts(self, candidate: str) -> bool:
        wanted = _digest(candidate)
        found = False
        for key in [*self._static, *self._current_file_keys()]:
            found |= hmac.compare_digest(wanted, key)  # no early exit: every key is compared
        return found


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def is_open_path(path: str, open_paths: list[str]) -> bool:
    """Exact matches, or prefixes for entries that end in `*`."""
    return any(path.startswith(p[:-1]) if p.endswith("*") else path == p for p in open_paths)


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.disabled = settings.auth_disabled
        self.open_paths = settings.open_paths()
        self.keys = KeyRing(settings.static_keys(), settings.api_keys_file)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.disabled or scope["type"] not in ("http", "websocket") or is_open_path(scope["path"], self.open_paths):
            await self.app(scope, receive, send)
            return
        key = presented_key(scope["headers"])
        if key is not None and self.keys.accepts(key):
            await self.app(scope, receive, send)
            return
        message = (
            "missing API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'"
            if key is None
            else "invalid API key"
        )
        await error_response(UNAUTHORIZED, message)(scope, receive, send)
