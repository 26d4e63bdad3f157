"""The served model's life in a worker: process settings, loading in the background, the engine, shutdown.

One `ModelRuntime` per worker process. It is made when the service module is imported (cheap: nothing
is loaded then), so that the API handlers and the GET routes can be given it before BentoML builds the
app; `start()` runs in the worker and loads the model.
"""

from __future__ import annotations

import gc
import threading
import time

import bentoml
import torch

from textgen.config import Settings

from .admission import AdmissionGate
from .async_engine import AsyncEngine
from .errors import NotReady
from .metrics import GenerationMetrics, get_metrics
from .model_store import ModelInfo, load_model


def configure_torch(settings: Settings) -> None:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)


def freeze_startup_objects() -> None:
    """Exclude what startup created (libraries, model, tokenizer: ~440k objects) from garbage collection.

    A full collection walks every tracked object; over those it took 260-280 ms here, during which the
    event loop, and so `/health`, stands still. Later objects are collected as usual.
    """
    gc.collect()
    gc.freeze()


class ModelRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gate = AdmissionGate(settings.max_concurrency, settings.max_queue, settings.queue_timeout_s)
        self.started_at = time.monotonic()
        self.loaded_at = 0  # wall-clock seconds, as OpenAI's `created`
        self._engine: AsyncEngine | None = None

    @property
    def ready(self) -> bool:
        return self._engine is not None

    def engine(self) -> AsyncEngine:
        """The engine front, or NotReady while the model is loading."""
        if self._engine is None:
            raise NotReady()
        return self._engine

    def start(self, stored: bentoml.Model) -> None:
        """In the worker: apply process settings, then load in the background (`/livez` answers meanwhile)."""
        configure_torch(self.settings)
        # Made here: BentoML sets PROMETHEUS_MULTIPROC_DIR in the worker after the service module is imported.
        metrics = get_metrics()
        threading.Thread(target=self._load, args=(stored, metrics), name="model-loader", daemon=True).start()

    def _load(self, stored: bentoml.Model, metrics: GenerationMetrics) -> None:
        s = self.settings
        engine = AsyncEngine(
            load_model(stored, s.model_device, s.model_dtype, s.model_quantization),
            self.gate,
            metrics,
            max_batch_size=s.max_batch_size or s.max_concurrency,
            batch_wait_s=s.batch_wait_ms / 1000,
            fault_marker=s.fault_injection_marker,
            log_prompts=s.log_prompts,
            max_loras=s.max_loras,
        )
        engine.start()
        for tag in s.lora_adapters:  # before readiness: a ready server serves every adapter it was told to
            engine.adapters.load_now(tag)
        self.attach(engine)
        metrics.model_loaded.set(1)
        freeze_startup_objects()

    def attach(self, engine: AsyncEngine) -> None:
        """Serve with `engine` (started): how loading ends, and how tests serve a model made in process."""
        self.loaded_at = int(time.time())
        self._engine = engine

    def stop(self) -> None:
        if self._engine is not None:
            self._engine.stop()

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at

    def model_info(self) -> ModelInfo:
        return self.engine().loaded.info
