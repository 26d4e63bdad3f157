"""GET routes BentoML's `@bentoml.api` cannot declare (it is POST only): /health, /model-info, /v1/models,
/v1/usage (admin keys only), and /docs (Swagger UI, which BentoML serves at /).

Mounted with `@bentoml.asgi_app`; they are given the runtime, handlers and quota book they read from.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from textgen.serving.errors import ServingError
from textgen.serving.model_store import ModelInfo
from textgen.serving.runtime import ModelRuntime

from .errors import ApiError, as_api_error
from .keys import require_admin
from .openai.handlers import OpenAIHandlers
from .openai.schemas import ModelList
from .openapi import GetRoute
from .quota import QuotaBook
from .schemas import HealthResponse, UsageReport

# The GET routes as the OpenAPI document describes them (BentoML's document has only the POST APIs).
DOCUMENTED_ROUTES = [
    GetRoute("/health", "Liveness and load: answered at once however busy the model is", HealthResponse),
    GetRoute("/model-info", "The served model: tag, provenance, architecture, context, dtype, device", ModelInfo),
    GetRoute("/v1/models", "OpenAI model list: the served model and its LoRA adapters", ModelList),
    GetRoute("/v1/usage", "Requests and tokens per key name since the start (admin keys only)", UsageReport, True),
]


def health(runtime: ModelRuntime) -> HealthResponse:
    # Reads counters only: answers at once however busy the model is.
    return HealthResponse(
        model_loaded=runtime.ready,
        model=runtime.settings.model_tag,
        uptime_s=round(runtime.uptime_s, 3),
        generations=runtime.gate.snapshot(),
    )


def usage_report(book: QuotaBook) -> UsageReport:
    since = dt.datetime.fromtimestamp(book.started_at, dt.UTC).isoformat(timespec="seconds")
    return UsageReport(since=since, keys={name: usage.model_copy() for name, usage in sorted(book.usage.items())})


def _get(read: Callable[[], BaseModel], admin: bool = False) -> Callable[[Request], Response]:
    async def endpoint(request: Request) -> Response:
        try:
            if admin:
                require_admin(request.scope)
            return JSONResponse(read().model_dump())
        except (ApiError, ServingError) as exc:  # not an admin key; the model is still loading
            return as_api_error(exc).to_response()

    return endpoint  # type: ignore[return-value]


async def docs(_: Request) -> Response:
    return RedirectResponse("/", status_code=307)


def build_routes_app(runtime: ModelRuntime, openai: OpenAIHandlers, book: QuotaBook) -> Starlette:
    return Starlette(
        routes=[
            Route("/health", _get(lambda: health(runtime)), methods=["GET"]),
            Route("/model-info", _get(runtime.model_info), methods=["GET"]),
            Route("/v1/models", _get(openai.models), methods=["GET"]),
            Route("/v1/usage", _get(lambda: usage_report(book), admin=True), methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
        ]
    )
