"""Key entries, names, hashed keys, weak and placeholder keys, admin keys, and the repository's placeholders."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import pytest

from textgen.api.errors import ApiError
from textgen.api.keys import (
    PLACEHOLDER_KEYS,
    SCOPE_KEY,
    ApiKey,
    InvalidKey,
    KeyRing,
    check_keys,
    digest,
    is_admin,
    parse_entry,
    parse_keys_file,
    require_admin,
    settings_keys,
)
from textgen.api.middleware.auth import AuthNotConfigured, check_auth_configured
from textgen.config import Settings

REPO = Path(__file__).resolve().parents[2]
GOOD = "a-long-enough-key-0123"


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_entry_formats():
    assert parse_entry(GOOD, "file.1") == ApiKey("file.1", digest(GOOD))
    assert parse_entry(f"alice:{GOOD}", "file.1") == ApiKey("alice", digest(GOOD))
    assert parse_entry(f"bob:sha256:{sha256_hex(GOOD)}", "x") == ApiKey("bob", digest(GOOD))
    assert parse_entry(f"ops:{GOOD}", "admin.1", admin=True).admin
    # A colon after something that is no name is part of the key.
    assert parse_entry(f"not a name:{GOOD}", "file.3").name == "file.3"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("sh0rt-k3y", "shorter than 16"),
        ("alice:sh0rt-k3y", "shorter than 16"),
        ("replace-with-a-long-random-key", "placeholder"),
        ("alice:replace-with-a-long-random-key", "placeholder"),
        ("alice:sha256:abc", "64 hex digits"),
        (f"alice:sha256:{sha256_hex('replace-with-a-long-random-key')}", "placeholder"),
    ],
)
def test_weak_and_malformed_entries_are_refused_without_quoting_the_key(entry: str, problem: str):
    with pytest.raises(InvalidKey, match=problem) as raised:
        parse_entry(entry, "file.1")
    assert entry.rpartition(":")[2] not in str(raised.value)


def test_keys_file_names_lines_and_skips_comments():
    text = f"# keys\n\nalice:{GOOD}\n{GOOD}-2\nsh0rt-k3y\nbob:sha256:{sha256_hex(GOOD + '-3')}\n"
    keys, problems = parse_keys_file(text)
    assert [k.name for k in keys] == ["alice", "file.4", "bob"]
    assert problems == ["line 5: the key is shorter than 16 characters"]


def test_settings_keys_get_generated_names_and_are_literal():
    settings = Settings(
        api_key=f"x:{GOOD}",
        api_keys=[GOOD + "-a", GOOD + "-b"],
        admin_api_keys=[f"ops:{GOOD}-c", GOOD + "-d"],
        _env_file=None,
    )
    keys = settings_keys(settings)
    assert [(k.name, k.admin) for k in keys] == [
        ("api_key", False),
        ("api_keys.1", False),
        ("api_keys.2", False),
        ("ops", True),
        ("admin.2", True),
    ]
    assert keys[0].digest == digest(f"x:{GOOD}")  # API_KEY is taken whole, colon and all


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"api_key": "replace-with-a-long-random-key"}, "API_KEY"),
        ({"api_key": "short-key"}, "API_KEY"),
        ({"api_keys": [GOOD, "key1"]}, "API_KEYS"),
        ({"api_key": GOOD, "admin_api_keys": ["ops:changeme"]}, "ADMIN_API_KEYS"),
    ],
)
def test_the_server_refuses_to_start_with_a_weak_key_and_names_the_setting_not_the_key(settings: dict, named: str):
    with pytest.raises(AuthNotConfigured, match=named) as raised:
        check_auth_configured(Settings(**settings, _env_file=None))
    for value in [settings.get("api_key"), *settings.get("api_keys", []), *settings.get("admin_api_keys", [])]:
        if value and value != GOOD:
            assert value.rpartition(":")[2] not in str(raised.value)


def test_a_weak_line_in_the_keys_file_stops_the_start_with_its_line_number(tmp_path: Path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"alice:{GOOD}\nbob:replace-with-a-long-random-key\n")
    with pytest.raises(AuthNotConfigured, match=r"API_KEYS_FILE .*line 2: the key is a placeholder"):
        check_auth_configured(Settings(api_keys_file=keys_file, _env_file=None))
    keys_file.write_text(f"alice:{GOOD}\nalice:{GOOD}-2\n")
    with pytest.raises(AuthNotConfigured, match=r"names used twice.*alice"):
        check_auth_configured(Settings(api_keys_file=keys_file, _env_file=None))


def test_auth_disabled_needs_no_key():
    check_auth_configured(Settings(auth_disabled=True, _env_file=None))


def test_ring_identifies_by_name_and_rereads_the_file_skipping_bad_lines(tmp_path: Path, caplog):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"alice:{GOOD}\n")
    ring = KeyRing([ApiKey("api_key", digest(GOOD + "-s"))], keys_file)
    assert ring.identify(GOOD).name == "alice"
    assert ring.identify(GOOD + "-s").name == "api_key"
    assert ring.identify("nope") is None
    import os

    keys_file.write_text(f"alice:{GOOD}-new\nbob:sh0rt-k3y\napi_key:{GOOD}-x\n")
    os.utime(keys_file, ns=(1, 1))
    with caplog.at_level(logging.ERROR):
        assert ring.identify(GOOD) is None and ring.identify(GOOD + "-new").name == "alice"
    assert ring.identify(GOOD + "-x") is None  # a name the settings already use is refused
    logged = caplog.text
    assert "line 2" in logged and "api_key" in logged and "sh0rt-k3y" not in logged and GOOD not in logged


def test_admin_check_is_reusable():
    assert is_admin({SCOPE_KEY: ApiKey("ops", b"", admin=True)})
    assert not is_admin({SCOPE_KEY: ApiKey("alice", b"")}) and not is_admin({})
    with pytest.raises(ApiError) as raised:
        require_admin({SCOPE_KEY: ApiKey("alice", b"")})
    assert raised.value.status == 403 and raised.value.type == "forbidden"


def test_key_limits_name_keys(caplog):
    with caplog.at_level(logging.WARNING):
        check_keys(Settings(api_key=GOOD, key_limits="nobody:rpm=1", _env_file=None))
    assert "nobody" in caplog.text


# Where the repository writes a key as a setting: `API_KEY=value`, `API_KEYS=a,b`, YAML `API_KEYS: "..."`.
ASSIGNMENT = re.compile(r"""\b(?:ADMIN_)?API_KEYS?\s*[=:]\s*["']?([^"'\s$#`)]+)""")


def shipped_files() -> list[Path]:
    patterns = [".env.example", "docker-compose.yml", "README.md", "docs/*.md", "deploy/**/*.yaml", "scripts/*"]
    return [p for pattern in patterns for p in REPO.glob(pattern) if p.is_file()]


def test_every_key_the_repository_ships_is_a_refused_placeholder():
    found = {
        value: path.name
        for path in shipped_files()
        for value in ASSIGNMENT.findall(path.read_text(errors="replace"))
        for value in value.split(",")
        if value and not value.startswith(("{", "<"))
    }
    assert "replace-with-a-long-random-key" in found  # the scan sees .env.example
    assert {v: f for v, f in found.items() if v not in PLACEHOLDER_KEYS and len(v) >= 16} == {}
