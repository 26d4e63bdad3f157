"""Per-key limit arithmetic on a fake clock, the quota middleware on a real ASGI app, and the body deadline."""

from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from textgen.api.keys import SCOPE_KEY, ApiKey
from textgen.api.middleware.body_timeout import BodyTimeout
from textgen.api.middleware.quota import QuotaMiddleware
from textgen.api.openapi import SECURITY, GetRoute, secured
from textgen.api.quota import QuotaBook, format_reset
from textgen.api.schemas import UsageReport
from textgen.config import KeyLimits, Settings
from textgen.serving.usage import report_usage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def book_with(limits: str, clock: Clock) -> QuotaBook:
    return QuotaBook(lambda _: KeyLimits.parse(limits), clock)


def test_limits_parse_and_merge_over_the_defaults():
    settings = Settings(
        default_key_limits="rpm=60, concurrency=2", key_limits="alice:tpm=100;bob:rpm=5", _env_file=None
    )
    assert settings.limits_for("alice") == KeyLimits(rpm=60, tpm=100, concurrency=2)
    assert settings.limits_for("bob") == KeyLimits(rpm=5, concurrency=2)
    assert settings.limits_for("carol") == KeyLimits(rpm=60, concurrency=2)
    assert Settings(key_limits='{"alice": "rpm=3"}', _env_file=None).limits_for("alice").rpm == 3
    for bad in ("rpm=0", "rpm", "rps=3", "rpm=x"):
        with pytest.raises(ValueError):
            KeyLimits.parse(bad)


def test_requests_per_minute_slide():
    clock = Clock()
    book = book_with("rpm=2", clock)
    assert book.admit("a") is None and book.admit("a") is None
    refused = book.admit("a")
    assert refused is not None and refused.limit == "requests" and refused.retry_after_s == 60
    assert book.headers("a") == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "60s",
    }
    clock.now += 59.5
    assert book.admit("a").retry_after_s == 1  # the oldest leaves the window in 0.5 s
    clock.now += 0.5
    assert book.admit("a") is None  # one place back
    assert book.admit("b") is None  # other keys have windows of their own
    assert book.usage["a"].requests == 3 and book.usage["a"].rate_limited == 2


def test_tokens_are_charged_after_the_fact_and_refuse_while_over():
    clock = Clock()
    book = book_with("tpm=100", clock)
    assert book.admit("a") is None
    book.charge("a", prompt_tokens=5, completion_tokens=80)
    book.release("a")
    assert book.admit("a") is None  # 80 < 100: admitted, even though it may go over
    clock.now += 10
    book.charge("a", prompt_tokens=5, completion_tokens=50)  # 130 in the window
    book.release("a")
    refused = book.admit("a")
    assert refused is not None and refused.limit == "tokens"
    assert refused.retry_after_s == 50  # when the first 80 leave, 50 < 100
    assert book.headers("a")["x-ratelimit-remaining-tokens"] == "0"
    clock.now += 50
    assert book.admit("a") is None
    usage = book.usage["a"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 130, 140)


def test_concurrency_counts_requests_in_flight():
    book = book_with("concurrency=1", Clock())
    assert book.admit("a") is None
    refused = book.admit("a")
    assert refused is not None and refused.limit == "concurrency" and refused.retry_after_s == 1
    book.release("a")
    assert book.admit("a") is None


def test_no_limits_no_headers():
    book = book_with("", Clock())
    assert all(book.admit("a") is None for _ in range(1000)) and book.headers("a") == {}


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (-1, "0s"), (0.25, "250ms"), (1.54, "1.5s"), (59.99, "60s")])
def test_reset_format(seconds: float, text: str):
    assert format_reset(seconds) == text


def app_as(key: ApiKey | None, inner) -> Starlette:
    """`inner` behind the quota middleware, with `key` set as the auth middleware would."""

    def authenticated(app):
        async def wrapper(scope, receive, send):
            if key is not None:
                scope[SCOPE_KEY] = key
            await app(scope, receive, send)

        return wrapper

    return inner, authenticated


def test_the_middleware_refuses_with_429_and_sends_headers_and_charges_usage():
    book = book_with("rpm=2", Clock())

    async def generate(request: Request) -> JSONResponse:
        report_usage(4, 16)  # what the engine does when a generation ends
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/generate", generate, methods=["POST"])])
    inner, authenticated = app_as(ApiKey("alice", b""), app)
    client = TestClient(authenticated(QuotaMiddleware(inner, book)))
    first = client.post("/generate")
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-requests"] == "1"
    assert client.post("/generate").status_code == 200
    refused = client.post("/generate")
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limited" and refused.headers["retry-after"] == "60"
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert book.windows["alice"].in_flight == 0
    assert book.usage["alice"].completion_tokens == 32 and book.usage["alice"].prompt_tokens == 8
    assert UsageReport(since="now", keys=book.usage).keys["alice"].rate_limited == 1


def test_body_deadline_is_total_and_answers_408_in_the_error_shape():
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"size": len(await request.body())})

    app = BodyTimeout(Starlette(routes=[Route("/echo", echo, methods=["POST"])]), timeout_s=0.3)
    sent: list[dict] = []

    async def trickle():  # a byte every 0.1 s: no read waits long, the whole body never comes
        await asyncio.sleep(0.1)
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [], "query_string": b""}
    asyncio.run(asyncio.wait_for(app(scope, trickle, send), 5))
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b'"type":"request_timeout"' in sent[1]["body"].replace(b" ", b"")

    async def whole():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent.clear()
    asyncio.run(app(scope, whole, send))
    assert sent[0]["status"] == 200


def test_the_document_declares_the_schemes_on_protected_operations_only():
    document = {"paths": {"/generate": {"post": {"responses": {}}}, "/health": {"get": {}}}, "components": {}}
    routes = [GetRoute("/v1/usage", "usage", UsageReport, admin=True)]
    doc = secured(document, ["/health"], routes)
    assert set(doc["components"]["securitySchemes"]) == {"ApiKeyAuth", "BearerAuth"}
    assert doc["paths"]["/generate"]["post"]["security"] == SECURITY
    assert "401" in doc["paths"]["/generate"]["post"]["responses"]
    assert doc["paths"]["/health"]["get"]["security"] == []
    usage = doc["paths"]["/v1/usage"]["get"]
    assert usage["security"] == SECURITY and "403" in usage["responses"]
    assert "KeyUsage" in doc["components"]["schemas"]  # its definitions moved where the $refs point
    assert document["components"] == {}  # the original is untouched
