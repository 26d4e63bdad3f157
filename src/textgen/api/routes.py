"""GET routes BentoML's `@bentoml.api` cannot declare (it is POST only): /health, /model-info, /v1/models.

Mounted with `@bentoml.asgi_app`; they are given the runtime and handlers they read from.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from textgen.serving.errors import ServingError
from textgen.serving.runtime import ModelRuntime

from .errors import as_api_error
from .openai.handlers import OpenAIHandlers
from .schemas import HealthResponse


def health(runtime: ModelRuntime) -> HealthResponse:
    # Reads counters only: answers at once however busy the model is.
    return HealthResponse(
        model_loaded=runtime.ready,
        model=runtime.settings.model_tag,
        uptime_s=round(runtime.uptime_s, 3),
        generations=runtime.gate.snapshot(),
    )


def _get(read: Callable[[], BaseModel]) -> Callable[[Request], Response]:
    async def endpoint(_: Request) -> Response:
        try:
            return JSONResponse(read().model_dump())
        except ServingError as exc:  # the model is still loading
            return as_api_error(exc).to_response()

    return endpoint  # type: ignore[return-value]


def build_routes_app(runtime: ModelRuntime, openai: OpenAIHandlers) -> Starlette:
    return Starlette(
        routes=[
            Route("/health", _get(lambda: health(runtime)), methods=["GET"]),
            Route("/model-info", _get(runtime.model_info), methods=["GET"]),
            Route("/v1/models", _get(openai.models), methods=["GET"]),
        ]
    )
