"""The asyncio front of the engine: tokenise, check the context, wait for a slot, run the job, report it.

It takes a prompt and the engine's `GenerationParams` and returns `GenerationOutput`s; its refusals are
domain errors (`serving.errors`). The API layer converts wire requests into these and results back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from textgen.engine import (
    BatchEngine,
    CompiledGrammar,
    EngineStopped,
    GenerationParams,
    GenerationResult,
    GrammarCompiler,
    IncrementalDetokenizer,
    Job,
    OutputConstraint,
    TokenLogprob,
)
from textgen.engine.lora import LoraWeights

from .adapters import AdapterRegistry
from .admission import AdmissionGate
from .errors import ContextTooLong, GenerationFailed, Overloaded, QueueTimedOut, ShuttingDown, TooManyRows
from .faults import FaultInjector
from .metrics import GenerationMetrics
from .model_store import LoadedModel
from .outputs import Admitted, GenerationOutput, PromptScored, StreamEvent, TextDelta, Timings
from .usage import report_usage

logger = logging.getLogger(__name__)

# A token (with its logprob when asked for), the result, or the job's failure.
EngineEvent = tuple[int, TokenLogprob | None] | GenerationResult | BaseException
RowEvents = asyncio.Queue[tuple[int, EngineEvent]]  # each event with its row's index


@dataclass(frozen=True)
class Row:
    """One sequence a request asks for: a prompt and how to continue it."""

    prompt: str
    params: GenerationParams
    adapter: str | None = None  # a loaded LoRA adapter's name (None: the base model)


def _deliver(
    queue: RowEvents, loop: asyncio.AbstractEventLoop, index: int
) -> Callable[[GenerationResult | BaseException], None]:
    """A callback for the engine thread that hands a row's outcome to this event loop."""
    return lambda outcome: loop.call_soon_threadsafe(queue.put_nowait, (index, outcome))


def _deliver_token(
    queue: RowEvents, loop: asyncio.AbstractEventLoop, index: int
) -> Callable[[int, TokenLogprob | None], None]:
    return lambda token, logprob: loop.call_soon_threadsafe(queue.put_nowait, (index, (token, logprob)))


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
        max_loras: int = 0,
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
            greedy_screen=loaded.greedy_screen,
        )
        self.adapters = AdapterRegistry(self.engine, loaded.info, max_loras)
        if fault_marker:
            logger.warning("FAULT_INJECTION_MARKER is set: prompts starting with it fail on purpose (testing only)")
        if log_prompts:
            logger.warning("LOG_PROMPTS=true: prompts and completions go to the log (debugging only)")
        # No token spans more characters than the longest vocabulary entry: a cheap lower bound on a prompt's
        # token count, so huge prompts are refused without tokenising them.
        self._max_token_chars = max(len(t) for t in loaded.tokenizer.get_vocab())
        self._grammar_compiler: GrammarCompiler | None = None
        self._grammar_lock = threading.Lock()

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
        return (await self.generate_rows([Row(prompt, params)]))[0]

    async def generate_rows(self, rows: Sequence[Row]) -> list[GenerationOutput]:
        """Every row's output, in order: the rows run side by side in the batch."""
        outputs: list[GenerationOutput | None] = [None] * len(rows)
        async for event in self.stream_rows(rows, text_deltas=False):
            if isinstance(event, GenerationOutput):
                outputs[event.index] = event
        assert all(outputs)
        return outputs  # type: ignore[return-value]

    def stream(self, prompt: str, params: GenerationParams, text_deltas: bool = True) -> AsyncIterator[StreamEvent]:
        return self.stream_rows([Row(prompt, params)], text_deltas)

    async def stream_rows(self, rows: Sequence[Row], text_deltas: bool = True) -> AsyncIterator[StreamEvent]:
        """Yields `Admitted`, then text pieces (if `text_deltas`) and each row's output, tagged with its index.

        The request takes one slot per row, all at once. Refusals before `Admitted` (too many rows, context
        too long, overload) are for an HTTP status. A row that fails fails the request. Closing the iterator
        (the client went away) drops the unfinished rows from the batch at the next step and frees the slots.
        """
        if len(rows) > self.max_rows:
            raise TooManyRows(f"{len(rows)} sequences requested; at most {self.max_rows} run at once")
        arrived = time.perf_counter()
        prompt_ids = await self._tokenize_all(rows)
        with self.adapters.hold([row.adapter for row in rows]) as adapters:  # not unloaded while rows use them
            # Closed with this generator (the client went away), not at garbage collection: its rows leave now.
            async with aclosing(self._run_rows(rows, prompt_ids, adapters, text_deltas, arrived)) as events:
                async for event in events:
                    yield event

    async def _run_rows(
        self,
        rows: Sequence[Row],
        prompt_ids: list[list[int]],
        adapters: list[LoraWeights | None],
        text_deltas: bool,
        arrived: float,
    ) -> AsyncIterator[StreamEvent]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, EngineEvent]] = asyncio.Queue()
        jobs = [
            Job(ids, dataclasses.replace(row.params, adapter=adapter), on_done=_deliver(events, loop, index))
            for index, (row, ids, adapter) in enumerate(zip(rows, prompt_ids, adapters, strict=True))
        ]
        if named := sorted({row.adapter for row in rows if row.adapter}):
            logger.info("generating with adapter %s", ", ".join(named), extra={"adapter": ", ".join(named)})
        detokenizers = []
        for index, job in enumerate(jobs):
            if text_deltas:
                job.on_token = _deliver_token(events, loop, index)
            hold_back = max((len(s) for s in job.params.stop), default=1) - 1
            detokenizers.append(IncrementalDetokenizer(self.tokenizer, hold_back=hold_back))
        unfinished = set(range(len(jobs)))
        streamed = [0] * len(jobs)  # tokens each row has sent, charged if the client goes away
        unscored = {i for i, job in enumerate(jobs) if text_deltas and job.params.prompt_logprobs is not None}
        async with self._admission(len(rows)):
            try:
                for job in jobs:
                    self.engine.submit(job)
            except EngineStopped:  # the slots came free as the server was stopping
                raise ShuttingDown() from None
            try:
                yield Admitted()
                while unfinished:
                    index, event = await events.get()
                    if isinstance(event, BaseException):
                        raise _failure(event) from event
                    pieces = detokenizers[index]
                    if index in unscored and (scores := jobs[index].prompt_logprobs) is not None:
                        unscored.discard(index)  # set by the engine thread before it delivered this event
                        yield PromptScored(index, jobs[index].prompt_ids, scores)
                    if isinstance(event, tuple):
                        token, logprob = event
                        streamed[index] += 1
                        piece = pieces.add(token)
                        if piece or logprob is not None:  # with logprobs, every token is an event of its own
                            yield TextDelta(piece, index, () if logprob is None else (logprob,))
                        continue
                    unfinished.discard(index)
                    if self.log_prompts:
                        logger.info("completed", extra={"prompt": rows[index].prompt, "completion": event.text})
                    if text_deltas:
                        rest = pieces.finish(event.text)
                        # The last token comes with the result, not as an event: its logprob goes with the rest.
                        unsent = tuple(event.logprobs[len(pieces.token_ids) :]) if event.logprobs else ()
                        if rest or unsent:
                            yield TextDelta(rest, index, unsent)
                    output = self._output(jobs[index], index, event, arrived)
                    self.metrics.observe_output(output, rows[index].adapter)
                    report_usage(output.prompt_tokens, output.completion_tokens)
                    yield output
            finally:
                for index in unfinished:  # cancelled, or the client went away: free the rows at the next step
                    self.engine.cancel(jobs[index])
                    report_usage(len(jobs[index].prompt_ids), streamed[index])  # what a stream received is charged

    async def compile_grammar(self, constraint: OutputConstraint) -> CompiledGrammar:
        """Compiled off the event loop and the engine thread (raises ConstraintError); cached per constraint."""
        return await asyncio.to_thread(lambda: self._grammars().compile(constraint))

    def _grammars(self) -> GrammarCompiler:
        with self._grammar_lock:  # built once, at the first constrained request: it reads the whole vocabulary
            if self._grammar_compiler is None:
                eos = self.engine.stop_rules.eos_token_id
                self._grammar_compiler = GrammarCompiler(self.tokenizer, self.engine.vocab_size, eos_token_id=eos)
            return self._grammar_compiler

    @property
    def max_rows(self) -> int:
        """The most sequences one request may ask for: they must all run at once."""
        return min(self.gate.limit, self.engine.max_batch_size)

    @asynccontextmanager
    async def _admission(self, rows: int) -> AsyncIterator[None]:
        """Slots for the request's rows (the gate refuses with Overloaded or QueueTimedOut), counting outcomes."""
        outcome = None
        try:
            async with self.gate.slot(rows):
                self.metrics.observe_load(self.gate)
                try:
                    yield
                    outcome = "ok"
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

    async def _tokenize_all(self, rows: Sequence[Row]) -> list[list[int]]:
        """Each row's prompt ids; rows of the same prompt (`n` > 1) share one tokenisation."""
        by_prompt: dict[str, list[int]] = {}
        for row in rows:
            if row.prompt not in by_prompt:
                by_prompt[row.prompt] = await self._tokenize(row.prompt, row.params.max_new_tokens)
            self._check_fits(len(by_prompt[row.prompt]), row.params.max_new_tokens)
        return [by_prompt[row.prompt] for row in rows]

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
        return await asyncio.to_thread(self.tokenizer.encode, prompt)

    def _check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        context = self.loaded.context_length
        if prompt_tokens + max_new_tokens > context:
            raise ContextTooLong(
                f"prompt has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}: "
                f"{prompt_tokens + max_new_tokens} is more than the model's context of {context} tokens"
            )

    def _output(self, job: Job, index: int, result: GenerationResult, arrived: float) -> GenerationOutput:
        return GenerationOutput(
            model=self.model_tag,
            index=index,
            prompt_token_ids=job.prompt_ids,
            token_ids=result.token_ids,
            text=result.text,
            finish_reason=result.finish_reason,
            logprobs=result.logprobs,
            prompt_logprobs=result.prompt_logprobs,
            timings=Timings(
                queue_s=result.started_at - arrived,
                time_to_first_token_s=result.first_token_at - arrived,
                inference_s=result.finished_at - result.started_at,
                total_s=time.perf_counter() - arrived,
            ),
        )
