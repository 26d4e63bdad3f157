"""GET routes BentoML's `@bentoml.api` cannot declare (it is POST only): /health, /model-info, /v1/models."""

from __future__ import annotations

from typing import Protocol

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import NotReady
from .openai_schemas import ModelList
from .schemas import HealthResponse, ModelInfo


class ServesModel(Protocol):
    def health(self) -> HealthResponse: ...
    def model_info(self) -> ModelInfo | None: ...
    def model_list(self) -> ModelList | Response: ...


def _service() -> ServesModel:
    return bentoml.get_current_service()  # type: ignore[return-value]


async def health(_: Request) -> Response:
    # Reads counters only: answers at once however busy the model is.
    return JSONResponse(_service().health().model_dump())


async def model_info(_: Request) -> Response:
    info = _service().model_info()
    if info is None:
        return NotReady("the model is still loading", headers={"Retry-After": "2"}).to_response()
    return JSONResponse(info.model_dump())


async def openai_models(_: Request) -> Response:
    listing = _service().model_list()
    return listing if isinstance(listing, Response) else JSONResponse(listing.model_dump())


def build_routes_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/model-info", model_info, methods=["GET"]),
            Route("/v1/models", openai_models, methods=["GET"]),
        ]
    )
