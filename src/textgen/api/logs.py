"""Structured logs: one JSON object per line with the request id; no prompt or key in any line.

BentoML sets up its log handlers in every process before it imports the service. `configure_logging`
then gives those handlers a JSON formatter (unless LOG_FORMAT=text) and a filter that shortens
request-validation errors: BentoML logs them with a traceback whose pydantic message quotes the
offending input, which may be the prompt.
"""

from __future__ import annotations

import logging
from typing import Any

from bentoml.exceptions import BadInput
from pydantic import ValidationError
from pythonjsonlogger.json import JsonFormatter
from transformers.utils import logging as transformers_logging

from textgen.bentoml_compat import ACCESS_LOGGER, TRACE_RECORD_ATTRS, current_trace_id
from textgen.config import Settings

from .errors import as_api_error


class RedactRequestErrors(logging.Filter):
    """A client's bad request becomes one INFO line naming the fields, without their values or a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            problems = as_api_error(error).message  # the client's own message: fields and problems, no input
        elif isinstance(error, BadInput):
            problems = type(error).__name__
        else:
            return True
        said = record.getMessage().replace("%", "%%")  # a path may hold "%": keep it out of the formatting
        record.msg, record.args = f"rejected bad request: {said}: %s", (problems,)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _access_fields(args: Any) -> dict[str, Any]:
    """BentoML's access line is `"%s (%s) (%s) %.3fms" % (client, request k=v list, response k=v list, ms)`."""
    if not (isinstance(args, tuple) and len(args) == 4):
        return {}
    client, request, response, latency_ms = args
    fields: dict[str, Any] = {"client": client, "latency_ms": round(latency_ms, 3)}
    for prefix, pairs in (("request", request), ("response", response)):
        for pair in str(pairs).split(","):
            key, _, value = pair.partition("=")
            name = key if key in ("method", "path", "status", "scheme") else f"{prefix}_{key}"
            fields[name] = int(value) if value.isdigit() else value
    return fields


class JsonLogFormatter(JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            ["asctime", "levelname", "name", "message"],
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
            # Only the named fields and what this class adds: BentoML's filter decorates records with more.
            reserved_attrs=[*vars(logging.makeLogRecord({})), "message", "asctime", *TRACE_RECORD_ATTRS],
        )

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_record, record, message_dict)
        request_id = getattr(record, "request_id", None)  # BentoML's, while a request is in flight
        if request_id is not None:
            log_record["request_id"] = request_id if isinstance(request_id, str) else format(request_id, "016x")
        if trace_id := current_trace_id():
            log_record["trace_id"] = trace_id
        if component := str(getattr(record, "component", "")).strip("[]"):
            log_record["component"] = component
        if record.name == ACCESS_LOGGER:
            log_record.update(_access_fields(record.args))


def configure_logging(settings: Settings) -> None:
    """Apply LOG_FORMAT to the handlers BentoML installed, and redact request errors in either format."""
    handlers = {h for name in ("", "bentoml") for h in logging.getLogger(name).handlers}
    for handler in handlers:
        if not any(isinstance(f, RedactRequestErrors) for f in handler.filters):
            handler.addFilter(RedactRequestErrors())
        if settings.log_format == "json":
            handler.setFormatter(JsonLogFormatter())
    logging.getLogger("textgen").setLevel(logging.INFO)
    # transformers writes to stderr with a handler of its own: send its records through BentoML's handlers.
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    transformers_logging.disable_progress_bar()  # a weights-loading bar is not a log line
