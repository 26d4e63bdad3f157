"""Auth, body guard and error envelope as real ASGI middleware around a small Starlette app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from textgen.api.keys import KeyRing
from textgen.api.middleware.auth import APIKeyMiddleware, presented_key
from textgen.api.middleware.body_guard import RequestBodyGuard
from textgen.api.middleware.error_envelope import ErrorEnvelopeMiddleware, normalise
from textgen.config import Settings

KEY = "k-123456-abcdefghij"


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"len": len(await request.body())})


async def bentoml_style_validation_error(_: Request) -> JSONResponse:
    detail = [{"type": "greater_than_equal", "loc": ["max_new_tokens"], "msg": "Input should be >= 1"}]
    return JSONResponse({"error": "1 validation error for Input", "detail": detail}, status_code=400)


async def crash(_: Request) -> PlainTextResponse:
    return PlainTextResponse("Traceback: secret internals", status_code=500)


def make_client(settings: Settings, max_bytes: int = 1024) -> TestClient:
    app = Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/health", lambda _: JSONResponse({"status": "ok"})),
            Route("/metrics", lambda _: PlainTextResponse("requests_total 1\n")),
            Route("/docs", lambda _: PlainTextResponse("<html>docs</html>")),
            Route("/invalid", bentoml_style_validation_error, methods=["POST"]),
            Route("/crash", crash),
        ]
    )
    # Same order as service.py: envelope outermost, then auth, then the body guard.
    wrapped = ErrorEnvelopeMiddleware(APIKeyMiddleware(RequestBodyGuard(app, max_bytes), settings=settings))
    return TestClient(wrapped)


@pytest.fixture
def client() -> TestClient:
    return make_client(Settings(api_key=KEY, _env_file=None))


def assert_error(response, status: int, error_type: str) -> dict:
    assert response.status_code == status
    body = response.json()
    assert body["error"]["type"] == error_type
    assert body["error"]["request_id"]
    return body["error"]


def test_missing_and_wrong_keys_get_401_with_challenge(client):
    for headers in ({}, {"x-api-key": "nope"}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {KEY}"}):
        error = assert_error(client.post("/echo", json={}, headers=headers), 401, "unauthorized")
        assert KEY not in json.dumps(error)
    assert client.post("/echo", json={}).headers["www-authenticate"].startswith("Bearer")


def test_both_header_styles_are_accepted(client):
    assert client.post("/echo", json={}, headers={"x-api-key": KEY}).status_code == 200
    assert client.post("/echo", json={}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_open_paths_need_no_key_and_prefix_entries_work():
    client = make_client(Settings(api_key=KEY, auth_open_paths="/health,/ec*", _env_file=None))
    assert client.get("/health").status_code == 200
    assert client.post("/echo", json={}).status_code == 200
    assert client.get("/crash").status_code == 401


def test_auth_open_paths_adds_to_the_default_open_paths():
    assert_error(make_client(Settings(api_key=KEY, docs_open=False, _env_file=None)).get("/docs"), 401, "unauthorized")
    client = make_client(Settings(api_key=KEY, auth_open_paths="/docs", docs_open=False, _env_file=None))
    assert client.get("/docs").status_code == 200
    assert client.get("/health").status_code == 200  # still open: AUTH_OPEN_PATHS no longer replaces
    assert client.get("/metrics").status_code == 200
    assert_error(client.get("/crash"), 401, "unauthorized")


def test_the_docs_are_open_by_default_and_docs_open_false_closes_them():
    for path in ("/docs", "/docs.json", "/schema.json", "/", "/static_content/x.js"):
        assert make_client(Settings(api_key=KEY, _env_file=None)).get(path).status_code != 401, path
        closed = make_client(Settings(api_key=KEY, docs_open=False, _env_file=None))
        assert_error(closed.get(path), 401, "unauthorized")


def test_a_dash_entry_puts_a_default_open_path_behind_the_key():
    client = make_client(Settings(api_key=KEY, auth_open_paths="/docs,-/metrics", _env_file=None))
    assert_error(client.get("/metrics"), 401, "unauthorized")
    assert client.get("/metrics", headers={"x-api-key": KEY}).status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/docs").status_code == 200


def test_disabled_auth_lets_everything_through():
    assert make_client(Settings(auth_disabled=True, _env_file=None)).post("/echo", json={}).status_code == 200


def test_keys_file_rotation_without_restart(tmp_path: Path):
    keys_file = tmp_path / "keys"
    old, new = "old-key-0123456789", "new-key-0123456789"
    keys_file.write_text(f"# comment\n{old}\n")
    ring = KeyRing([], keys_file)
    assert ring.accepts(old) and not ring.accepts(new)
    keys_file.write_text(f"{new}\n")
    import os

    os.utime(keys_file, ns=(1, 1))  # a different mtime even within one clock tick
    assert ring.accepts(new) and not ring.accepts(old)
    keys_file.unlink()
    assert not ring.accepts(new)


def test_presented_key_parsing():
    assert presented_key([(b"authorization", b"Bearer  abc ")]) == "abc"
    assert presented_key([(b"x-api-key", b"xyz")]) == "xyz"
    assert presented_key([(b"authorization", b"Bearer")]) is None


def test_body_over_the_limit_gets_413_whether_declared_or_streamed(client):
    headers = {"x-api-key": KEY}
    assert_error(client.post("/echo", content=b"x" * 2000, headers=headers), 413, "payload_too_large")

    def chunks():  # no content-length: chunked transfer
        yield b"[" + b"1," * 600
        yield b"1]"

    assert_error(client.post("/echo", content=chunks(), headers=headers), 413, "payload_too_large")
    assert client.post("/echo", content=b"[1,2]", headers=headers).json() == {"len": 5}


def test_json_sent_with_curls_default_form_content_type_is_read_as_json(client):
    headers = {"x-api-key": KEY, "content-type": "application/x-www-form-urlencoded"}
    assert client.post("/echo", content=b'{"prompt": "hi"}', headers=headers).json() == {"len": 16}
    error = assert_error(client.post("/echo", content=b"{bad", headers=headers), 400, "invalid_json")
    assert "not valid JSON" in error["message"]


def test_malformed_json_and_invalid_utf8_get_400(client):
    headers = {"x-api-key": KEY, "content-type": "application/json"}
    assert (
        "not valid JSON"
        in assert_error(client.post("/echo", content=b"{bad", headers=headers), 400, "invalid_json")["message"]
    )
    assert_error(client.post("/echo", content=b'{"a":"\xff"}', headers=headers), 400, "invalid_json")


@pytest.mark.parametrize(
    "body",
    [
        b'{"temperature": NaN}',  # Python's json takes these literals; RFC 8259 does not
        b'{"temperature": Infinity}',
        b'{"temperature": -Infinity}',
        b'{"stop": ' + b"[" * 2000 + b"]" * 2000 + b"}",  # Python's json raised RecursionError: no response
        b'\xef\xbb\xbf{"prompt": "x"}',  # a byte order mark
        '{"prompt": "x"}'.encode("utf-16"),
        b'{"prompt": "\\ud800"}',  # a lone surrogate cannot become text
    ],
    ids=["nan", "infinity", "-infinity", "deep-nesting", "bom", "utf-16", "lone-surrogate"],
)
def test_json_that_bentoml_cannot_parse_gets_400_invalid_json(body: bytes):
    client = make_client(Settings(api_key=KEY, _env_file=None), max_bytes=65536)
    headers = {"x-api-key": KEY, "content-type": "application/json"}
    assert_error(client.post("/echo", content=body, headers=headers), 400, "invalid_json")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "text/plain; charset=utf-8", "multipart/form-data", "application/xml", "application/octet-stream"],
)
def test_bodies_that_are_not_json_get_415(client, content_type: str):
    headers = {"x-api-key": KEY, "content-type": content_type}
    error = assert_error(
        client.post("/echo", content=b'{"prompt": "x"}', headers=headers), 415, "unsupported_media_type"
    )
    assert "application/json" in error["message"]


def test_json_media_types_pass(client):
    for content_type in ("application/json; charset=utf-8", "APPLICATION/JSON", "application/merge-patch+json"):
        headers = {"x-api-key": KEY, "content-type": content_type}
        assert client.post("/echo", content=b'{"a": 1e400}', headers=headers).json() == {"len": 12}


def test_bentoml_validation_errors_are_reshaped_with_the_field(client):
    error = assert_error(client.post("/invalid", json={}, headers={"x-api-key": KEY}), 400, "validation_error")
    assert error["field"] == "max_new_tokens"
    assert "max_new_tokens" in error["message"]


def test_500_hides_internals_and_404_gets_the_shape(client):
    error = assert_error(client.get("/crash", headers={"x-api-key": KEY}), 500, "internal_error")
    assert "secret" not in error["message"]
    assert_error(client.get("/nowhere", headers={"x-api-key": KEY}), 404, "not_found")


def test_normalise_keeps_our_own_errors_and_unwraps_bentoml_lists():
    ours = {"error": {"type": "overloaded", "message": "busy", "request_id": "r1"}}
    assert normalise(429, json.dumps(ours).encode()) == ours
    unwrapped = normalise(404, json.dumps([{"error": "no such thing"}]).encode())
    assert unwrapped["error"]["message"] == "no such thing"
