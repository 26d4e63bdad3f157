"""BentoML service: a Hugging Face causal LM from the model store behind a batched, secured HTTP API.

The parts live in `src/textgen/`; this class only wires them together.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import bentoml

# src layout: make the package importable for `bentoml serve` and inside a built Bento alike.
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from textgen.admission import AdmissionGate
from textgen.auth import APIKeyMiddleware
from textgen.body_guard import RequestBodyGuard
from textgen.config import get_settings
from textgen.container import container_envs, container_image
from textgen.error_envelope import ErrorEnvelopeMiddleware
from textgen.errors import ApiError, NotReady
from textgen.generation import TextGenerator
from textgen.metrics import get_metrics
from textgen.model_store import load_model, resolve_model_ref
from textgen.routes import build_routes_app
from textgen.schemas import GenerateRequest, GenerateResponse, HealthResponse, ModelInfo
from textgen.startup import check_auth_configured, configure_torch

logger = logging.getLogger("textgen.service")
settings = get_settings()
# Resolved before the decorators run: the image bakes in MODEL_TAG of the model `bentoml build` packs.
MODEL_REF = resolve_model_ref(settings.model_tag)


@bentoml.asgi_app(build_routes_app(), path="/")
@bentoml.service(
    name="textgen",
    workers=1,
    traffic={"timeout": 3600},
    image=container_image(),
    envs=container_envs(str(MODEL_REF.tag)),  # type: ignore[arg-type]
)
class TextGeneration:
    model_ref = MODEL_REF

    def __init__(self) -> None:
        check_auth_configured(settings)
        configure_torch(settings)
        self.metrics = get_metrics()
        self.gate = AdmissionGate(settings.max_concurrency, settings.max_queue, settings.queue_timeout_s)
        self.generator: TextGenerator | None = None
        self.started_at = time.monotonic()

    @bentoml.on_startup
    def start_loading(self) -> None:
        # Load in the background: /livez answers at once, /readyz turns ready once the model is in.
        threading.Thread(target=self._load, name="model-loader", daemon=True).start()

    def _load(self) -> None:
        loaded = load_model(self.model_ref, settings.model_device, settings.model_dtype)
        generator = TextGenerator(loaded, self.gate, settings.max_batch_size or settings.max_concurrency, self.metrics)
        generator.start()
        self.generator = generator
        self.metrics.model_loaded.set(1)

    def __is_ready__(self) -> bool:
        return self.generator is not None

    @bentoml.on_shutdown
    def stop_engine(self) -> None:
        if self.generator is not None:
            self.generator.stop()

    @bentoml.api(input_spec=GenerateRequest)
    async def generate(self, **params: Any) -> GenerateResponse:
        """Continue `prompt`; requests close together share forward passes."""
        try:
            if self.generator is None:
                raise NotReady("the model is still loading", headers={"Retry-After": "2"})
            # BentoML has validated the body against GenerateRequest already.
            return await self.generator.generate(GenerateRequest.model_construct(**params))
        except ApiError as exc:
            return exc.to_response()  # type: ignore[return-value]

    def health(self) -> HealthResponse:
        return HealthResponse(
            model_loaded=self.generator is not None,
            model=settings.model_tag,
            uptime_s=round(time.monotonic() - self.started_at, 3),
            generations=self.gate.snapshot(),
        )

    def model_info(self) -> ModelInfo | None:
        return self.generator.loaded.info if self.generator else None


# First added is outermost: errors are normalised last, auth runs before any body is read.
TextGeneration.add_asgi_middleware(ErrorEnvelopeMiddleware)
TextGeneration.add_asgi_middleware(APIKeyMiddleware, settings=settings)
TextGeneration.add_asgi_middleware(RequestBodyGuard, max_bytes=settings.max_body_bytes)
