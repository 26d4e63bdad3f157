"""The error catalogue: every error type of the API, its status and default headers, declared once.

Every error body has one shape, `{"error": {"type", "message", "request_id", "field"?}}`. Handlers raise
`ApiError(KIND, message)`; the serving layer's domain errors and pydantic's validation errors become one
through `as_api_error`; the middlewares and the error envelope answer with `error_response`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from textgen.bentoml_compat import current_request_id
from textgen.serving import errors as serving

from .schemas import ErrorBody, ErrorDetail

REQUEST_ID_HEADER = "X-BentoML-Request-ID"
AUTH_CHALLENGE = 'Bearer realm="textgen", error="invalid_token"'


@dataclass(frozen=True)
class ErrorKind:
    type: str
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)


INVALID_REQUEST = ErrorKind("invalid_request", 400)
VALIDATION_ERROR = ErrorKind("validation_error", 400)
INVALID_JSON = ErrorKind("invalid_json", 400)
CONTEXT_LENGTH_EXCEEDED = ErrorKind("context_length_exceeded", 400)
INVALID_ADAPTER = ErrorKind("invalid_adapter", 400)
UNAUTHORIZED = ErrorKind("unauthorized", 401, {"WWW-Authenticate": AUTH_CHALLENGE})
FORBIDDEN = ErrorKind("forbidden", 403)
NOT_FOUND = ErrorKind("not_found", 404)
MODEL_NOT_FOUND = ErrorKind("model_not_found", 404)
METHOD_NOT_ALLOWED = ErrorKind("method_not_allowed", 405)
# The connection closes after it: the rest of the body may still arrive, and would be read as a new request.
REQUEST_TIMEOUT = ErrorKind("request_timeout", 408, {"Connection": "close"})
PAYLOAD_TOO_LARGE = ErrorKind("payload_too_large", 413)
UNSUPPORTED_MEDIA_TYPE = ErrorKind("unsupported_media_type", 415)
HEADERS_TOO_LARGE = ErrorKind("headers_too_large", 431, {"Connection": "close"})  # answered by the HTTP protocol
OVERLOADED = ErrorKind("overloaded", 429)
RATE_LIMITED = ErrorKind("rate_limited", 429)  # a key's own limit (KEY_LIMITS); Retry-After and x-ratelimit-*
CLIENT_DISCONNECTED = ErrorKind("client_disconnected", 499)  # only the access log sees it (nginx's 499)
INTERNAL_ERROR = ErrorKind("internal_error", 500)
GENERATION_FAILED = ErrorKind("generation_failed", 500)
MODEL_NOT_READY = ErrorKind("model_not_ready", 503, {"Retry-After": "2"})
QUEUE_TIMEOUT = ErrorKind("queue_timeout", 503)
SHUTTING_DOWN = ErrorKind("shutting_down", 503, {"Retry-After": "5"})
SERVICE_UNAVAILABLE = ErrorKind("service_unavailable", 503)
TIMEOUT = ErrorKind("timeout", 504)

# The type of an error response made by BentoML or Starlette, which only tell the status.
FOR_STATUS = {
    kind.status: kind
    for kind in (
        INVALID_REQUEST,
        UNAUTHORIZED,
        FORBIDDEN,
        NOT_FOUND,
        METHOD_NOT_ALLOWED,
        REQUEST_TIMEOUT,
        PAYLOAD_TOO_LARGE,
        UNSUPPORTED_MEDIA_TYPE,
        OVERLOADED,
        INTERNAL_ERROR,
        SERVICE_UNAVAILABLE,
        TIMEOUT,
    )
}

# What each refusal of the serving layer is on the wire.
SERVING_ERRORS: dict[type[serving.ServingError], ErrorKind] = {
    serving.NotReady: MODEL_NOT_READY,
    serving.ContextTooLong: CONTEXT_LENGTH_EXCEEDED,
    serving.TooManyRows: INVALID_REQUEST,
    serving.UnknownAdapter: MODEL_NOT_FOUND,
    serving.AdapterRefused: INVALID_ADAPTER,
    serving.Overloaded: OVERLOADED,
    serving.QueueTimedOut: QUEUE_TIMEOUT,
    serving.ShuttingDown: SHUTTING_DOWN,
    serving.GenerationFailed: GENERATION_FAILED,
}


def kind_for_status(status: int) -> ErrorKind:
    return FOR_STATUS.get(status) or ErrorKind("server_error" if status >= 500 else "client_error", status)


class ApiError(Exception):
    """An error with its kind and a message safe to show the client."""

    def __init__(
        self, kind: ErrorKind, message: str, *, field: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.field = field
        self.headers = {**kind.headers, **(headers or {})}

    @property
    def status(self) -> int:
        return self.kind.status

    @property
    def type(self) -> str:
        return self.kind.type

    def to_response(self, request_id: str | None = None) -> JSONResponse:
        return error_response(self.kind, self.message, request_id, self.field, self.headers)

    @classmethod
    def from_validation(cls, details: list[dict[str, Any]]) -> ApiError:
        """From pydantic's error list (as BentoML also returns it): every problem, and the first field."""
        fields = [".".join(str(p) for p in d.get("loc", ()) if p != "body") or "body" for d in details]
        message = "; ".join(f"{f}: {d.get('msg', 'invalid')}" for f, d in zip(fields, details, strict=True))
        return cls(VALIDATION_ERROR, message, field=fields[0] if fields else None)


Refusal = ApiError | serving.ServingError | ValidationError


def as_api_error(exc: Refusal) -> ApiError:
    if isinstance(exc, ValidationError):
        return ApiError.from_validation(exc.errors(include_context=False, include_input=False))  # type: ignore[arg-type]
    if isinstance(exc, serving.ServingError):
        retry = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        part = exc.part if isinstance(exc, serving.ContextTooLong) else None
        return ApiError(SERVING_ERRORS[type(exc)], exc.message, field=part, headers=retry)
    return exc


def error_body(
    error_type: str, message: str, request_id: str | None = None, field: str | None = None
) -> dict[str, object]:
    detail = ErrorDetail(type=error_type, message=message, request_id=request_id or current_request_id(), field=field)
    return ErrorBody(error=detail).model_dump(exclude_none=True)


def error_response(
    kind: ErrorKind,
    message: str,
    request_id: str | None = None,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = error_body(kind.type, message, request_id, field)
    all_headers = {REQUEST_ID_HEADER: body["error"]["request_id"], **kind.headers, **(headers or {})}  # type: ignore[index]
    return JSONResponse(body, status_code=kind.status, headers=all_headers)
