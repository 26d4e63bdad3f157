"""Helpers for the serving-layer unit tests: the tiny model behind a real AsyncEngine, and small probes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from prometheus_client import REGISTRY

from textgen.config import Settings
from textgen.engine import GenerationParams, SamplingParams
from textgen.serving.admission import AdmissionGate
from textgen.serving.async_engine import AsyncEngine
from textgen.serving.metrics import get_metrics
from textgen.serving.model_store import LoadedModel, ModelInfo, context_length, parameter_count
from textgen.serving.runtime import ModelRuntime

TAG = "tiny-gpt2:v1"
GREEDY = SamplingParams(temperature=0.0)


def greedy(max_new_tokens: int, **kw) -> GenerationParams:
    """Greedy and past end-of-sequence, so the tokens are known in advance (transformers' generate)."""
    return GenerationParams(max_new_tokens, GREEDY, ignore_eos=True, **kw)


def loaded_model(tiny_model) -> LoadedModel:
    """What `load_model` returns, built by hand from the tiny model (no BentoML model store)."""
    model, tokenizer = tiny_model
    info = ModelInfo(
        tag=TAG,
        source="random",
        labels={},
        architecture=type(model).__name__,
        parameters=parameter_count(model),
        context_length=context_length(model),
        dtype="float32",
        device="cpu",
    )
    return LoadedModel(model, tokenizer, info)


def make_async_engine(
    tiny_model,
    *,
    limit: int = 4,
    max_queue: int = 8,
    timeout_s: float = 5.0,
    batch_wait_s: float = 0.0,
    fault_marker: str = "",
) -> AsyncEngine:
    """A started AsyncEngine on the tiny model. The metrics are the process's one set (Prometheus collectors
    register globally: a second GenerationMetrics would raise "Duplicated timeseries")."""
    engine = AsyncEngine(
        loaded_model(tiny_model),
        AdmissionGate(limit, max_queue, timeout_s),
        get_metrics(),
        max_batch_size=limit,
        batch_wait_s=batch_wait_s,
        fault_marker=fault_marker,
    )
    engine.start()
    return engine


@contextmanager
def running_engine(tiny_model, **kw) -> Iterator[AsyncEngine]:
    engine = make_async_engine(tiny_model, **kw)
    try:
        yield engine
    finally:
        engine.stop()


def runtime_serving(engine: AsyncEngine) -> ModelRuntime:
    """A runtime serving `engine`, without the BentoML model store that `ModelRuntime.start` loads from."""
    runtime = ModelRuntime(Settings(model_tag=TAG, _env_file=None))
    runtime.attach(engine)
    return runtime


def reference_greedy(tiny_model, prompt: str, new_tokens: int) -> list[int]:
    """The tiny model's own greedy continuation (transformers' generate), end-of-sequence ignored."""
    model, tokenizer = tiny_model
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None
        )
    return out[0, ids.shape[1] :].tolist()


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll `condition` on the event loop until it holds or the time is up; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return condition()


async def drained(engine: AsyncEngine) -> None:
    """Wait until the engine thread has no row left, so nothing calls back into a loop about to close."""
    assert await wait_until(lambda: engine.engine.active_rows == 0 and not engine.engine._pending)


def requests_counted(outcome: str) -> float:
    """How many requests the metrics counted with `outcome` so far."""
    return REGISTRY.get_sample_value("textgen_requests_total", {"outcome": outcome}) or 0.0


def forward_passes_counted() -> float:
    """Forward passes the engines ran so far (each observes its batch size)."""
    return REGISTRY.get_sample_value("textgen_batch_size_count") or 0.0
