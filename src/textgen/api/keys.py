"""API keys with names: the entry formats, refusing weak keys, the key ring, and who is calling.

A key has a name (for limits, metrics and usage; the key itself is never logged or counted under). Entries in
the keys file (API_KEYS_FILE) and in ADMIN_API_KEYS are one of:

    KEY                     a plain key; named `file.LINE` (the file) or `admin.N` (ADMIN_API_KEYS)
    NAME:KEY                a named key
    NAME:sha256:HEX         a named key given by its SHA-256 digest (64 hex digits): the file holds no secret

API_KEY and API_KEYS are taken literally (a `:` in them is part of the key) and named `api_key`, `api_keys.N`.
Comparison is on SHA-256 digests with `hmac.compare_digest`, against every key, without an early exit.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textgen.config import Settings

from .errors import FORBIDDEN, ApiError

logger = logging.getLogger(__name__)

MIN_KEY_LENGTH = 16
GENERATE_KEY = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
# Every example key shipped in this repository (.env.example, docs, compose files, scripts): a server configured
# with one of them refuses to start. tests/unit/test_keys.py checks that the repository ships no other.
PLACEHOLDER_KEYS = frozenset({"replace-with-a-long-random-key", "key1", "key2", "secret", "changeme", "changethis"})
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
SCOPE_KEY = "textgen.api_key"  # where the auth middleware puts the caller's ApiKey in the ASGI scope


class InvalidKey(ValueError):
    """A key entry that is malformed or weak. Its message never contains the key."""


def digest(key: str) -> bytes:
    # Fixed-size digests keep the comparison time independent of the key's length too.
    return hashlib.sha256(key.encode()).digest()


PLACEHOLDER_DIGESTS = frozenset(digest(k) for k in PLACEHOLDER_KEYS)


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes
    admin: bool = False


ANONYMOUS = ApiKey("anonymous", b"", admin=True)  # AUTH_DISABLED=true: every route is open, admin ones too


def weakness(key: str) -> str | None:
    """Why `key` must not be used, or None."""
    if key in PLACEHOLDER_KEYS:
        return f"is a placeholder shipped with textgen: generate one ({GENERATE_KEY})"
    if len(key) < MIN_KEY_LENGTH:
        return f"is shorter than {MIN_KEY_LENGTH} characters"
    return None


def literal_key(key: str, name: str, admin: bool = False) -> ApiKey:
    if problem := weakness(key):
        raise InvalidKey(problem)
    return ApiKey(name, digest(key), admin)


def parse_entry(entry: str, default_name: str, admin: bool = False) -> ApiKey:
    """`KEY`, `NAME:KEY` or `NAME:sha256:HEX`."""
    name, sep, rest = entry.partition(":")
    if not (sep and NAME.fullmatch(name)):
        return literal_key(entry, default_name, admin)
    if rest.startswith("sha256:"):
        hex_digest = rest.removeprefix("sha256:")
        if not HEX_DIGEST.fullmatch(hex_digest):
            raise InvalidKey("a sha256: entry needs the key's SHA-256 digest as 64 hex digits")
        value = bytes.fromhex(hex_digest)
        if value in PLACEHOLDER_DIGESTS:
            raise InvalidKey("is the digest of a placeholder shipped with textgen")
        return ApiKey(name, value, admin)
    return literal_key(rest, name, admin)


def parse_keys_file(text: str) -> tuple[list[ApiKey], list[str]]:
    """The keys of a keys file, and a problem per bad line (by line number: never the line itself)."""
    keys: list[ApiKey] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        try:
            keys.append(parse_entry(entry, f"file.{number}"))
        except InvalidKey as exc:
            problems.append(f"line {number}: the key {exc}")
    return keys, problems


def settings_keys(settings: Settings) -> list[ApiKey]:
    """The keys of API_KEY, API_KEYS and ADMIN_API_KEYS. Raises InvalidKey naming the setting (not the key)."""
    keys: list[ApiKey] = []
    entries = [("API_KEY", settings.api_key.get_secret_value() if settings.api_key else "", "api_key")]
    entries += [("API_KEYS", k.get_secret_value(), f"api_keys.{i}") for i, k in enumerate(settings.api_keys, 1)]
    for setting, value, name in entries:
        if value:
            try:
                keys.append(literal_key(value, name))
            except InvalidKey as exc:
                raise InvalidKey(f"{setting}: {name} {exc}") from None
    for i, entry in enumerate(settings.admin_api_keys, 1):
        try:
            keys.append(parse_entry(entry.get_secret_value(), f"admin.{i}", admin=True))
        except InvalidKey as exc:
            raise InvalidKey(f"ADMIN_API_KEYS: entry {i} {exc}") from None
    return keys


def duplicate_names(keys: list[ApiKey]) -> list[str]:
    seen: set[str] = set()
    return sorted({k.name for k in keys if k.name in seen or seen.add(k.name)})  # type: ignore[func-returns-value]


class KeyRing:
    """The accepted keys: those from settings plus the keys file's, re-read when the file changes."""

    def __init__(self, fixed: list[ApiKey], keys_file: Path | None = None) -> None:
        self._fixed = fixed
        self._file = keys_file
        self._file_mtime: int | None = None
        self._file_keys: list[ApiKey] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(settings_keys(settings), settings.api_keys_file)

    def _current_file_keys(self) -> list[ApiKey]:
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
            keys, problems = parse_keys_file(self._file.read_text())
            taken = {k.name for k in self._fixed}
            for problem in problems:
                logger.error("API keys file %s, %s: line ignored", self._file, problem)
            if clashes := duplicate_names([*self._fixed, *keys]):
                logger.error("API keys file %s: names used twice, ignored: %s", self._file, ", ".join(clashes))
                keys = [k for k in keys if k.name not in clashes and k.name not in taken]
            self._file_keys, self._file_mtime = keys, mtime
            logger.info("loaded %d API key(s) from the keys file", len(keys))
        return self._file_keys

    def keys(self) -> list[ApiKey]:
        return [*self._fixed, *self._current_file_keys()]

    def __len__(self) -> int:
        return len(self.keys())

    def identify(self, candidate: str) -> ApiKey | None:
        """The key `candidate` is, or None. Every key is compared, whichever matches."""
        wanted = digest(candidate)
        found: ApiKey | None = None
        for key in self.keys():
            if hmac.compare_digest(wanted, key.digest) and found is None:
                found = key
        return found

    def accepts(self, candidate: str) -> bool:
        return self.identify(candidate) is not None


def check_keys(settings: Settings) -> None:
    """At start: every configured key well-formed, long enough and not a placeholder; names unique.

    Raises InvalidKey naming the setting (and line), never the key.
    """
    keys = settings_keys(settings)
    if settings.api_keys_file is not None and settings.api_keys_file.is_file():
        file_keys, problems = parse_keys_file(settings.api_keys_file.read_text())
        if problems:
            raise InvalidKey(f"API_KEYS_FILE {settings.api_keys_file}: {'; '.join(problems)}")
        keys += file_keys
    if clashes := duplicate_names(keys):
        raise InvalidKey(f"key names used twice (API_KEYS_FILE, ADMIN_API_KEYS): {', '.join(clashes)}")
    for name in settings.key_limits:
        if name not in {k.name for k in keys}:
            logger.warning("KEY_LIMITS names '%s', which no configured key has (yet)", name)


def caller(scope: dict[str, Any]) -> ApiKey | None:
    """The key the request was authenticated with (set by the auth middleware); None on open paths."""
    return scope.get(SCOPE_KEY)


def is_admin(scope: dict[str, Any]) -> bool:
    key = caller(scope)
    return key is not None and key.admin


def require_admin(scope: dict[str, Any]) -> ApiKey:
    """For admin-only routes: the caller's key, or 403 `forbidden`."""
    key = caller(scope)
    if key is None or not key.admin:
        raise ApiError(FORBIDDEN, "this route needs an admin key (ADMIN_API_KEYS)")
    return key
