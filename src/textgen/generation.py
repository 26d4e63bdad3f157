"""From a validated request to a response: tokenise, check the context, wait for a slot, run the job."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .admission import AdmissionGate, QueueFull, QueueTimeout
from .engine import BatchEngine, EngineStopped, Job, JobResult
from .errors import ContextTooLong, GenerationFailed, Overloaded, QueueTimedOut, ShuttingDown, current_request_id
from .faults import FaultInjector
from .metrics import GenerationMetrics
from .model_store import LoadedModel
from .sampling import SamplingParams
from .schemas import GenerateRequest, GenerateResponse, Timings, Usage
from .streaming import TextDeltas

logger = logging.getLogger(__name__)


@dataclass
class TextDelta:
    """A streamed piece of the completion."""

    text: str


class Admitted:
    """First item of a stream: the request has a slot and is in the engine (errors after this are in-stream)."""


def _deliver(queue: asyncio.Queue[int | JobResult | BaseException], loop: asyncio.AbstractEventLoop):
    return lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)


def _client_error(failure: BaseException) -> ShuttingDown | GenerationFailed:
    """What the client hears of a failed job: no internals (the engine has logged them with the request id)."""
    if isinstance(failure, EngineStopped):
        return ShuttingDown("the server is shutting down", headers={"Retry-After": "5"})
    return GenerationFailed("generation failed for this request; the server log has the details under its request_id")


class TextGenerator:
    def __init__(
        self,
        loaded: LoadedModel,
        gate: AdmissionGate,
        metrics: GenerationMetrics,
        max_batch_size: int,
        batch_wait_s: float = 0.0,
        fault_marker: str = "",
        log_prompts: bool = False,
    ):
        self.loaded = loaded
        self.log_prompts = log_prompts
        self.gate = gate
        self.metrics = metrics
        self.engine = BatchEngine(
            loaded.model,
            loaded.tokenizer,
            max_batch_size,
            metrics.batch_size.observe,
            join_window_s=batch_wait_s,
            before_forward=FaultInjector.for_marker(fault_marker, loaded.tokenizer) if fault_marker else None,
        )
        if fault_marker:
            logger.warning("FAULT_INJECTION_MARKER is set: prompts starting with it fail on purpose (testing only)")
        if log_prompts:
            logger.warning("LOG_PROMPTS=true: prompts and completions go to the log (debugging only)")
        # No token spans more characters than the longest vocabulary entry: a cheap lower bound on a prompt's
        # token count, so huge prompts are refused without tokenising them.
        self._max_token_chars = max(len(t) for t in loaded.tokenizer.get_vocab())

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        result: GenerateResponse | None = None
        async for event in self.stream(request, text_deltas=False):
            if isinstance(event, GenerateResponse):
                result = event
        assert result is not None
        return result

    async def stream(
        self, request: GenerateRequest, text_deltas: bool = True
    ) -> AsyncIterator[Admitted | TextDelta | GenerateResponse]:
        """Yields `Admitted`, then text pieces (if `text_deltas`), then the whole response.

        Errors before `Admitted` (context too long, overload) are for an HTTP status; closing the
        iterator (the client went away) drops the job from the batch at the next step and frees the slot.
        """
        arrived = time.perf_counter()
        job = self._job(request, await self._tokenize(request))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[int | JobResult | BaseException] = asyncio.Queue()
        job.on_done = deliver = _deliver(events, loop)
        if text_deltas:
            job.on_token = deliver
        deltas = TextDeltas(self.loaded.tokenizer, hold_back=max((len(s) for s in request.stop), default=1) - 1)
        finished = False
        async with self._admission():
            self.engine.submit(job)
            try:
                yield Admitted()
                while True:
                    event = await events.get()
                    if isinstance(event, BaseException):
                        raise _client_error(event) from event
                    if isinstance(event, int):
                        if piece := deltas.add(event):
                            yield TextDelta(piece)
                        continue
                    finished = True
                    if self.log_prompts:
                        logger.info("completed", extra={"prompt": request.prompt, "completion": event.text})
                    if text_deltas and (rest := deltas.finish(event.text)):
                        yield TextDelta(rest)
                    yield self._response(request, job.prompt_ids, event, arrived)
                    return
            finally:
                if not finished:  # cancelled, or the client went away: free the row at the next step
                    self.engine.cancel(job)

    @asynccontextmanager
    async def _admission(self) -> AsyncIterator[None]:
        try:
            async with self.gate.slot():
                self._observe_load()
                try:
                    yield
                except asyncio.CancelledError:
                    self.metrics.requests.labels("cancelled").inc()
                    raise
                except GeneratorExit:
                    self.metrics.requests.labels("disconnected").inc()
                    raise
                except Exception:
                    self.metrics.requests.labels("error").inc()
                    raise
        except QueueFull:
            self.metrics.requests.labels("rejected_queue_full").inc()
            raise Overloaded(
                f"all {self.gate.limit} generation slots are busy and {self.gate.max_queue} requests are waiting",
                headers={"Retry-After": str(self.gate.retry_after_s())},
            ) from None
        except QueueTimeout:
            self.metrics.requests.labels("rejected_queue_timeout").inc()
            raise QueueTimedOut(
                f"no generation slot came free within {self.gate.timeout_s:g} s",
                headers={"Retry-After": str(self.gate.retry_after_s())},
            ) from None
        finally:
            self._observe_load()

    def _job(self, request: GenerateRequest, prompt_ids: list[int]) -> Job:
        return Job(
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
            request_id=current_request_id(),
        )

    async def _tokenize(self, request: GenerateRequest) -> list[int]:
        context = self.loaded.context_length
        if request.max_new_tokens >= context:
            raise ContextTooLong(
                f"max_new_tokens is {request.max_new_tokens}: the prompt and the new tokens must fit the model's "
                f"context of {context} tokens",
                field="max_new_tokens",
            )
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

    def _observe_load(self) -> None:
        self.metrics.running.set(self.gate.running)
        self.metrics.waiting.set(self.gate.waiting)

    def _response(
        self, request: GenerateRequest, prompt_ids: list[int], result: JobResult, arrived: float
    ) -> GenerateResponse:
        now = time.perf_counter()
        queue_s = result.started_at - arrived
        inference_s = result.finished_at - result.started_at
        generated = len(result.token_ids)
        self.metrics.requests.labels("ok").inc()
        self.metrics.queue_wait.observe(queue_s)
        self.metrics.latency.observe(inference_s)
        if inference_s > 0:
            self.metrics.tokens_per_second.observe(generated / inference_s)
        self.metrics.time_to_first_token.observe(result.first_token_at - arrived)
        if generated > 1:
            self.metrics.inter_token_latency.observe((result.finished_at - result.first_token_at) / (generated - 1))
        self.metrics.prompt_tokens.inc(len(prompt_ids))
        self.metrics.generated_tokens.inc(generated)
        return GenerateResponse(
            generated_text=request.prompt + result.text,
            completion=result.text,
            finish_reason=result.finish_reason,
            usage=Usage(
                prompt_tokens=len(prompt_ids), completion_tokens=generated, total_tokens=len(prompt_ids) + generated
            ),
            model=self.loaded.info.tag,
            timings=Timings(
                queue_ms=queue_s * 1000,
                time_to_first_token_ms=(result.first_token_at - arrived) * 1000,
                inference_ms=inference_s * 1000,
                total_ms=(now - arrived) * 1000,
            ),
        )
