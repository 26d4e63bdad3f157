"""Settings parsing and request bounds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from textgen.api.middleware.auth import AuthNotConfigured, check_auth_configured
from textgen.api.openai.schemas import CompletionRequest
from textgen.api.schemas import GenerateRequest
from textgen.config import DEFAULT_OPEN_PATHS, DOCS_PATHS, Settings


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("API_KEYS", "key-a, key-b,,key-c")
    monkeypatch.setenv("MAX_CONCURRENCY", "7")
    monkeypatch.setenv("AUTH_OPEN_PATHS", '["/docs", "-/metrics"]')  # the JSON list form
    monkeypatch.setenv("DOCS_OPEN", "false")
    s = Settings(_env_file=None)
    assert s.static_keys() == ["key-a", "key-b", "key-c"]
    assert (s.max_concurrency, s.max_batch_size) == (7, 7)  # batch size follows the limit unless set
    assert s.open_paths() == ["/health", "/livez", "/readyz", "/healthz", "/docs"]
    assert "key-a" not in repr(s)  # keys are secrets: never printed


def test_defaults_are_secure_and_documented():
    s = Settings(_env_file=None)
    assert s.max_concurrency == 5
    assert s.open_paths() == [*DEFAULT_OPEN_PATHS, *DOCS_PATHS]  # Swagger UI opens in a browser
    assert Settings(docs_open=False, _env_file=None).open_paths() == list(DEFAULT_OPEN_PATHS)
    assert (s.body_timeout_s, s.header_timeout_s, s.keepalive_timeout_s) == (30, 10, 5)
    with pytest.raises(AuthNotConfigured, match="API_KEY"):
        check_auth_configured(s)
    check_auth_configured(Settings(auth_disabled=True, _env_file=None))
    check_auth_configured(Settings(api_key="x" * 16, _env_file=None))


@pytest.mark.parametrize(
    ("value", "opened"),
    [
        ("/docs", [*DEFAULT_OPEN_PATHS, "/docs"]),  # adds: the health probes stay open
        ("/docs.json, /static_content/*", [*DEFAULT_OPEN_PATHS, "/docs.json", "/static_content/*"]),
        ("/health,/readyz", list(DEFAULT_OPEN_PATHS)),  # naming a default again changes nothing
        ("/docs,-/metrics", ["/health", "/livez", "/readyz", "/healthz", "/docs"]),
        ("-/metrics,-/healthz", ["/health", "/livez", "/readyz"]),
        ("/docs,-/docs", list(DEFAULT_OPEN_PATHS)),
        ("", list(DEFAULT_OPEN_PATHS)),
    ],
)
def test_auth_open_paths_add_to_the_defaults_and_dash_closes(monkeypatch, value, opened):
    monkeypatch.setenv("AUTH_OPEN_PATHS", value)
    monkeypatch.setenv("DOCS_OPEN", "false")
    assert Settings(_env_file=None).open_paths() == opened


@pytest.mark.parametrize("value", ["-/metric", "/docs,-/doc", "- /metrics", "-"])
def test_closing_a_path_that_is_not_open_is_refused(monkeypatch, value):
    monkeypatch.setenv("AUTH_OPEN_PATHS", value)
    with pytest.raises(ValidationError, match=r"cannot close .*not an open path"):
        Settings(_env_file=None)


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt": ""},
        {"prompt": "x", "max_new_tokens": 0},
        {"prompt": "x", "temperature": 2.5},
        {"prompt": "x", "temperature": float("nan")},
        {"prompt": "x", "top_p": 0},
        {"prompt": "x", "top_k": -1},
        {"prompt": "x", "repetition_penalty": 0},
        {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
        {"prompt": "x", "stop": [""]},
        {"prompt": "x", "seed": -1},
        {"prompt": "x", "unknown": 1},
        {"prompt": 5},
    ],
)
def test_out_of_bounds_requests_are_refused(bad):
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate(bad)


@pytest.mark.parametrize(
    "body",
    [
        '{"prompt": "x", "max_new_tokens": "5"}',
        '{"prompt": "x", "max_new_tokens": true}',
        '{"prompt": "x", "max_new_tokens": 2.0}',
        '{"prompt": "x", "temperature": "0.5"}',
        '{"prompt": "x", "seed": "7"}',
        '{"prompt": "x", "ignore_eos": "false"}',
        '{"prompt": "x", "ignore_eos": 0}',
    ],
)
def test_wrong_json_types_are_refused_not_coerced(body: str):
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate_json(body)
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate_json(body.replace("max_new_tokens", "max_tokens"))


def test_openai_flags_are_strict_booleans_and_integers_still_count_as_floats():
    for body in ('{"prompt": "x", "stream": "false"}', '{"prompt": "x", "echo": 1}'):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate_json(body)
    assert GenerateRequest.model_validate_json('{"prompt": "x", "temperature": 0, "top_p": 1}').temperature == 0.0


def test_only_prompt_is_required():
    req = GenerateRequest(prompt="hi")
    assert (req.max_new_tokens, req.temperature, req.stop, req.seed) == (64, 1.0, [], None)
