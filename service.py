"""BentoML service: a Hugging Face causal LM from the model store behind a batched, secured HTTP API.

The table of contents: the parts live in `src/textgen/` (engine, serving, api); this module wires them.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import bentoml

# Inside a built Bento the project is not installed, only copied: make the src/ layout importable there.
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from textgen import bentoml_compat
from textgen.api.adapters import AdapterHandlers, LoraAdapterRequest, LoraAdapterResponse
from textgen.api.endpoints import answer, answer_stream
from textgen.api.generate import GenerateHandlers
from textgen.api.http_protocol import guarded_protocol
from textgen.api.logs import configure_logging
from textgen.api.middleware.auth import APIKeyMiddleware, check_auth_configured
from textgen.api.middleware.body_guard import RequestBodyGuard
from textgen.api.middleware.body_timeout import BodyTimeout
from textgen.api.middleware.error_envelope import ErrorEnvelopeMiddleware
from textgen.api.middleware.first_byte_timeout import FirstByteTimeout
from textgen.api.middleware.quota import QuotaMiddleware
from textgen.api.openai.handlers import OpenAIHandlers
from textgen.api.openai.schemas import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from textgen.api.openapi import SecuredOpenAPI
from textgen.api.quota import QuotaBook
from textgen.api.routes import DOCUMENTED_ROUTES, build_routes_app
from textgen.api.schemas import GenerateBatchRequest, GenerateBatchResponse, GenerateRequest, GenerateResponse
from textgen.config import get_settings
from textgen.container_image import container_envs, container_image
from textgen.serving.adapters import check_adapter_tags
from textgen.serving.model_store import find_model, resolve_model_ref
from textgen.serving.runtime import ModelRuntime

bentoml_compat.apply(timeout_middleware=FirstByteTimeout)  # stops here if BentoML's internals moved
settings = get_settings()
bentoml_compat.use_http_protocol(guarded_protocol(settings))  # header and idle-connection bounds
if bentoml_compat.is_serve_command():  # fail the command, not a worker that BentoML would restart forever
    configure_logging(settings)
    check_auth_configured(settings)
# Resolved before the decorators run: the image bakes in MODEL_TAG of the model `bentoml build` packs.
MODEL_REF = resolve_model_ref(settings.model_tag)
if bentoml_compat.is_serve_command():
    check_adapter_tags(settings.lora_adapters, find_model(settings.model_tag))

runtime = ModelRuntime(settings)  # this worker's model; nothing is loaded until the service starts
generate_api = GenerateHandlers(runtime)
openai_api = OpenAIHandlers(runtime)
adapter_api = AdapterHandlers(runtime)
quota_book = QuotaBook(settings.limits_for)  # per-key limits and usage, by key name


@bentoml.asgi_app(build_routes_app(runtime, openai_api, quota_book), path="/")
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

    @bentoml.on_startup
    def start_loading(self) -> None:
        runtime.start(self.model_ref)  # in the background: /livez answers at once, /readyz once loaded

    def __is_ready__(self) -> bool:
        return runtime.ready

    @bentoml.on_shutdown
    def stop_engine(self) -> None:
        runtime.stop()

    # BentoML validates bodies against a copy of each input_spec that lacks model-level validators
    # (one prompt per completion, say): the handlers validate again with the real model.
    @bentoml.api(input_spec=GenerateRequest)
    async def generate(self, ctx: bentoml.Context, **params: Any) -> GenerateResponse:
        """Continue `prompt`; requests close together share forward passes."""
        return await answer(ctx, lambda: generate_api.generate(GenerateRequest.model_validate(params)))

    @bentoml.api(input_spec=GenerateRequest)
    async def generate_stream(self, ctx: bentoml.Context, **params: Any) -> AsyncGenerator[str, None]:
        """As /generate, streamed as server-sent events: `token` events, then `done` with the whole response."""
        async for chunk in answer_stream(ctx, lambda: generate_api.stream(GenerateRequest.model_validate(params))):
            yield chunk

    @bentoml.api(route="/generate/batch", input_spec=GenerateBatchRequest)
    async def generate_batch(self, ctx: bentoml.Context, **params: Any) -> GenerateBatchResponse:
        """Several prompts with the same parameters, side by side in the batch: one result per prompt."""
        return await answer(ctx, lambda: generate_api.generate_batch(GenerateBatchRequest.model_validate(params)))

    @bentoml.api(route="/v1/load_lora_adapter", input_spec=LoraAdapterRequest)
    async def load_lora_adapter(self, ctx: bentoml.Context, **params: Any) -> LoraAdapterResponse:
        """Admin keys only: load a LoRA adapter from the model store by its tag; requests then choose it by name."""
        request = LoraAdapterRequest.model_validate(params)
        return await answer(ctx, lambda: adapter_api.load(request, ctx.request.scope))

    @bentoml.api(route="/v1/unload_lora_adapter", input_spec=LoraAdapterRequest)
    async def unload_lora_adapter(self, ctx: bentoml.Context, **params: Any) -> LoraAdapterResponse:
        """Admin keys only: unload an adapter once the requests using it have finished (new ones get 404)."""
        request = LoraAdapterRequest.model_validate(params)
        return await answer(ctx, lambda: adapter_api.unload(request, ctx.request.scope))

    @bentoml.api(route="/v1/completions", input_spec=CompletionRequest)
    async def v1_completions(self, ctx: bentoml.Context, **params: Any) -> Completion:
        """OpenAI-compatible completions (`stream: true` for server-sent events)."""
        return await answer(ctx, lambda: openai_api.completions(CompletionRequest.model_validate(params)))

    @bentoml.api(route="/v1/chat/completions", input_spec=ChatCompletionRequest)
    async def v1_chat_completions(self, ctx: bentoml.Context, **params: Any) -> ChatCompletion:
        """OpenAI-compatible chat completions; 400 for a model without a chat template."""
        return await answer(ctx, lambda: openai_api.chat(ChatCompletionRequest.model_validate(params)))


# First added is outermost: errors are normalised last, auth and the key's limits apply before any body is read,
# and the body is read within BODY_TIMEOUT_S.
TextGeneration.add_asgi_middleware(ErrorEnvelopeMiddleware)
TextGeneration.add_asgi_middleware(SecuredOpenAPI, open_paths=settings.open_paths(), routes=DOCUMENTED_ROUTES)
TextGeneration.add_asgi_middleware(APIKeyMiddleware, settings=settings)
TextGeneration.add_asgi_middleware(QuotaMiddleware, book=quota_book)
TextGeneration.add_asgi_middleware(BodyTimeout, timeout_s=settings.body_timeout_s)
TextGeneration.add_asgi_middleware(RequestBodyGuard, max_bytes=settings.max_body_bytes)
