"""How the soak judges each answer it gets: the outcome of every request, from status, body and stream.

Outcomes, per request the client sent:
  ok            200 with a whole response of the requested length (`ignore_eos`), or a stream ending in `done`
  rejected      429 `overloaded` or `rate_limited` (a key's own limit) / 503
                `queue_timeout`|`model_not_ready`|`shutting_down`, structured body and `Retry-After`
  disconnected  the client left on purpose: closed a stream after its first token, or gave up on /generate
  fault_failed  a fault-injected request failed as designed: 500 (or an in-stream error) `generation_failed`
  error         a complete answer that is wrong: another status, an unstructured error body, a success of
                the wrong shape or length, a fault that did not fire, or `generation_failed` without the marker
  lost          no complete answer: client timeout, connection refused/reset, a stream cut before its last event
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .mix import FAULT_KINDS, STREAM_KINDS, Kind

Outcome = Literal["ok", "rejected", "disconnected", "fault_failed", "error", "lost"]
BAD: frozenset[Outcome] = frozenset({"error", "lost"})
REJECTIONS: dict[int, frozenset[str]] = {
    429: frozenset({"overloaded", "rate_limited"}),
    503: frozenset({"queue_timeout", "model_not_ready", "shutting_down"}),
}
FAULT_ERROR_TYPE = "generation_failed"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    detail: str = ""


def error_type(body: object) -> str | None:
    """The `type` of a body in the one error shape `{"error": {"type", "message", "request_id"}}`, else None."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    fields = [error.get(name) for name in ("type", "message", "request_id")]
    return fields[0] if all(isinstance(f, str) and f for f in fields) else None  # type: ignore[return-value]


def _success(kind: Kind, body: Mapping[str, Any], max_new_tokens: int) -> Verdict:
    if kind in FAULT_KINDS:
        return Verdict("error", "fault-injected request succeeded: the fault did not fire")
    usage = body.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if not isinstance(body.get("completion"), str) or tokens is None:
        return Verdict("error", "200 without completion and usage")
    if tokens != max_new_tokens:
        return Verdict("error", f"{tokens} tokens instead of {max_new_tokens} (ignore_eos)")
    return Verdict("ok")


def _failure(kind: Kind, status: int | str, body: object) -> Verdict:
    """`status` is the HTTP status, or "stream" for an error event after the 200 headers."""
    etype = error_type(body)
    if etype is None:
        return Verdict("error", f"{status}: body not in the error shape")
    if etype == FAULT_ERROR_TYPE and kind in FAULT_KINDS:
        expected = "stream" if kind in STREAM_KINDS else 500
        return Verdict("fault_failed") if status == expected else Verdict("error", f"fault failed as {status}")
    if etype == FAULT_ERROR_TYPE:
        return Verdict("error", f"{status} {etype} on a request without the fault marker")
    return Verdict("error", f"{status} {etype}")


def classify_response(kind: Kind, status: int, body: object, retry_after: str | None, max_new_tokens: int) -> Verdict:
    """A complete HTTP answer: /generate's, or a /generate_stream refusal (its status is not 200)."""
    if status in REJECTIONS:
        etype = error_type(body)
        if etype not in REJECTIONS[status]:
            return Verdict("error", f"{status} with error type {etype!r}")
        return Verdict("rejected") if retry_after else Verdict("error", f"{status} {etype} without Retry-After")
    if status == 200 and kind not in STREAM_KINDS:
        return _success(kind, body, max_new_tokens) if isinstance(body, dict) else Verdict("error", "200 not JSON")
    return _failure(kind, status, body)


def classify_stream_end(kind: Kind, last_event: Mapping[str, Any] | None, max_new_tokens: int) -> Verdict:
    """A 200 stream read to its end: it must close with `done` (or, injected, an `error` event)."""
    if last_event is None:
        return Verdict("lost", "stream ended without a done or error event")
    if last_event.get("type") == "done":
        return _success(kind, last_event, max_new_tokens)
    return _failure(kind, "stream", last_event)
