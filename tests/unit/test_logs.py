"""The log formatter and the redaction filter, on hand-made records like the ones BentoML and the server write."""

from __future__ import annotations

import json
import logging

from pydantic import BaseModel, ValidationError

from textgen.api.logs import JsonLogFormatter, RedactRequestErrors


class Body(BaseModel):
    prompt: str
    temperature: float


def record(name: str, msg: str, *args: object, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    rec = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def formatted(rec: logging.LogRecord) -> dict:
    return json.loads(JsonLogFormatter().format(rec))


def test_a_validation_traceback_becomes_one_line_without_the_input():
    try:
        Body.model_validate({"prompt": "SECRET PROMPT", "temperature": "SECRET VALUE"})
    except ValidationError as exc:
        rec = record("bentoml._internal.server.http_app", "Exception on %s [%s]", "/generate%20", "POST", exc=exc)
    assert RedactRequestErrors().filter(rec)
    line = formatted(rec)
    assert "SECRET" not in json.dumps(line)
    assert line["level"] == "INFO" and "exc_info" not in line
    assert line["message"].startswith("rejected bad request: Exception on /generate%20 [POST]: temperature: ")


def test_other_errors_keep_their_traceback():
    try:
        raise RuntimeError("engine bug")
    except RuntimeError as exc:
        # A failed generation, logged while its request is in flight: BentoML's filter sets the request id.
        rec = record("textgen.serving.async_engine", "generation failed", exc=exc, request_id=0xABC123)
    assert RedactRequestErrors().filter(rec)
    line = formatted(rec)
    assert line["level"] == "ERROR" and "RuntimeError: engine bug" in line["exc_info"]
    assert line["request_id"] == "0000000000abc123"


def test_access_lines_become_fields_and_bentoml_decorations_are_dropped():
    args = ("127.0.0.1:5000", "scheme=http,method=POST,path=/generate,type=application/json,length=51")
    rec = record("bentoml.access", "%s (%s) (%s) %.3fms", *args, "status=429,type=application/json", 1.25)
    rec.__dict__.update(request_id=0xABC, component="[entry_service:textgen:1]", trace_msg=" (trace=...)")
    line = formatted(rec)
    assert line["request_id"] == "0000000000000abc"
    assert (line["method"], line["path"], line["status"], line["latency_ms"]) == ("POST", "/generate", 429, 1.25)
    assert line["request_length"] == 51 and line["component"] == "entry_service:textgen:1"
    assert "trace_msg" not in line


def test_extra_fields_such_as_debug_prompts_are_kept():
    extra = {"prompt": "p", "completion": "c"}  # LOG_PROMPTS=true logs them this way
    assert formatted(record("textgen.serving.async_engine", "completed", **extra)).items() >= extra.items()


def test_formatter_handles_records_without_bentoml_context():
    line = formatted(record("textgen", "plain %d", 3))
    assert line["message"] == "plain 3" and "request_id" not in line
