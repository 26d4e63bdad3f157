"""Everything that reaches into BentoML's internals, in one place, checked when the service starts.

BentoML is pinned (requirements.txt), but a user may change the pin. `apply()` checks that what we patch
and read is still there and stops with a clear message if not, instead of a patch that silently does
nothing or an AttributeError in the middle of a request.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import bentoml

TESTED_VERSION = "1.4.39"
ACCESS_LOGGER = "bentoml.access"  # BentoML's access log lines: "%s (%s) (%s) %.3fms" % (client, request, response, ms)
# Attributes BentoML's log filter (TraceRecordFilter) adds to every record.
TRACE_RECORD_ATTRS = ("levelname_bracketed", "component", "trace_msg", "request_id", "service_name")

# (module, attribute, why we need it)
_INTERNALS = (
    ("bentoml._internal.server.http.traffic", "TimeoutMiddleware", "replaced by FirstByteTimeout (request leak)"),
    ("bentoml._internal.context", "trace_context", "request and trace ids for error bodies and logs"),
    ("uvicorn.config", "HTTP_PROTOCOLS", "BentoML's workers build uvicorn.Config(http='auto'): the protocol for it"),
)


class IncompatibleBentoML(RuntimeError):
    pass


def _internal(module: str, attribute: str, why: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise IncompatibleBentoML(
            f"bentoml {bentoml.__version__} has no {module}.{attribute} ({why}); textgen is tested with "
            f"bentoml=={TESTED_VERSION}: install that version, or port src/textgen/bentoml_compat.py"
        ) from exc


def check() -> None:
    """Stop with a clear message if an internal we use is gone."""
    for module, attribute, why in _INTERNALS:
        _internal(module, attribute, why)
    context = _internal(*_INTERNALS[1])
    for attribute in ("request_id", "trace_id"):
        if not hasattr(context, attribute):
            raise IncompatibleBentoML(
                f"bentoml {bentoml.__version__}: trace_context has no {attribute}; tested with {TESTED_VERSION}"
            )


def apply(timeout_middleware: type) -> None:
    """Check the internals, then make BentoML build its apps with `timeout_middleware` (FirstByteTimeout).

    BentoML imports `TimeoutMiddleware` from its traffic module when it builds the middlewares.
    """
    check()
    traffic = importlib.import_module(_INTERNALS[0][0])
    traffic.TimeoutMiddleware = timeout_middleware


def use_http_protocol(protocol: type) -> None:
    """Make the uvicorn server of BentoML's worker speak HTTP with `protocol` (GuardedH11Protocol).

    BentoML 1.4.39's worker (`_bentoml_impl.worker.service`) imports the service, then builds
    `uvicorn.Config(...)` with no `http=` and none of uvicorn's header or connection bounds: the default
    "auto" resolves through `uvicorn.config.HTTP_PROTOCOLS`, which accepts a class as well as an import string.
    """
    protocols = _internal(*_INTERNALS[2])
    if "auto" not in protocols:
        raise IncompatibleBentoML("uvicorn.config.HTTP_PROTOCOLS has no 'auto' entry; port bentoml_compat.py")
    protocols["auto"] = protocol


@lru_cache
def _trace_context() -> Any:
    return _internal(*_INTERNALS[1])


def current_request_id() -> str:
    """BentoML's id for the request in flight (the trace span id), or a fresh one outside a request."""
    request_id = _trace_context().request_id
    return format(request_id, "016x") if request_id is not None else uuid.uuid4().hex[:16]


def current_trace_id() -> str | None:
    trace_id = _trace_context().trace_id
    return format(trace_id, "032x") if trace_id else None


def is_serve_command() -> bool:
    """True in the `bentoml serve` CLI process, which imports the service before it spawns workers.

    A worker whose `__init__` raises is restarted by BentoML forever, so configuration errors are
    raised here, where they end the command; `bentoml build` imports the service too and must not need keys.
    """
    return len(sys.argv) > 1 and Path(sys.argv[0]).name == "bentoml" and sys.argv[1] == "serve"
