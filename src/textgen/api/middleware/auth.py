"""API-key authentication as ASGI middleware.

Keys come from settings (`API_KEY`, `API_KEYS`, `ADMIN_API_KEYS`) and an optional keys file that is re-read
when it changes, so a key can be rotated without a restart (see `textgen.api.keys`). A key is accepted as
`x-api-key: KEY` or `Authorization: Bearer KEY`; the request's scope then names its key (`keys.caller`).
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from textgen.api.errors import UNAUTHORIZED, error_response
from textgen.api.keys import ANONYMOUS, SCOPE_KEY, InvalidKey, KeyRing, check_keys
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
    try:
        check_keys(settings)
    except InvalidKey as exc:
        raise AuthNotConfigured(f"refusing to start: {exc}") from None


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
        self.keys = KeyRing.from_settings(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.disabled:
            scope[SCOPE_KEY] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        if is_open_path(scope["path"], self.open_paths):
            await self.app(scope, receive, send)
            return
        key = presented_key(scope["headers"])
        if key is not None and (known := self.keys.identify(key)) is not None:
            scope[SCOPE_KEY] = known
            await self.app(scope, receive, send)
            return
        message = (
            "missing API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'"
            if key is None
            else "invalid API key"
        )
        await error_response(UNAUTHORIZED, message)(scope, receive, send)
