"""Bad input against a real `bentoml serve`: never a 5xx, every refusal a 4xx in the one error shape.

First schemathesis fuzzes every POST operation of the served OpenAPI document with valid and invalid bodies
(seeded, so a CI run repeats); then a table of hand-picked bad requests that a schema-driven fuzzer cannot
produce: raw NaN literals, invalid UTF-8, wrong media types, chunked bodies, and so on. Cases that
test_server.py already covers (a missing prompt, out-of-range fields, an unknown /generate field, a truncated
JSON body, an oversized body with Content-Length, a prompt over the context) are not repeated here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error

from tests.integration.conftest import API_KEY, Server
from tests.integration.test_server import assert_error
from textgen.api.schemas import ErrorBody

FUZZ_SEED = 20261123
FUZZ_EXAMPLES = 40  # per operation, fuzzing phase; the coverage phase adds its own (~150-240 requests in all)
TOKEN_FIELDS = ("max_new_tokens", "max_tokens", "max_completion_tokens")
MAX_FUZZ_TOKENS = 4  # valid token counts are cut to this: every accepted case generates, so keep each one short


@schemathesis.check
def structured_errors(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """A 4xx/5xx body is our error shape; a 2xx event stream carries no error event either."""
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code >= 400:
        assert content_type.startswith("application/json"), f"error with content-type {content_type!r}"
        error = ErrorBody.model_validate_json(response.content).error
        assert error.request_id, "error without a request_id"
    elif content_type.startswith("text/event-stream"):
        # Past the status line a failure can only be an event: a 200 that hides an internal error is a 5xx.
        assert b'"internal_error"' not in response.content, response.content[-500:]


def bound_generation(case: schemathesis.Case) -> None:
    """Keep accepted cases short: valid token counts are cut to a few, a missing one (default 64) is set.

    Hypothesis likes 100000 (a context_length_exceeded, covered in test_server.py) and bodies with only a prompt;
    at the default length those took up to 4 s each. Invalid counts are left alone: they must be refused.
    """
    if not isinstance(case.body, dict):
        return
    case.body.setdefault("max_new_tokens" if case.path.startswith("/generate") else "max_tokens", MAX_FUZZ_TOKENS)
    for name in TOKEN_FIELDS:
        value = case.body.get(name)
        if type(value) is int and MAX_FUZZ_TOKENS < value <= 100_000:
            case.body[name] = 1 + value % MAX_FUZZ_TOKENS


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "seed": FUZZ_SEED,
            "base-url": server.url,
            "headers": {"x-api-key": API_KEY},
            "request-timeout": 60,
            # Failure reports print bodies whole: "token" in max_new_tokens is no secret, and the key is a test one.
            "output": {"sanitization": {"enabled": False}},
            "generation": {
                "mode": "all",  # positive (schema-valid) and negative (schema-violating) bodies
                "max-examples": FUZZ_EXAMPLES,
                "deterministic": True,
                "database": "none",  # no .hypothesis/ replays: the same cases on every machine
            },
        }
    )
    document = server.get("/docs.json").json()
    # BentoML labels the document OpenAPI 3.0.2 but writes pydantic's JSON Schema 2020-12 into it (numeric
    # `exclusiveMinimum`, `const`, `type: null`), which is OpenAPI 3.1's dialect: read it as what it is.
    assert document["openapi"] == "3.0.2", "BentoML changed its OpenAPI output: recheck this relabelling"
    document["openapi"] = "3.1.0"
    # BentoML's own GET probes are not ours to fuzz.
    return schemathesis.openapi.from_dict(document, config=config).include(method="POST")


fuzzed = schemathesis.pytest.from_fixture("api_schema")


@fuzzed.parametrize()
def test_fuzzed_bodies_get_no_5xx_and_structured_errors(case: schemathesis.Case):
    bound_generation(case)
    case.call_and_validate(checks=[not_a_server_error, structured_errors])


# --- Hand-picked bad input --------------------------------------------------------------------------------------

GENERATE, COMPLETIONS = "/generate", "/v1/completions"
JSON_TYPE = {"content-type": "application/json"}
MIB = 1024 * 1024


def assert_refused(server: Server, response: requests.Response, status: int, error_type: str) -> dict:
    """`status` with the one error shape, and the server still generates afterwards."""
    error = assert_error(response, status, error_type)
    assert response.headers["content-type"] == "application/json"
    ErrorBody.model_validate(response.json())
    after = server.post(GENERATE, json={"prompt": "still there?", "max_new_tokens": 1})
    assert after.status_code == 200, after.text
    return error


@pytest.mark.parametrize("path", [GENERATE, COMPLETIONS])
@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        # Python's json takes these literals; RFC 8259 does not, and a float field must be finite.
        (b'{"prompt": "x", "temperature": NaN}', "invalid_json"),
        (b'{"prompt": "x", "temperature": Infinity}', "invalid_json"),
        (b'{"prompt": "x", "top_p": -Infinity}', "invalid_json"),
        (b'{"prompt": "caf\xe9"}', "invalid_json"),  # latin-1, not UTF-8
        (b'\xef\xbb\xbf{"prompt": "x"}', "invalid_json"),  # byte order mark
        (b'{"prompt": "\\ud800"}', "invalid_json"),  # lone surrogate
        (b'{"prompt": "x",}', "invalid_json"),
        (b"{'prompt': 'x'}", "invalid_json"),
        (b'{"prompt": "x"} {"prompt": "y"}', "invalid_json"),
        (b" \n ", "invalid_json"),
        (b'{"prompt": "x", "stop": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid_json"),  # hung the request
        (b'{"prompt": "x", "seed": 1' + b"0" * 5000 + b"}", "invalid_json"),  # past the parser's integers
        (b"[]", "validation_error"),  # JSON, but not an object
        (b'"x"', "validation_error"),
        (b"5", "validation_error"),
        (b"null", "validation_error"),
        (b"true", "validation_error"),
    ],
    ids=[
        "nan", "infinity", "-infinity", "latin-1", "bom", "lone-surrogate", "trailing-comma", "single-quotes",
        "two-documents", "whitespace", "deep-nesting", "5000-digit-integer", "list", "string", "number", "null",
        "true",
    ],
)  # fmt: skip
def test_bodies_that_are_not_a_json_object(server: Server, path: str, body: bytes, error_type: str):
    error = assert_refused(server, server.post(path, data=body, headers=JSON_TYPE), 400, error_type)
    if error_type == "validation_error":
        assert error["field"] == "body"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "max_new_tokens": "5"}, "max_new_tokens"),  # wrong types are refused, not coerced
        ({"prompt": "x", "max_new_tokens": True}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": 2.0}, "max_new_tokens"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "ignore_eos": "yes"}, "ignore_eos"),
        ({"prompt": "x", "stop": "a"}, "stop"),
        ({"prompt": "x", "stop": [1]}, "stop.0"),
        ({"prompt": None}, "prompt"),
        ({"prompt": {"text": "x"}}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "max_new_tokens": 10**30}, "max_new_tokens"),  # huge numbers
        ({"prompt": "x", "temperature": 1e308}, "temperature"),
        ({"prompt": "x", "seed": 2**64}, "seed"),
        ({"prompt": "x", "top_k": 10**100}, "top_k"),
        (b'{"prompt": "x", "temperature": 1e400}', "temperature"),  # parses as inf: not finite
    ],
)
def test_wrong_types_and_huge_numbers_on_generate(server: Server, body: dict | bytes, field: str):
    response = (
        server.post(GENERATE, data=body, headers=JSON_TYPE)
        if isinstance(body, bytes)
        else server.post(GENERATE, json=body)
    )
    assert assert_refused(server, response, 400, "validation_error")["field"] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": [""]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10**30}, "max_tokens"),
        ({"prompt": "x", "temperature": 1e308}, "temperature"),
        ({"prompt": "x", "stream": "false"}, "stream"),
        ({"prompt": "x", "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ],
)
def test_wrong_types_and_huge_numbers_on_completions(server: Server, body: dict, field: str):
    assert assert_refused(server, server.post(COMPLETIONS, json=body), 400, "validation_error")["field"] == field


def test_unknown_fields_are_refused_on_the_openai_route_never_ignored(server: Server):
    """A field we do not act on is a 400 naming it (issue 11); neutral values of unsupported ones still pass."""
    neutral = {"prompt": "x", "max_tokens": 2, "logit_bias": {}, "suffix": None, "presence_penalty": 0}
    response = server.post(COMPLETIONS, json=neutral)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2
    for extra in ({"user": "u-1"}, {"bogus": [1]}, {"suffix": "end"}, {"guided_json": {}}):
        body = assert_refused(server, server.post(COMPLETIONS, json={**neutral, **extra}), 400, "validation_error")
        assert body["field"] == next(iter(extra))


@pytest.mark.parametrize("path", [GENERATE, COMPLETIONS])
@pytest.mark.parametrize(
    "send",
    [
        {"data": b'{"prompt": "x"}', "headers": {"content-type": "text/plain"}},
        {"data": b'{"prompt": "x"}', "headers": {"content-type": "application/xml"}},
        {"data": {"prompt": "x", "max_new_tokens": "1"}},  # a real form
        {"files": {"prompt": (None, "x")}},  # multipart: was read as a form; without a boundary, a 500
        {"data": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
    ],
    ids=["text-plain", "xml", "form", "multipart", "multipart-no-boundary"],
)
def test_bodies_not_sent_as_json_get_415(server: Server, path: str, send: dict):
    error = assert_refused(server, server.post(path, **send), 415, "unsupported_media_type")
    assert "application/json" in error["message"]


def chunked(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """A generator body: requests sends it with Transfer-Encoding: chunked and no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("path", [GENERATE, COMPLETIONS])
def test_a_1_mib_prompt_gets_413_also_without_content_length(server: Server, path: str):
    body = b'{"prompt": "' + b"x" * MIB + b'"}'
    if path == COMPLETIONS:  # Content-Length: refused before reading (test_server.py covers /generate)
        assert_refused(server, server.post(path, data=body, headers=JSON_TYPE), 413, "payload_too_large")
    response = server.post(path, data=chunked(body), headers=JSON_TYPE)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_refused(server, response, 413, "payload_too_large")


def test_a_prompt_under_the_body_limit_but_over_the_context(server: Server):
    prompt = " hello" * 10_000  # 60 KB < 64 KiB, 10000 tokens > 1024
    for path, body in ((COMPLETIONS, {"prompt": prompt, "max_tokens": 1}), (GENERATE, {"prompt": prompt})):
        response = server.post(path, json=body)
        assert "10000 tokens" in assert_refused(server, response, 400, "context_length_exceeded")["message"]


@pytest.mark.parametrize(
    "params",
    [{"temperature": 5e-324}, {"repetition_penalty": 5e-324}, {"top_p": 5e-324}, {"temperature": 2, "top_k": 1}],
)
def test_extreme_but_valid_sampling_values_are_served(server: Server, params: dict):
    """temperature or repetition_penalty 5e-324 (0 in float32) made NaN probabilities: a 500, a failed prefill."""
    body = {"prompt": "Once upon a time", "max_new_tokens": 3, "ignore_eos": True, **params}
    response = server.post(GENERATE, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3
    stream = server.post("/generate_stream", json=body)
    assert stream.status_code == 200 and '"type": "done"' in stream.text and "internal_error" not in stream.text
