"""The asyncio front of the engine: tokenise, check the context, wait for a slot, run the job, report it.

It takes a prompt and the engine's `GenerationParams` and returns `GenerationOutput`s; its refusals are
domain errors (`serving.errors`). The API layer converts wire requests into these and results back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from transformers import PreTrainedTokenizerBase

from textgen.engine import (
    BatchEngine,
    EngineStopped,
    GenerationParams,
    GenerationResult,
    IncrementalDetokenizer,
    Job,
)

from .admission import AdmissionGate
from .errors import ContextTooLong, GenerationFailed, Overloaded, QueueTimedOut, ShuttingDown
from .faults import FaultInjector
from .metrics import GenerationMetrics
from .model_store import LoadedModel
from .outputs import Admitted, GenerationOutput, StreamEvent, TextDelta, Timings
from .usage import report_usage

logger = logging.getLogger(__name__)

EngineEvent = int | GenerationResult | BaseException  # a token, the result, or the job's failure


def _deliver(queue: asyncio.Queue[EngineEvent], loop: asyncio.AbstractEventLoop) -> Callable[[EngineEvent], None]:
    """A callback for the engine thread that hands its events to this event loop."""
    return lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)


def _failure(failure: BaseException) -> ShuttingDown | GenerationFailed:
    """What the request reports of a failed job: no internals (they are logged with the request's id)."""
    if isinstance(failure, EngineStopped):
        return ShuttingDown()
    # Logged here, not on the engine thread: here the log line carries the request's id.
    logger.error("generation failed: %r", failure, exc_info=failure)
    return GenerationFailed()


class AsyncEngine:
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

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.loaded.tokenizer

    @property
    def model_tag(self) -> str:
        return self.loaded.info.tag

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()

    async def generate(self, prompt: str, params: GenerationParams) -> GenerationOutput:
        output: GenerationOutput | None = None
        async for event in self.stream(prompt, params, text_deltas=False):
            if isinstance(event, GenerationOutput):
                output = event
        assert output is not None
        return output

    async def stream(
        self, prompt: str, params: GenerationParams, text_deltas: bool = True
    ) -> AsyncIterator[StreamEvent]:
        """Yields `Admitted`, then text pieces (if `text_deltas`), then the whole output.

        Refusals before `Admitted` (context too long, overload) are for an HTTP status; closing the
        iterator (the client went away) drops the job from the batch at the next step and frees the slot.
        """
        arrived = time.perf_counter()
        job = Job(await self._tokenize(prompt, params.max_new_tokens), params)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        job.on_done = deliver = _deliver(events, loop)
        if text_deltas:
            job.on_token = deliver
        pieces = IncrementalDetokenizer(self.tokenizer, hold_back=max((len(s) for s in params.stop), default=1) - 1)
        finished, streamed = False, 0
        async with self._admission():
            try:
                self.engine.submit(job)
            except EngineStopped:  # the slot came free as the server was stopping
                raise ShuttingDown() from None
            try:
                yield Admitted()
                while True:
                    event = await events.get()
                    if isinstance(event, BaseException):
                        raise _failure(event) from event
                    if isinstance(event, int):
                        streamed += 1
                        if piece := pieces.add(event):
                            yield TextDelta(piece)
                        continue
                    finished = True
                    if self.log_prompts:
                        logger.info("completed", extra={"prompt": prompt, "completion": event.text})
                    if text_deltas and (rest := pieces.finish(event.text)):
                        yield TextDelta(rest)
                    output = self._output(job, event, arrived)
                    self.metrics.observe_output(output)
                    report_usage(output.prompt_tokens, output.completion_tokens)
                    yield output
                    return
            finally:
                if not finished:  # cancelled, or the client went away: free the row at the next step
                    self.engine.cancel(job)
                    report_usage(len(job.prompt_ids), streamed)  # what a stream received is charged

    @asynccontextmanager
    async def _admission(self) -> AsyncIterator[None]:
        """A slot for the request's job (the gate refuses with Overloaded or QueueTimedOut), counting outcomes."""
        outcome = None
        try:
            async with self.gate.slot():
                self.metrics.observe_load(self.gate)
                try:
                    yield
                except asyncio.CancelledError:
                    outcome = "cancelled"
                    raise
                except GeneratorExit:
                    outcome = "disconnected"
                    raise
                except Exception:
                    outcome = "error"
                    raise
        except Overloaded:
            outcome = "rejected_queue_full"
            raise
        except QueueTimedOut:
            outcome = "rejected_queue_timeout"
            raise
        finally:
            if outcome is not None:
                self.metrics.requests.labels(outcome).inc()
            self.metrics.observe_load(self.gate)

    async def _tokenize(self, prompt: str, max_new_tokens: int) -> list[int]:
        context = self.loaded.context_length
        if max_new_tokens >= context:
            raise ContextTooLong(
                f"max_new_tokens is {max_new_tokens}: the prompt and the new tokens must fit the model's "
                f"context of {context} tokens",
                part="max_new_tokens",
            )
        at_least = len(prompt) // self._max_token_chars
        if at_least + max_new_tokens > context:
            raise ContextTooLong(
                f"prompt has at least {at_least} tokens and max_new_tokens is {max_new_tokens}: "
                f"together more than the model's context of {context} tokens"
            )
        # Off the event loop: a long prompt must not stall health checks or other requests.
        prompt_ids: list[int] = await asyncio.to_thread(self.tokenizer.encode, prompt)
        if len(prompt_ids) + max_new_tokens > context:
            raise ContextTooLong(
                f"prompt has {len(prompt_ids)} tokens and max_new_tokens is {max_new_tokens}: "
                f"{len(prompt_ids) + max_new_tokens} is more than the model's context of {context} tokens"
            )
        return prompt_ids

    def _output(self, job: Job, result: GenerationResult, arrived: float) -> GenerationOutput:
        return GenerationOutput(
            model=self.model_tag,
            prompt_tokens=len(job.prompt_ids),
            token_ids=result.token_ids,
            text=result.text,
            finish_reason=result.finish_reason,
            timings=Timings(
                queue_s=result.started_at - arrived,
                time_to_first_token_s=result.first_token_at - arrived,
                inference_s=result.finished_at - result.started_at,
                total_s=time.perf_counter() - arrived,
            ),
        )
