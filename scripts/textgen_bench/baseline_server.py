"""Thread-per-request baseline for the benchmark: one `model.generate` per request, no batching.

The design most FastAPI LLM servers use: a semaphore admits `--max-concurrency` requests and each
runs `generate` in a worker thread; concurrent requests only share the CPU, never a forward pass.
Same store model and the same HTTP shape as the real server (POST /generate with `x-api-key`,
GET /health), so one load generator drives both.

    API_KEY=secret python -m textgen_bench.baseline_server --port 3001 --model-tag distilgpt2-random:latest

Not supported here: `seed` (torch's generator is process-wide, shared by the threads) is ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from transformers.generation.streamers import BaseStreamer

from textgen.api.schemas import GenerateRequest, GenerateResponse, Timings, Usage
from textgen.engine import FinishReason
from textgen.serving.model_store import LoadedModel, find_model, load_model


@dataclass
class Output:
    token_ids: list[int]
    finish_reason: FinishReason
    started_at: float
    first_token_at: float
    finished_at: float


class FirstTokenClock(BaseStreamer):
    """Notes when `generate` produces its first token (its first `put` is the prompt)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_token_at = 0.0

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def generate_kwargs(request: GenerateRequest, pad_token_id: int) -> dict[str, Any]:
    """The request's sampling settings in `model.generate` terms."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": request.max_new_tokens,
        "pad_token_id": pad_token_id,
        "repetition_penalty": request.repetition_penalty,
        "do_sample": request.temperature > 0,
    }
    if request.ignore_eos:  # EOS is masked until max_new_tokens: fixed output length
        kwargs["min_new_tokens"] = request.max_new_tokens
    if request.temperature > 0:
        kwargs.update(temperature=request.temperature, top_p=request.top_p, top_k=request.top_k or None)
    return kwargs


class Baseline:
    def __init__(self, loaded: LoadedModel, limit: int, api_key: str) -> None:
        self.loaded = loaded
        self.limit = limit
        self.api_key = api_key.encode()
        self.gate = asyncio.Semaphore(limit)
        self.pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="generate")
        self.running = 0
        self.waiting = 0
        tokenizer = loaded.tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def _generate(self, prompt_ids: list[int], request: GenerateRequest) -> Output:
        started = time.perf_counter()
        ids = torch.tensor([prompt_ids], device=self.loaded.model.device)
        kwargs = generate_kwargs(request, self.pad_id)
        if request.stop:
            kwargs.update(stop_strings=request.stop, tokenizer=self.loaded.tokenizer)
        clock = FirstTokenClock()
        out = self.loaded.model.generate(ids, attention_mask=torch.ones_like(ids), streamer=clock, **kwargs)
        new_ids = out[0, len(prompt_ids) :].tolist()
        reason: FinishReason = "length" if len(new_ids) >= request.max_new_tokens else "stop"
        if new_ids and new_ids[-1] == self.eos_id and not request.ignore_eos:
            reason = "eos"
        return Output(new_ids, reason, started, clock.first_token_at, time.perf_counter())

    def authorised(self, request: Request) -> bool:
        return hmac.compare_digest(request.headers.get("x-api-key", "").encode(), self.api_key)

    async def generate(self, http_request: Request) -> JSONResponse:
        if not self.authorised(http_request):
            return JSONResponse({"error": {"type": "unauthorized", "message": "bad or missing API key"}}, 401)
        try:
            request = GenerateRequest.model_validate_json(await http_request.body())
        except ValidationError as exc:
            return JSONResponse({"error": {"type": "validation_error", "message": str(exc)}}, 422)
        arrived = time.perf_counter()
        prompt_ids = self.loaded.tokenizer.encode(request.prompt)
        self.waiting += 1
        async with self.gate:
            self.waiting -= 1
            self.running += 1
            try:
                loop = asyncio.get_running_loop()
                output = await loop.run_in_executor(self.pool, self._generate, prompt_ids, request)
            finally:
                self.running -= 1
        return JSONResponse(self._response(request, prompt_ids, output, arrived).model_dump())

    def _response(
        self, request: GenerateRequest, prompt_ids: list[int], out: Output, arrived: float
    ) -> GenerateResponse:
        text = self.loaded.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        if out.finish_reason == "stop":  # generate keeps the stop string; the real server cuts it off
            text = text[: min((i for i in (text.find(s) for s in request.stop) if i >= 0), default=len(text))]
        now = time.perf_counter()
        return GenerateResponse(
            generated_text=request.prompt + text,
            completion=text,
            finish_reason=out.finish_reason,
            usage=Usage(
                prompt_tokens=len(prompt_ids),
                completion_tokens=len(out.token_ids),
                total_tokens=len(prompt_ids) + len(out.token_ids),
            ),
            model=self.loaded.info.tag,
            timings=Timings(
                queue_ms=(out.started_at - arrived) * 1000,
                time_to_first_token_ms=(out.first_token_at - arrived) * 1000,
                inference_ms=(out.finished_at - out.started_at) * 1000,
                total_ms=(now - arrived) * 1000,
            ),
        )

    async def health(self, _: Request) -> JSONResponse:
        load = {"running": self.running, "waiting": self.waiting, "limit": self.limit}
        return JSONResponse({"status": "ok", "model_loaded": True, "generations": load})


def build_app(baseline: Baseline) -> Starlette:
    return Starlette(
        routes=[
            Route("/generate", baseline.generate, methods=["POST"]),
            Route("/health", baseline.health, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--model-tag", default="distilgpt2-random:latest")
    parser.add_argument("--max-concurrency", type=int, default=5, help="requests generating at once")
    args = parser.parse_args(argv)
    api_key = os.environ.get("API_KEY", "")
    if not api_key:
        parser.error("set API_KEY")
    # Loaded before the port opens: /health answering means ready.
    baseline = Baseline(load_model(find_model(args.model_tag)), args.max_concurrency, api_key)
    uvicorn.run(build_app(baseline), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
