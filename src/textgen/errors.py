"""The one error shape, `{"error": {"type", "message", "request_id"}}`, and the errors the API raises."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from .schemas import ErrorBody, ErrorDetail

REQUEST_ID_HEADER = "X-BentoML-Request-ID"


def current_request_id() -> str:
    """BentoML's id for the request in flight (the trace span id), or a fresh one outside a request."""
    from bentoml._internal.context import trace_context

    if trace_context.request_id is not None:
        return format(trace_context.request_id, "016x")
    return uuid.uuid4().hex[:16]


class ApiError(Exception):
    """An error with its HTTP status, error type and a message safe to show the client."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}

    def to_response(self, request_id: str | None = None) -> JSONResponse:
        return error_response(self.status, self.type, self.message, request_id, self.field, self.headers)


class InvalidRequest(ApiError):
    status, type = 400, "invalid_request"


class ValidationFailed(ApiError):
    status, type = 400, "validation_error"

    @classmethod
    def from_details(cls, details: list[dict[str, Any]]) -> ValidationFailed:
        """From pydantic's error list (as BentoML also returns it): every problem, and the first field."""
        fields = [".".join(str(p) for p in d.get("loc", ()) if p != "body") or "body" for d in details]
        message = "; ".join(f"{f}: {d.get('msg', 'invalid')}" for f, d in zip(fields, details, strict=True))
        return cls(message, field=fields[0] if fields else None)


def as_api_error(exc: ApiError | ValidationError) -> ApiError:
    if isinstance(exc, ValidationError):
        return ValidationFailed.from_details(exc.errors(include_context=False, include_input=False))  # type: ignore[arg-type]
    return exc


class ContextTooLong(ApiError):
    status, type = 400, "context_length_exceeded"


class Overloaded(ApiError):
    status, type = 429, "overloaded"


class QueueTimedOut(ApiError):
    status, type = 503, "queue_timeout"


class NotReady(ApiError):
    status, type = 503, "model_not_ready"


class ShuttingDown(ApiError):
    status, type = 503, "shutting_down"


class GenerationFailed(ApiError):
    """The model failed on this request; the other requests of its batch carry on."""

    status, type = 500, "generation_failed"


class ClientDisconnected(ApiError):
    """The client went away before the answer; the status only reaches the access log (nginx's 499)."""

    status, type = 499, "client_disconnected"


def error_body(
    error_type: str, message: str, request_id: str | None = None, field: str | None = None
) -> dict[str, object]:
    detail = ErrorDetail(type=error_type, message=message, request_id=request_id or current_request_id(), field=field)
    return ErrorBody(error=detail).model_dump(exclude_none=True)


def error_response(
    status: int,
    error_type: str,
    message: str,
    request_id: str | None = None,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = error_body(error_type, message, request_id, field)
    all_headers = {REQUEST_ID_HEADER: body["error"]["request_id"], **(headers or {})}  # type: ignore[index]
    return JSONResponse(body, status_code=status, headers=all_headers)
