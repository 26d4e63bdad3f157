"""BentoML service: a Hugging Face causal LM from the model store behind a batched, secured HTTP API.

The parts live in `src/textgen/`; this class only wires them together.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

import bentoml
from starlette.responses import Response

# src layout: make the package importable for `bentoml serve` and inside a built Bento alike.
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from pydantic import ValidationError

from textgen import bentoml_fixes
from textgen.admission import AdmissionGate
from textgen.auth import APIKeyMiddleware
from textgen.body_guard import RequestBodyGuard
from textgen.config import get_settings
from textgen.container import container_envs, container_image
from textgen.disconnect import cancel_on_disconnect
from textgen.error_envelope import ErrorEnvelopeMiddleware
from textgen.errors import ApiError, NotReady, as_api_error
from textgen.generation import TextGenerator
from textgen.logs import configure_logging
from textgen.metrics import get_metrics
from textgen.model_store import load_model, resolve_model_ref
from textgen.openai_api import OpenAIRoutes
from textgen.openai_schemas import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest, ModelList
from textgen.routes import build_routes_app
from textgen.schemas import GenerateRequest, GenerateResponse, HealthResponse, ModelInfo
from textgen.sse import generate_events
from textgen.startup import check_auth_configured, configure_torch, freeze_startup_objects, is_serve_command

bentoml_fixes.apply()
settings = get_settings()
if is_serve_command():
    configure_logging(settings)
    check_auth_configured(settings)
# Resolved before the decorators run: the image bakes in MODEL_TAG of the model `bentoml build` packs.
MODEL_REF = resolve_model_ref(settings.model_tag)


@bentoml.asgi_app(build_routes_app(), path="/")
@bentoml.service(
    name="textgen",
    workers=1,
    traffic={"timeout": 3600},  # first byte; each request is bounded by QUEUE_TIMEOUT_S and its tokens
    image=container_image(),
    envs=container_envs(str(MODEL_REF.tag)),  # type: ignore[arg-type]
)
class TextGeneration:
    model_ref = MODEL_REF

    def __init__(self) -> None:
        configure_logging(settings)
        check_auth_configured(settings)
        configure_torch(settings)
        self.metrics = get_metrics()
        self.gate = AdmissionGate(settings.max_concurrency, settings.max_queue, settings.queue_timeout_s)
        self.generator: TextGenerator | None = None
        self.openai: OpenAIRoutes | None = None
        self.started_at = time.monotonic()

    @bentoml.on_startup
    def start_loading(self) -> None:
        # Load in the background: /livez answers at once, /readyz turns ready once the model is in.
        threading.Thread(target=self._load, name="model-loader", daemon=True).start()

    def _load(self) -> None:
        loaded = load_model(self.model_ref, settings.model_device, settings.model_dtype)
        generator = TextGenerator(
            loaded,
            self.gate,
            self.metrics,
            max_batch_size=settings.max_batch_size or settings.max_concurrency,
            batch_wait_s=settings.batch_wait_ms / 1000,
            fault_marker=settings.fault_injection_marker,
            log_prompts=settings.log_prompts,
        )
        generator.start()
        self.openai = OpenAIRoutes(generator)
        self.generator = generator
        self.metrics.model_loaded.set(1)
        freeze_startup_objects()

    def __is_ready__(self) -> bool:
        return self.generator is not None

    @bentoml.on_shutdown
    def stop_engine(self) -> None:
        if self.generator is not None:
            self.generator.stop()

    def _ready(self) -> tuple[TextGenerator, OpenAIRoutes]:
        if self.generator is None or self.openai is None:
            raise NotReady("the model is still loading", headers={"Retry-After": "2"})
        return self.generator, self.openai

    async def _answer(self, ctx: bentoml.Context, handler: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await cancel_on_disconnect(ctx.request, handler())
        except (ApiError, ValidationError) as exc:
            return _refuse(ctx, exc)

    # BentoML validates bodies against a copy of each input_spec that lacks model-level validators
    # (one prompt per completion, say): validate again with the real model.
    @bentoml.api(input_spec=GenerateRequest)
    async def generate(self, ctx: bentoml.Context, **params: Any) -> GenerateResponse:
        """Continue `prompt`; requests close together share forward passes."""
        return await self._answer(ctx, lambda: self._ready()[0].generate(GenerateRequest.model_validate(params)))

    @bentoml.api(input_spec=GenerateRequest)
    async def generate_stream(self, ctx: bentoml.Context, **params: Any) -> AsyncGenerator[str, None]:
        """As /generate, streamed as server-sent events: `token` events, then `done` with the whole response."""
        try:
            events = self._ready()[0].stream(GenerateRequest.model_validate(params))
            await anext(events)  # admitted: refusals before this point keep their HTTP status
        except (ApiError, ValidationError) as exc:
            yield _refuse(ctx, exc).body.decode()
            return
        async for chunk in generate_events(events):
            yield chunk

    @bentoml.api(route="/v1/completions", input_spec=CompletionRequest)
    async def v1_completions(self, ctx: bentoml.Context, **params: Any) -> Completion:
        """OpenAI-compatible completions (`stream: true` for server-sent events)."""
        return await self._answer(ctx, lambda: self._ready()[1].completions(CompletionRequest.model_validate(params)))

    @bentoml.api(route="/v1/chat/completions", input_spec=ChatCompletionRequest)
    async def v1_chat_completions(self, ctx: bentoml.Context, **params: Any) -> ChatCompletion:
        """OpenAI-compatible chat completions; 400 for a model without a chat template."""
        return await self._answer(ctx, lambda: self._ready()[1].chat(ChatCompletionRequest.model_validate(params)))

    def health(self) -> HealthResponse:
        return HealthResponse(
            model_loaded=self.generator is not None,
            model=settings.model_tag,
            uptime_s=round(time.monotonic() - self.started_at, 3),
            generations=self.gate.snapshot(),
        )

    def model_info(self) -> ModelInfo | None:
        return self.generator.loaded.info if self.generator else None

    def model_list(self) -> ModelList | Response:
        return self.openai.models() if self.openai else NotReady("the model is still loading").to_response()


def _refuse(ctx: bentoml.Context, exc: ApiError | ValidationError) -> Response:
    """The error response; BentoML takes the status and headers of an API with a context from the context."""
    error = as_api_error(exc)
    ctx.response.status_code = error.status
    ctx.response.headers.update(error.headers)
    return error.to_response()


# First added is outermost: errors are normalised last, auth runs before any body is read.
TextGeneration.add_asgi_middleware(ErrorEnvelopeMiddleware)
TextGeneration.add_asgi_middleware(APIKeyMiddleware, settings=settings)
TextGeneration.add_asgi_middleware(RequestBodyGuard, max_bytes=settings.max_body_bytes)
