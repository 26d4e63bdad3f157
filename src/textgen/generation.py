"""From a validated request to a response: tokenise, check the context, wait for a slot, run the job."""

from __future__ import annotations

import asyncio
import time

from .admission import AdmissionGate, QueueFull, QueueTimeout
from .engine import BatchEngine, Job, JobResult
from .errors import ContextTooLong, Overloaded, QueueTimedOut
from .metrics import GenerationMetrics
from .model_store import LoadedModel
from .sampling import SamplingParams
from .schemas import GenerateRequest, GenerateResponse, Timings, Usage


def _settle(future: asyncio.Future[JobResult], outcome: JobResult | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class TextGenerator:
    def __init__(self, loaded: LoadedModel, gate: AdmissionGate, max_batch_size: int, metrics: GenerationMetrics):
        self.loaded = loaded
        self.gate = gate
        self.metrics = metrics
        self.engine = BatchEngine(loaded.model, loaded.tokenizer, max_batch_size, metrics.batch_size.observe)
        # No token spans more characters than the longest vocabulary entry: a cheap lower bound on a prompt's
        # token count, so huge prompts are refused without tokenising them.
        self._max_token_chars = max(len(t) for t in loaded.tokenizer.get_vocab())

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        arrived = time.perf_counter()
        prompt_ids = await self._tokenize(request)
        job = Job(
            prompt_ids=prompt_ids,
            max_new_tokens=request.max_new_tokens,
            sampling=SamplingParams(
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=request.top_k,
                repetition_penalty=request.repetition_penalty,
                seed=request.seed,
            ),
            stop=tuple(request.stop),
            ignore_eos=request.ignore_eos,
        )
        try:
            async with self.gate.slot():
                self._observe_load()
                result = await self._run(job)
        except QueueFull:
            self.metrics.requests.labels("rejected_queue_full").inc()
            raise Overloaded(
                f"all {self.gate.limit} generation slots are busy and {self.gate.max_queue} requests are waiting",
                headers={"Retry-After": "1"},
            ) from None
        except QueueTimeout:
            self.metrics.requests.labels("rejected_queue_timeout").inc()
            raise QueueTimedOut(
                f"no generation slot came free within {self.gate.timeout_s:g} s", headers={"Retry-After": "5"}
            ) from None
        except asyncio.CancelledError:
            self.metrics.requests.labels("cancelled").inc()
            raise
        except Exception:
            self.metrics.requests.labels("error").inc()
            raise
        finally:
            self._observe_load()
        return self._response(request, prompt_ids, result, arrived)

    async def _tokenize(self, request: GenerateRequest) -> list[int]:
        context = self.loaded.context_length
        at_least = len(request.prompt) // self._max_token_chars
        if at_least + request.max_new_tokens > context:
            raise ContextTooLong(
                f"prompt has at least {at_least} tokens and max_new_tokens is {request.max_new_tokens}: "
                f"together more than the model's context of {context} tokens",
                field="prompt",
            )
        # Off the event loop: a long prompt must not stall health checks or other requests.
        prompt_ids: list[int] = await asyncio.to_thread(self.loaded.tokenizer.encode, request.prompt)
        if len(prompt_ids) + request.max_new_tokens > context:
            raise ContextTooLong(
                f"prompt has {len(prompt_ids)} tokens and max_new_tokens is {request.max_new_tokens}: "
                f"{len(prompt_ids) + request.max_new_tokens} is more than the model's context of {context} tokens",
                field="prompt",
            )
        return prompt_ids

    async def _run(self, job: Job) -> JobResult:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[JobResult] = loop.create_future()
        job.on_done = lambda outcome: loop.call_soon_threadsafe(_settle, done, outcome)
        self.engine.submit(job)
        try:
            return await done
        finally:
            if not done.done():  # the client went away: free the row at the next step
                self.engine.cancel(job)

    def _observe_load(self) -> None:
        self.metrics.running.set(self.gate.running)
        self.metrics.waiting.set(self.gate.waiting)

    def _response(
        self, request: GenerateRequest, prompt_ids: list[int], result: JobResult, arrived: float
    ) -> GenerateResponse:
        now = time.perf_counter()
        queue_s = result.started_at - arrived
        inference_s = result.finished_at - result.started_at
        self.metrics.requests.labels("ok").inc()
        self.metrics.queue_wait.observe(queue_s)
        self.metrics.latency.observe(inference_s)
        self.metrics.prompt_tokens.inc(len(prompt_ids))
        self.metrics.generated_tokens.inc(len(result.token_ids))
        return GenerateResponse(
            generated_text=request.prompt + result.text,
            completion=result.text,
            finish_reason=result.finish_reason,
            usage=Usage(
                prompt_tokens=len(prompt_ids),
                completion_tokens=len(result.token_ids),
                total_tokens=len(prompt_ids) + len(result.token_ids),
            ),
            model=self.loaded.info.tag,
            timings=Timings(queue_ms=queue_s * 1000, inference_ms=inference_s * 1000, total_ms=(now - arrived) * 1000),
        )
